"""Measuring Δ for a track, and checking the additive predictor against real runs.

``ctbench transfer`` is a run of the ``transfer-probes`` strategy; ``ctbench
validate-prediction`` runs K orders as ``fixed-order`` runs and correlates the predicted
final scores with the measured ones — Omni-Thinker's Table 3, whose correlations its
reviewers found weak. Every piece is an ordinary run folder, so both commands resume.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctbench.common.atomic import write_json_atomic
from ctbench.errors import UserError
from ctbench.results.aggregate import correlation
from ctbench.runs.config import RunConfig
from ctbench.runs.run import Run, RunObserver
from ctbench.strategies.transfer import TransferMatrix, best_order, predict_final_scores
from ctbench.tracks.track import load_track

DEFAULT_PROBE_SHARE = 0.2  # the bwt baseline's default, so Δ means the same thing in both


def default_probe_steps(track_name: str) -> int:
    spec = load_track(track_name).spec
    return max(1, int(DEFAULT_PROBE_SHARE * spec.budget_steps) // len(spec.task_names))


def measure_transfer_run(
    track: str,
    seed: int,
    probe_steps: int,
    out: Path,
    observer: RunObserver,
    device: str = "auto",
) -> dict[str, Any]:
    """A resumable run of the probes alone; its result carries Δ in ``strategy.report``."""
    n = len(load_track(track).spec.task_names)
    config = RunConfig(
        track=track, strategy="transfer-probes", seed=seed, budget=probe_steps * n, device=device
    )
    run_id = f"transfer-{_safe(track)}-s{seed}-p{probe_steps}"
    return Run.create(config, out, observer, run_id=run_id).execute()


def load_transfer(path: Path) -> TransferMatrix:
    """Δ from a result.json (or its run folder) of a transfer or bwt run."""
    file = path / "result.json" if path.is_dir() else path
    if not file.exists():
        raise UserError("no result.json there", where=str(path))
    try:
        report = json.loads(file.read_text())["strategy"]["report"]
        matrix = TransferMatrix.from_json(report["transfer"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            "not the result of a run that measured a transfer matrix (ctbench transfer or bwt)",
            where=str(file),
        ) from exc
    if not _in_score_units(report):
        raise UserError(
            "its Δ is the gradient estimate (first-order, no score units), which predicts no "
            "scores; give the result of a run with probes (ctbench transfer, or bwt with "
            "estimator=probes)",
            where=str(file),
        )
    return matrix


def _in_score_units(report: dict[str, Any]) -> bool:
    """Whether a report's Δ was measured by probes (a gradient estimate's was not)."""
    return (report.get("estimate") or {}).get("estimator", "probes") == "probes"


def find_transfer(runs: Path, track: str) -> Path:
    """The newest result under ``runs`` that holds Δ for ``track``."""
    found = []
    for file in runs.glob("*/result.json"):
        try:
            result = json.loads(file.read_text())
        except ValueError:
            continue
        report = result.get("strategy", {}).get("report", {})
        if (
            result.get("track", {}).get("name") == track
            and "transfer" in report
            and _in_score_units(report)
        ):
            found.append((result["timestamps"]["finished"], file))
    if not found:
        raise UserError(
            f"no measured transfer matrix for track {track!r} under {runs}; run "
            "`ctbench transfer` first or pass --transfer PATH",
            where="--transfer",
        )
    return max(found)[1]


def parse_order(text: str, transfer: TransferMatrix) -> list[str]:
    order = [t.strip() for t in text.split(",") if t.strip()]
    if sorted(order) != sorted(transfer.tasks):
        raise UserError(
            f"expected each of {', '.join(transfer.tasks)} exactly once, got {text!r}",
            where="--order",
        )
    return order


def sample_orders(tasks: Sequence[str], count: int, seed: int) -> list[list[str]]:
    """``count`` distinct orders drawn uniformly (seeded); all of them if n! ≤ count."""
    if count < 2:
        raise UserError("a correlation needs at least 2 orders", where="--orders")
    if math.factorial(len(tasks)) <= count:
        return [list(p) for p in itertools.permutations(tasks)]
    rng = random.Random(seed)
    chosen: list[list[str]] = []
    while len(chosen) < count:
        order = list(tasks)
        rng.shuffle(order)
        if order not in chosen:
            chosen.append(order)
    return chosen


def validate_prediction(
    *,
    track: str,
    seed: int,
    orders: int,
    transfer: TransferMatrix,
    transfer_source: str,
    stage_steps: int,
    out: Path,
    observer: RunObserver,
    device: str = "auto",
) -> dict[str, Any]:
    """Run each sampled order, compare predicted and measured final scores, write JSON."""
    folder = out / f"validate-{_safe(track)}-s{seed}-st{stage_steps}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for order in sample_orders(transfer.tasks, orders, seed):
        observer.note(f"order {' > '.join(order)}")
        config = RunConfig(
            track=track,
            strategy="fixed-order",
            params={"order": order},
            seed=seed,
            budget=stage_steps * len(order),
            device=device,
        )
        result = Run.create(config, folder, observer, run_id="order-" + "-".join(order)).execute()
        measured = dict(zip(result["tasks"], result["matrix"]["R"][-1], strict=True))
        predicted = predict_final_scores(order, transfer)
        rows.append(
            {
                "order": order,
                "run_id": result["run_id"],
                "predicted": predicted,
                "measured": measured,
                "predicted_acc": sum(predicted.values()) / len(order),
                "measured_acc": result["metrics"]["acc"],
            }
        )
    pairs_pred = [row["predicted"][t] for row in rows for t in transfer.tasks]
    pairs_meas = [row["measured"][t] for row in rows for t in transfer.tasks]
    # Pooled over (order, task) pairs the correlation is inflated by task difficulty (math
    # vs qa levels differ far more than orders move them); the centred version subtracts
    # each task's mean over orders from both sides, so it measures only the order effect.
    centred_pred, centred_meas = _centred(rows, transfer.tasks)
    best, search = best_order(transfer)
    report = {
        "track": track,
        "seed": seed,
        "stage_steps": stage_steps,
        "transfer_source": transfer_source,
        "transfer": transfer.to_json(),
        "predicted_best_order": best,
        "search": search,
        "orders": rows,
        "per_task_final": correlation(pairs_pred, pairs_meas),
        "per_task_final_centred": correlation(centred_pred, centred_meas),
        "within_task": {
            t: correlation(
                [row["predicted"][t] for row in rows], [row["measured"][t] for row in rows]
            )
            for t in transfer.tasks
        },
        "per_order_acc": correlation(
            [row["predicted_acc"] for row in rows], [row["measured_acc"] for row in rows]
        ),
        "measured_acc_spread": max(r["measured_acc"] for r in rows)
        - min(r["measured_acc"] for r in rows),
    }
    write_json_atomic(folder / "validation.json", report)
    report["path"] = str(folder / "validation.json")
    return report


def _centred(rows: list[dict[str, Any]], tasks: Sequence[str]) -> tuple[list[float], list[float]]:
    pred, meas = [], []
    for task in tasks:
        p = [row["predicted"][task] for row in rows]
        m = [row["measured"][task] for row in rows]
        pred += [v - sum(p) / len(p) for v in p]
        meas += [v - sum(m) / len(m) for v in m]
    return pred, meas


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(text).stem)
