"""Findings: each claim of the two papers reduced to one signed effect, its CI and a verdict.

``ctbench findings RUNS...`` reads finished runs and writes ``<out>/<track>-findings.md``,
``.json`` and a self-contained ``.html``. The verdict of every claim is decided by one rule,
fixed here and in the README before any numbers were seen (verbatim; the verdict is
computed by :func:`verdict` alone):

    every claim is reduced to a signed effect E whose positive sign is the direction the
    paper claims, with a 95% CI [lo, hi]: for a difference of mean ACC (C2a, C2b, C5) a
    Student t interval, paired by seed (t on the per-seed differences, df = n − 1) when
    both arms have the same n ≥ 3 seeds, else Welch's t (Welch–Satterthwaite df); for C1,
    C3 and C4 a bootstrap percentile CI (10,000 resamples, seed 0, resampling as described
    per claim). Verdict: **supported** if lo > 0; **contradicted** if hi < 0;
    **inconclusive** otherwise; and **inconclusive (too few runs)** without computing a
    verdict when an arm (C1: an order; C3: the set of runs) has fewer than 3 seeds/runs, or
    C4 has fewer than 5 orders (report the point estimate anyway). Verdicts are never edited
    by hand.

Why t and a minimum of 3: with 2–3 seeds a percentile bootstrap is far too narrow (paired,
its CI is just [min, max] of the per-seed differences), and arms with no true difference
got a verdict 22–40% of the time instead of about 5%. If every difference is identical
(zero variance: paired, all per-seed differences equal; unpaired, each arm constant) the t
interval is the point estimate itself, lo = hi = E.

The claims and how each CI is formed (final ACC is ``result["metrics"]["acc"]``; each
claim's bootstrap starts its own generator at seed 0, so a claim's CI does not depend on
which other claims had inputs):

* **C1** (Omni-Thinker's premise) "the order of single-task stages changes final ACC by
  more than seed noise". Inputs: runs whose main line is single-task RL stages covering
  every task once (``random``, ``bwt``, ``fixed-order``/``validate-prediction``, or any
  strategy of that shape), grouped by order (the tuple of their stages' tasks). In C1 and
  C3 twins count once: runs with the same seed, main line, R and entropy (one computation
  under two strategy names, e.g. ``random`` and ``fixed-order``).
  S = max − min over orders of the order's mean ACC; E = S − mean of S under 2,000
  permutations of the order labels across the runs (seed 0). CI: runs resampled with
  replacement within each order and S recomputed, the permutation null mean held at its
  observed value. Too few: fewer than 2 orders with ≥ 3 runs each (orders with fewer runs
  are then left out of the test).
* **C2a / C2b** (Omni-Thinker) "the BWT-ordered curriculum beats joint training / model
  merging": E = mean ACC(bwt) − mean ACC(joint | merge). Where both arms have exactly the
  same seeds, once each, runs are paired by seed: CI = mean d ± t(0.975, n − 1)·sd(d)/√n
  over the per-seed differences d; otherwise Welch's interval,
  E ± t(0.975, ν)·√(s²a/na + s²b/nb) with the Welch–Satterthwaite ν. The t quantile is
  ``scipy.stats.t.ppf``. Too few: an arm with fewer than 3 runs.
* **C3a / C3b** (Omni-Thinker) "RL on structured tasks lowers output entropy, on open-ended
  tasks raises it": every main-line stage that trains one task with objective ``rl`` gives
  Δ = that task's token entropy in the row of R after the stage minus the row before it
  (``entropy.token``, aligned with ``matrix.R``; domain from ``task_info``). C3a:
  E = −mean Δ over structured-task stages; C3b: E = +mean Δ over open-task stages, each
  pooled over every such stage. Cluster bootstrap: runs are resampled, all stages of a run
  together. Too few: fewer than 3 runs with such a stage.
* **C4** (Omni-Thinker) "the additive transfer predictor ranks orders": predicted and
  measured ACC per order from the runs' own predictions (``strategy.report``:
  ``order`` with ``predicted_acc``, as ``bwt`` writes) and from ``validate-prediction``'s
  ``validation.json``; each order keeps the mean over its runs of both. E = Spearman
  correlation between predicted and measured over orders. CI: orders resampled; a resample
  in which one side is constant has no correlation, is left out, and is counted
  (``undefined_draws``). Too few: fewer than 5 orders.
* **C5** (CHORD) "CHORD beats SFT-then-RL": E = mean ACC(chord) − mean ACC(sft_then_rl),
  its CI as C2's.

A claim without inputs is skipped with the reason "no runs for it". Runs compared must share
one track hash (mixing is refused, naming both hashes); differing budgets are reported as a
warning line. The JSON holds the rule's text and every input number, so the effects and
verdicts can be recomputed by hand.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctbench import __version__
from ctbench.common.atomic import write_json_atomic, write_text_atomic
from ctbench.errors import UserError
from ctbench.results.aggregate import correlation
from ctbench.results.leaderboard import lookup_dotted
from ctbench.runs.result import is_main_line, result_content_hash

FINDINGS_SCHEMA = 1

RULE = (
    "every claim is reduced to a signed effect E whose positive sign is the direction the "
    "paper claims, with a 95% CI [lo, hi]: for a difference of mean ACC (C2a, C2b, C5) a "
    "Student t interval, paired by seed (t on the per-seed differences, df = n − 1) when "
    "both arms have the same n ≥ 3 seeds, else Welch's t (Welch–Satterthwaite df); for C1, "
    "C3 and C4 a bootstrap percentile CI (10,000 resamples, seed 0, resampling as described "
    "per claim). Verdict: **supported** if lo > 0; **contradicted** if hi < 0; "
    "**inconclusive** otherwise; and **inconclusive (too few runs)** without computing a "
    "verdict when an arm (C1: an order; C3: the set of runs) has fewer than 3 seeds/runs, or "
    "C4 has fewer than 5 orders (report the point estimate anyway). Verdicts are never edited "
    "by hand."
)
RULE_SHORT = (
    "Rule (fixed before any numbers): E > 0 is the paper's direction; 95% CI [lo, hi]: "
    "Student t for mean differences (paired by seed, else Welch), percentile bootstrap "
    "(10,000 resamples, seed 0) for C1, C3, C4.",
    "Verdict: supported if lo > 0; contradicted if hi < 0; inconclusive otherwise; "
    "inconclusive (too few runs) when an arm has fewer than 3 seeds/runs (C4: 5 orders).",
)

SAMPLES = 10_000
SEED = 0
LEVEL = 0.95
PERMUTATIONS = 2_000
MIN_RUNS = 3  # per arm (C2, C5), per order (C1), runs with such a stage (C3)
MIN_ORDERS_C1 = 2
MIN_ORDERS_C4 = 5

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
TOO_FEW = "inconclusive (too few runs)"
SKIPPED = "skipped"
NO_RUNS = "no runs for it"


def verdict(lo: float | None, hi: float | None, enough: bool) -> str:
    """THE RULE: the only place a verdict is decided."""
    if not enough:
        return TOO_FEW
    if lo is not None and lo > 0:
        return SUPPORTED
    if hi is not None and hi < 0:
        return CONTRADICTED
    return INCONCLUSIVE


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class RunRecord:
    """One finished run as findings read it."""

    run_id: str
    path: Path  # its result.json
    strategy: str
    seed: int
    budget: int
    acc: float | None  # None: the run has no main line (a transfer-probes run)
    result: dict[str, Any] = field(repr=False, compare=False)

    def ref(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "strategy": self.strategy,
            "seed": self.seed,
            "budget_steps": self.budget,
            "acc": self.acc,
        }


@dataclass
class Inputs:
    track: str
    track_hash: str
    runs: list[RunRecord]
    validations: list[tuple[Path, dict[str, Any]]]


_NEEDED: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("run_id", str),
    ("result_hash", str),
    ("track.name", str),
    ("track.hash", str),
    ("strategy.name", str),
    ("seed", int),
    ("budget.steps", int),
    ("tasks", list),
    ("task_info", dict),
    ("stages", list),
    ("matrix.R", list),
    ("metrics", dict),
    ("entropy.token", list),
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read it: {exc.strerror}", where=str(path)) from exc
    except ValueError as exc:
        raise UserError(f"not valid JSON: {exc}", where=str(path)) from exc
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", where=str(path))
    return data


def _run_record(path: Path) -> RunRecord:
    result = _read_json(path)
    where = str(path)
    for key, kind in _NEEDED:
        try:
            value = lookup_dotted(result, key)
        except KeyError:
            raise UserError(f"not a ctbench result: {key} is missing", where=where) from None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UserError(f"{key} has type {type(value).__name__}", where=where)
    if result_content_hash(result) != result["result_hash"]:
        raise UserError(
            "content hash mismatch: the result was edited after the run wrote it", where=where
        )
    acc = result["metrics"].get("acc")
    if acc is not None and (not isinstance(acc, int | float) or not math.isfinite(acc)):
        raise UserError(f"metrics.acc is {acc!r}, expected a number or null", where=where)
    main = [s for s in result["stages"] if is_main_line(s)]
    if (
        len(result["entropy"]["token"]) != len(result["matrix"]["R"])
        or len(result["matrix"]["R"]) != len(main) + 1
    ):
        raise UserError(
            f"matrix.R has {len(result['matrix']['R'])} rows and entropy.token "
            f"{len(result['entropy']['token'])}; the main line has {len(main)} items "
            "(expected one row for the base and one per item)",
            where=where,
        )
    return RunRecord(
        run_id=result["run_id"],
        path=path,
        strategy=result["strategy"]["name"],
        seed=result["seed"],
        budget=result["budget"]["steps"],
        acc=None if acc is None else float(acc),
        result=result,
    )


def _is_validation(path: Path) -> bool:
    return path.name == "validation.json"


def discover(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """(result.json files, validation.json files) named by RUNS.

    As ``leaderboard build``: a run folder, a folder of run folders, a submission bundle
    (its ``runs/``) or a folder of bundles; also a ``result.json`` or ``validation.json``
    file, and a ``validate-prediction`` folder (its ``validation.json`` and its runs),
    alone or inside a folder."""
    results: list[Path] = []
    validations: list[Path] = []

    def folder_of_runs(folder: Path) -> None:
        results.extend(sorted(folder.glob("*/result.json")))

    def validation_folder(folder: Path) -> None:
        validations.append(folder / "validation.json")
        folder_of_runs(folder)

    for path in paths:
        if path.is_file():
            if _is_validation(path):
                validation_folder(path.parent)
            else:
                results.append(path)
        elif (path / "result.json").is_file():
            results.append(path / "result.json")
        elif (path / "validation.json").is_file():
            validation_folder(path)
        elif (path / "manifest.json").is_file():  # a submission bundle
            folder_of_runs(path / "runs")
        elif path.is_dir():
            before = len(results) + len(validations)
            folder_of_runs(path)
            for child in sorted(p for p in path.iterdir() if p.is_dir()):
                if (child / "validation.json").is_file():
                    validation_folder(child)
                elif (child / "manifest.json").is_file():
                    folder_of_runs(child / "runs")
            if len(results) + len(validations) == before:
                raise UserError(
                    "no finished runs (result.json) or validation.json in this folder or its "
                    "sub-folders",
                    where=str(path),
                )
        else:
            raise UserError(
                "not a run folder, a folder of runs, a bundle, a validate-prediction folder, "
                "or a result.json / validation.json file",
                where=str(path),
            )
    unique = list(dict.fromkeys(p.resolve() for p in results))
    unique_validations = list(dict.fromkeys(p.resolve() for p in validations))
    if not unique:
        raise UserError("no finished runs (result.json) found", where="RUNS")
    return unique, unique_validations


def _duplicate_key(result: dict[str, Any]) -> str:
    strategy = result["strategy"]
    return json.dumps(
        [
            strategy["name"],
            strategy.get("version"),
            strategy.get("source_hash"),
            strategy.get("params", {}),
            result["seed"],
            result["budget"]["steps"],
        ],
        sort_keys=True,
    )


def _track_name(track: str) -> str:
    """The name a result records for ``--track``: a track file's own ``name:``; a plain
    name as given (runs of a track that is no longer installed can still be read)."""
    if Path(track).suffix not in (".yaml", ".yml") and "/" not in track:
        return track  # a registry name (tracks.track.is_track_path), no track code imported
    from ctbench.tracks.track import find_track_spec

    return find_track_spec(track).name


def load_inputs(paths: Sequence[Path], track: str | None = None) -> Inputs:
    """Every run and validation under ``paths``; one track hash, no duplicates."""
    result_files, validation_files = discover(paths)
    runs = [_run_record(path) for path in result_files]
    first = runs[0]
    if track is not None:
        name = _track_name(track)
        stranger = next((r for r in runs if r.result["track"]["name"] != name), None)
        if stranger is not None:
            raise UserError(
                f"a run of track {stranger.result['track']['name']!r}, not {name!r} (--track)",
                where=str(stranger.path),
            )
    for run in runs[1:]:
        if run.result["track"]["hash"] != first.result["track"]["hash"]:
            raise UserError(
                f"track hash {run.result['track']['hash']} differs from "
                f"{first.result['track']['hash']} of {first.path}: findings compare runs of "
                "one track (pass one track's runs)",
                where=str(run.path),
            )
    seen: dict[str, RunRecord] = {}
    by_hash: dict[str, RunRecord] = {}
    for run in runs:
        if run.result["result_hash"] in by_hash:
            raise UserError(
                f"the same run as {by_hash[run.result['result_hash']].path} (counted once only: "
                "pass one copy)",
                where=str(run.path),
            )
        by_hash[run.result["result_hash"]] = run
        key = _duplicate_key(run.result)
        if key in seen:
            raise UserError(
                f"duplicate run: {run.strategy} seed {run.seed} with the same parameters and "
                f"budget is also in {seen[key].path}",
                where=str(run.path),
            )
        seen[key] = run
    validations = [(path, _read_json(path)) for path in validation_files]
    return Inputs(
        track=first.result["track"]["name"],
        track_hash=first.result["track"]["hash"],
        runs=runs,
        validations=validations,
    )


# ---------------------------------------------------------------------------- statistics


def percentile_interval(draws: np.ndarray) -> tuple[float | None, float | None, int]:
    """Percentile CI over the defined draws, and how many draws were undefined."""
    defined = draws[np.isfinite(draws)]
    undefined = int(draws.size - defined.size)
    if defined.size == 0:
        return None, None, undefined
    alpha = (1.0 - LEVEL) / 2.0
    low, high = np.quantile(defined, [alpha, 1.0 - alpha])
    return float(low), float(high), undefined


def mean_difference_interval(
    a: Sequence[float], b: Sequence[float], paired: bool
) -> dict[str, Any]:
    """95% Student t CI of mean(a) − mean(b), with what it was computed from.

    ``paired``: a[i] and b[i] share a seed; t on the differences, df = n − 1. Otherwise
    Welch's t with the Welch–Satterthwaite df. Zero variance (every difference identical):
    the interval is the point, lo = hi = the estimate, df None."""
    from scipy.stats import t as student_t

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    estimate = float(x.mean() - y.mean())
    if paired:
        d = x - y
        se = float(d.std(ddof=1) / math.sqrt(len(d)))
        df: float | None = float(len(d) - 1)
        method = "paired t"
    else:
        va, vb = float(x.var(ddof=1)) / len(x), float(y.var(ddof=1)) / len(y)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1)) if se > 0 else None
        method = "Welch t"
    if se == 0 or df is None:
        return {
            "method": method,
            "estimate": estimate,
            "se": 0.0,
            "df": None,
            "t_quantile": None,
            "low": estimate,
            "high": estimate,
        }
    q = float(student_t.ppf(0.5 + LEVEL / 2.0, df))
    return {
        "method": method,
        "estimate": estimate,
        "se": se,
        "df": df,
        "t_quantile": q,
        "low": estimate - q * se,
        "high": estimate + q * se,
    }


def _resampled_means(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """SAMPLES bootstrap means of ``values`` (resampled with replacement)."""
    index = rng.integers(0, len(values), size=(SAMPLES, len(values)))
    return values[index].mean(axis=1)


def _spread(means: np.ndarray) -> np.ndarray:
    return means.max(axis=-1) - means.min(axis=-1)


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman per row (average ranks for ties, as scipy); NaN where a side is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    denom = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(axis=1) / denom, np.nan)


def _budget_warning(claim: str, runs: Sequence[RunRecord]) -> list[str]:
    budgets: dict[int, int] = {}
    for run in runs:
        budgets[run.budget] = budgets.get(run.budget, 0) + 1
    if len(budgets) < 2:
        return []
    shown = ", ".join(f"{b} steps ({n} runs)" for b, n in sorted(budgets.items()))
    return [f"{claim}: budgets differ among its runs: {shown}"]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _claim(
    claim_id: str, title: str, test: str, paper: dict[str, str], **rest: Any
) -> dict[str, Any]:
    return {"id": claim_id, "claim": title, "test": test, "paper": paper, **rest}


def _measured(
    claim_id: str,
    title: str,
    test: str,
    paper: dict[str, str],
    *,
    estimate: float | None,
    ci: tuple[float | None, float | None],
    enough: bool,
    **rest: Any,
) -> dict[str, Any]:
    """A claim with its effect and the verdict the rule gives it (decided here, and only by
    :func:`verdict`)."""
    lo, hi = ci
    return _claim(
        claim_id,
        title,
        test,
        paper,
        effect={"estimate": estimate, "ci_low": lo, "ci_high": hi},
        enough=enough,
        verdict=verdict(lo, hi, enough),
        **rest,
    )


def _skipped(
    claim_id: str, title: str, test: str, paper: dict[str, str], reason: str = NO_RUNS
) -> dict[str, Any]:
    return _claim(
        claim_id,
        title,
        test,
        paper,
        effect={"estimate": None, "ci_low": None, "ci_high": None},
        enough=False,
        verdict=SKIPPED,
        reason=reason,
        n_runs=0,
        seeds_runs="—",
        inputs={},
        warnings=[],
    )


# ------------------------------------------------------------------------------- claims

OMNI = "Omni-Thinker (arXiv 2507.14783)"
CHORD = "CHORD (arXiv 2508.11408)"
OURS_ACC = "ours: absolute ACC points (final ACC on a 0–1 scale; ×100 for percentage points)"


def sequential_order(result: dict[str, Any]) -> tuple[str, ...] | None:
    """The order of a main line made of single-task RL stages covering every task once."""
    main = [s for s in result["stages"] if is_main_line(s)]
    if len(main) < 2:
        return None
    for item in main:
        if item["kind"] != "stage" or len(item["tasks"]) != 1 or item["objective"] != "rl":
            return None
    order = tuple(item["tasks"][0] for item in main)
    return order if sorted(order) == sorted(result["tasks"]) else None


def distinct_computations(
    runs: Sequence[RunRecord],
) -> tuple[list[RunRecord], list[tuple[RunRecord, RunRecord]]]:
    """Runs to count, and (twin, counted run) for those left out as twins of a counted one.

    The same computation under two strategy names (``random`` and ``fixed-order`` at one
    seed and order) gives the same R and entropy; counted twice it would pose as two seeds.
    Twins: same seed, same main-line stages, identical ``matrix.R`` and ``entropy.token``."""
    kept: list[RunRecord] = []
    twins: list[tuple[RunRecord, RunRecord]] = []
    taken: dict[str, RunRecord] = {}
    for run in runs:
        main = [
            [s.get("tasks"), s.get("objective"), s.get("steps")]
            for s in run.result["stages"]
            if is_main_line(s)
        ]
        key = json.dumps(
            [run.seed, main, run.result["matrix"]["R"], run.result["entropy"]["token"]]
        )
        if key in taken:
            twins.append((run, taken[key]))
        else:
            taken[key] = run
            kept.append(run)
    return kept, twins


def _twin(twin: RunRecord, of: RunRecord) -> dict[str, Any]:
    return {**twin.ref(), "reason": f"the same computation as {of.run_id}"}


def claim_order_matters(runs: Sequence[RunRecord]) -> dict[str, Any]:
    title = "the order of single-task stages changes final ACC by more than seed noise"
    test = (
        "S = max − min over orders of the order's mean final ACC; E = S − mean S under "
        f"{PERMUTATIONS:,} permutations of order labels across runs (seed 0); CI: runs "
        "resampled within each order, permutation null mean held at its observed value"
    )
    paper = {
        "source": OMNI,
        "figure": "no number: the curriculum premise that the order of single-task stages "
        "matters (reviewers: the predictor's assumptions could make outcomes order-invariant)",
        "ours": OURS_ACC,
    }
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    sequential = [r for r in runs if sequential_order(r.result) is not None and r.acc is not None]
    kept, twins = distinct_computations(sequential)
    for run in kept:
        groups.setdefault(sequential_order(run.result), []).append(run)
    if not groups:
        return _skipped("C1", title, test, paper)
    eligible = {o: rs for o, rs in groups.items() if len(rs) >= MIN_RUNS}
    enough = len(eligible) >= MIN_ORDERS_C1
    used = eligible if enough else groups
    orders = list(used)
    values = np.array([r.acc for o in orders for r in used[o]], dtype=np.float64)
    labels = np.array([i for i, o in enumerate(orders) for _ in used[o]])
    counts = np.bincount(labels, minlength=len(orders))
    observed = null_mean = estimate = p_value = None
    lo = hi = None
    if len(orders) >= 2:
        means = np.bincount(labels, weights=values) / counts
        observed = float(_spread(means))
        rng = np.random.default_rng(SEED)
        null = np.empty(PERMUTATIONS)
        for p in range(PERMUTATIONS):
            shuffled = rng.permutation(labels)
            null[p] = _spread(np.bincount(shuffled, weights=values) / counts)
        null_mean = float(null.mean())
        p_value = float((1 + np.sum(null >= observed - 1e-12)) / (1 + PERMUTATIONS))
        estimate = observed - null_mean
        if enough:
            rng = np.random.default_rng(SEED)
            draws = np.column_stack(
                [_resampled_means(rng, np.array([r.acc for r in used[o]])) for o in orders]
            )
            lo, hi, _ = percentile_interval(_spread(draws) - null_mean)
    used_runs = [r for o in orders for r in used[o]]
    left_out = [r for o, rs in groups.items() if o not in used for r in rs]
    return _measured(
        "C1",
        title,
        test,
        paper,
        estimate=estimate,
        ci=(lo, hi),
        enough=enough,
        n_runs=len(used_runs),
        seeds_runs=f"{_count(len(orders), 'order')}, {_count(len(used_runs), 'run')} "
        f"({'/'.join(str(len(used[o])) for o in orders)} per order)",
        inputs={
            "orders": [
                {
                    "order": list(o),
                    "runs": [r.ref() for r in used[o]],
                    "mean_acc": float(np.mean([r.acc for r in used[o]])),
                }
                for o in orders
            ],
            "observed_spread": observed,
            "permutation_null_mean": null_mean,
            "permutation_p": p_value,
            "permutations": PERMUTATIONS,
            "left_out_single_run_orders": [r.ref() for r in left_out],
            "not_counted": [_twin(twin, of) for twin, of in twins],
            "min_runs_per_order": MIN_RUNS,
            "min_orders": MIN_ORDERS_C1,
        },
        warnings=_budget_warning("C1", used_runs) + _steps_warning("C1", used_runs),
    )


def _steps_warning(claim: str, runs: Sequence[RunRecord]) -> list[str]:
    """Orders compared at different stage lengths (bwt's probes come out of its budget)."""
    lengths = {tuple(s["steps"] for s in r.result["stages"] if is_main_line(s)) for r in runs}
    if len(lengths) < 2:
        return []
    shown = "; ".join(" + ".join(map(str, steps)) for steps in sorted(lengths))
    return [f"{claim}: main-line stage steps differ among its runs: {shown}"]


def claim_difference(
    claim_id: str,
    ours: str,
    theirs: str,
    runs: Sequence[RunRecord],
    title: str,
    paper: dict[str, str],
) -> dict[str, Any]:
    test = (
        f"E = mean final ACC({ours}) − mean final ACC({theirs}); 95% Student t CI, paired by "
        "seed where both arms have the same seeds, else Welch's t"
    )
    arm_a = sorted(
        (r for r in runs if r.strategy == ours and r.acc is not None), key=lambda r: r.seed
    )
    arm_b = sorted(
        (r for r in runs if r.strategy == theirs and r.acc is not None), key=lambda r: r.seed
    )
    if not arm_a or not arm_b:
        missing = " and ".join(name for name, arm in ((ours, arm_a), (theirs, arm_b)) if not arm)
        return _skipped(claim_id, title, test, paper, f"{NO_RUNS} (no {missing} runs)")
    setting_warnings = []
    for name, arm in ((ours, arm_a), (theirs, arm_b)):
        kept, note = _one_setting(claim_id, name, arm)
        if kept is None:
            return _skipped(claim_id, title, test, paper, note)
        arm[:] = kept
        setting_warnings += [note] if note else []
    a = np.array([r.acc for r in arm_a])
    b = np.array([r.acc for r in arm_b])
    seeds_a, seeds_b = [r.seed for r in arm_a], [r.seed for r in arm_b]
    paired = seeds_a == seeds_b and len(set(seeds_a)) == len(seeds_a)
    enough = len(arm_a) >= MIN_RUNS and len(arm_b) >= MIN_RUNS
    estimate = float(a.mean() - b.mean())
    lo = hi = None
    interval = None
    if enough:
        interval = mean_difference_interval(a, b, paired)
        lo, hi = interval["low"], interval["high"]
    resampling = (
        "paired by seed; Student t on the per-seed differences (df = n − 1)"
        if paired
        else "unpaired; Welch's t (Welch–Satterthwaite df)"
    )
    return _measured(
        claim_id,
        title,
        test,
        paper,
        estimate=estimate,
        ci=(lo, hi),
        enough=enough,
        n_runs=len(arm_a) + len(arm_b),
        seeds_runs=f"{ours} {len(arm_a)}, {theirs} {len(arm_b)} ({resampling.split(';')[0]})",
        resampling=resampling,
        inputs={
            "arms": {
                ours: {"runs": [r.ref() for r in arm_a], "mean_acc": float(a.mean())},
                theirs: {"runs": [r.ref() for r in arm_b], "mean_acc": float(b.mean())},
            },
            "paired": paired,
            "interval": interval,
            "min_runs_per_arm": MIN_RUNS,
        },
        warnings=_budget_warning(claim_id, arm_a + arm_b) + setting_warnings,
    )


def _setting(run: RunRecord) -> str:
    return "params " + json.dumps(run.result["strategy"].get("params", {}), sort_keys=True)


def _one_setting(claim: str, name: str, arm: list[RunRecord]) -> tuple[list[RunRecord] | None, str]:
    """An arm's runs of one parameter setting: the setting with the most runs (budgets that
    differ are a warning of their own, :func:`_budget_warning`).

    Two settings of one strategy (bwt with its probes and with the gradient estimate, say)
    are two arms, not more seeds of one: pooled, their runs at one seed would be counted as
    independent and the pairing by seed lost. With no single largest setting the claim is
    skipped, naming the settings."""
    by_setting: dict[str, list[RunRecord]] = {}
    for run in arm:
        by_setting.setdefault(_setting(run), []).append(run)
    if len(by_setting) == 1:
        return arm, ""
    ranked = sorted(by_setting.items(), key=lambda item: -len(item[1]))
    (kept_setting, kept), (_, runner_up) = ranked[0], ranked[1]
    if len(kept) == len(runner_up):
        settings = "; ".join(f"{setting} ({len(rs)} runs)" for setting, rs in ranked)
        return None, (
            f"{NO_RUNS} (the {name} runs come in several settings with equally many runs: "
            f"{settings}; pass the runs of one)"
        )
    left = "; ".join(f"{setting} ({len(rs)} runs)" for setting, rs in ranked[1:])
    return kept, (
        f"{claim}: the {name} arm is its {len(kept)} runs with {kept_setting}; left out: {left}"
    )


def entropy_steps(run: RunRecord) -> list[dict[str, Any]]:
    """Δ token entropy of the trained task across every single-task RL main-line stage."""
    result = run.result
    main = [s for s in result["stages"] if is_main_line(s)]
    token = result["entropy"]["token"]
    steps = []
    for k, item in enumerate(main, start=1):
        if item["kind"] != "stage" or len(item["tasks"]) != 1 or item["objective"] != "rl":
            continue
        task = item["tasks"][0]
        j = result["tasks"].index(task)
        before, after = token[k - 1][j], token[k][j]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (before, after)):
            continue
        steps.append(
            {
                "row": k,
                "task": task,
                "domain": result["task_info"][task]["domain"],
                "before": before,
                "after": after,
                "delta": after - before,
            }
        )
    return steps


def claim_entropy(domain: str, runs: Sequence[RunRecord]) -> dict[str, Any]:
    structured = domain == "structured"
    claim_id = "C3a" if structured else "C3b"
    title = (
        "RL on a structured task lowers its output (token) entropy"
        if structured
        else "RL on an open-ended task raises its output (token) entropy"
    )
    sign = -1.0 if structured else 1.0
    test = (
        f"E = {'−' if structured else '+'}mean Δ token entropy (row after − row before) over "
        f"every single-task RL main-line stage on {'a structured' if structured else 'an open'} "
        "task; runs resampled (cluster "
        "bootstrap: a run's stages together)"
    )
    paper = {
        "source": OMNI,
        "figure": "no number: RL on structured domains lowers output entropy, on creative "
        "writing raises it",
        "ours": "mean token entropy of sampled completions (nats), ctbench's entropy.token",
    }
    units = []
    kept, twins = distinct_computations(runs)
    for run in kept:
        steps = [s for s in entropy_steps(run) if s["domain"] == domain]
        if steps:
            units.append((run, steps))
    if not units:
        return _skipped(claim_id, title, test, paper)
    sums = np.array([sum(s["delta"] for s in steps) for _, steps in units])
    counts = np.array([len(steps) for _, steps in units], dtype=np.float64)
    estimate = float(sign * sums.sum() / counts.sum())
    enough = len(units) >= MIN_RUNS
    lo = hi = None
    if enough:
        rng = np.random.default_rng(SEED)
        index = rng.integers(0, len(units), size=(SAMPLES, len(units)))
        lo, hi, _ = percentile_interval(sign * sums[index].sum(axis=1) / counts[index].sum(axis=1))
    stages = int(counts.sum())
    return _measured(
        claim_id,
        title,
        test,
        paper,
        estimate=estimate,
        ci=(lo, hi),
        enough=enough,
        n_runs=len(units),
        seeds_runs=f"{_count(len(units), 'run')}, {_count(stages, 'stage')}",
        inputs={
            "sign": sign,
            "runs": [{**run.ref(), "stages": steps} for run, steps in units],
            "not_counted": [
                _twin(twin, of)
                for twin, of in twins
                if any(s["domain"] == domain for s in entropy_steps(twin))
            ],
            "min_runs": MIN_RUNS,
        },
        warnings=_budget_warning(claim_id, [run for run, _ in units]),
    )


def _reported_prediction(result: dict[str, Any]) -> float | None:
    report = result["strategy"].get("report") or {}
    if "predicted_acc" in report:
        return float(report["predicted_acc"])
    predicted = report.get("predicted_final")
    if isinstance(predicted, dict) and predicted:
        return float(np.mean(list(predicted.values())))
    return None


def prediction_points(
    runs: Sequence[RunRecord], validations: Sequence[tuple[Path, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """(order, predicted ACC, measured ACC, run) from runs' reports and validation.json."""
    points = []
    for run in runs:
        report = run.result["strategy"].get("report") or {}
        predicted = _reported_prediction(run.result)
        if predicted is None or "order" not in report or run.acc is None:
            continue
        if not math.isfinite(predicted):
            raise UserError(f"strategy.report's prediction is {predicted!r}", where=str(run.path))
        points.append(
            {
                "order": list(report["order"]),
                "predicted_acc": predicted,
                "measured_acc": run.acc,
                "run_id": run.run_id,
                "seed": run.seed,
                "source": "strategy.report",
            }
        )
    by_path = {run.path: run for run in runs}
    for path, data in validations:
        rows = data.get("orders")
        if not isinstance(rows, list):
            raise UserError("not a validate-prediction record: orders is missing", where=str(path))
        for row in rows:
            try:
                order, run_id = list(row["order"]), row["run_id"]
                predicted, recorded = float(row["predicted_acc"]), float(row["measured_acc"])
            except (KeyError, TypeError, ValueError) as exc:
                raise UserError(f"malformed order row: {exc!r}", where=str(path)) from exc
            if not math.isfinite(predicted):
                raise UserError(f"predicted_acc is {predicted!r}", where=str(path))
            run = by_path.get((path.parent / run_id / "result.json").resolve())
            if run is None:
                raise UserError(
                    f"the run of order {' > '.join(order)} ({run_id}/result.json) is missing: "
                    "its measured ACC is read from the run's own result",
                    where=str(path),
                )
            if run.acc is None or abs(run.acc - recorded) > 1e-9:
                raise UserError(
                    f"measured_acc {recorded!r} of order {' > '.join(order)} is not its run's "
                    f"metrics.acc {run.acc!r}",
                    where=str(path),
                )
            points.append(
                {
                    "order": order,
                    "predicted_acc": predicted,
                    "measured_acc": run.acc,
                    "run_id": run.run_id,
                    "seed": run.seed,
                    "source": str(path),
                }
            )
    return points


def claim_predictor(
    runs: Sequence[RunRecord], validations: Sequence[tuple[Path, dict[str, Any]]]
) -> dict[str, Any]:
    title = "the additive transfer predictor ranks orders"
    test = (
        "E = Spearman correlation between predicted and measured final ACC over orders (each "
        "order: mean over its runs); CI: orders resampled"
    )
    paper = {
        "source": OMNI,
        "figure": "no number: the authors call the predictions precise; reviewers found "
        "Table 3's correlations low",
        "ours": "Spearman ρ over orders of the additive prediction (DESIGN §5) vs measured ACC",
    }
    points = prediction_points(runs, validations)
    if not points:
        return _skipped("C4", title, test, paper)
    by_order: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for point in points:
        by_order.setdefault(tuple(point["order"]), []).append(point)
    orders = [
        {
            "order": list(order),
            "predicted_acc": float(np.mean([p["predicted_acc"] for p in group])),
            "measured_acc": float(np.mean([p["measured_acc"] for p in group])),
            "points": group,
        }
        for order, group in by_order.items()
    ]
    predicted = np.array([o["predicted_acc"] for o in orders])
    measured = np.array([o["measured_acc"] for o in orders])
    point_estimate = correlation(list(predicted), list(measured))
    enough = len(orders) >= MIN_ORDERS_C4
    lo = hi = None
    undefined = 0
    if enough:
        rng = np.random.default_rng(SEED)
        index = rng.integers(0, len(orders), size=(SAMPLES, len(orders)))
        lo, hi, undefined = percentile_interval(
            _rowwise_spearman(predicted[index], measured[index])
        )
    used = {p["run_id"] for p in points}
    return _measured(
        "C4",
        title,
        test,
        paper,
        estimate=point_estimate["spearman"],
        ci=(lo, hi),
        enough=enough,
        n_runs=len(used),
        seeds_runs=f"{_count(len(orders), 'order')}, {_count(len(points), 'run')}",
        inputs={
            "orders": orders,
            "correlation": point_estimate,
            "undefined_draws": undefined,
            "min_orders": MIN_ORDERS_C4,
        },
        warnings=_budget_warning("C4", [r for r in runs if r.run_id in used]),
    )


def build_findings(inputs: Inputs) -> dict[str, Any]:
    runs = inputs.runs
    claims = [
        claim_order_matters(runs),
        claim_difference(
            "C2a",
            "bwt",
            "joint",
            runs,
            "the BWT-ordered curriculum beats joint training",
            {
                "source": OMNI,
                "figure": "+6.2% over joint multi-task RL (v1: +5.2%)",
                "meaning": "the paper does not say whether relative or absolute; REFERENCES "
                "reads it as probably a relative average",
                "ours": OURS_ACC,
            },
        ),
        claim_difference(
            "C2b",
            "bwt",
            "merge",
            runs,
            "the BWT-ordered curriculum beats model merging",
            {
                "source": OMNI,
                "figure": "+12.4% over model merging (v1: +9.1%)",
                "meaning": "the paper does not say whether relative or absolute; REFERENCES "
                "reads it as probably a relative average",
                "ours": OURS_ACC,
            },
        ),
        claim_entropy("structured", runs),
        claim_entropy("open", runs),
        claim_predictor(runs, inputs.validations),
        claim_difference(
            "C5",
            "chord",
            "sft_then_rl",
            runs,
            "CHORD beats SFT-then-RL",
            {
                "source": CHORD,
                "figure": "Table 1, Qwen2.5-7B-Instruct, CHORD-φ − SFT-best+RL: +4.1 AMC, "
                "+1.1 AIME24, +0.9 AIME25, +4.9 MMLU-Pro",
                "meaning": "absolute accuracy points on each benchmark",
                "ours": OURS_ACC + "; our chord is CHORD-φ, our sft_then_rl a fixed SFT share",
            },
        ),
    ]
    warnings = [w for c in claims for w in c["warnings"]]
    return {
        "schema_version": FINDINGS_SCHEMA,
        "track": {"name": inputs.track, "hash": inputs.track_hash},
        "ctbench_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(),
        "rule": RULE,
        "bootstrap": {
            "samples": SAMPLES,
            "seed": SEED,
            "level": LEVEL,
            "method": "percentile",
            "permutations": PERMUTATIONS,
            "used_by": ["C1", "C3a", "C3b", "C4"],
        },
        "mean_difference_interval": {
            "level": LEVEL,
            "method": "Student t: paired by seed (df = n − 1) when both arms have the same "
            "seeds, else Welch (Welch–Satterthwaite df); zero variance gives lo = hi = E",
            "quantile": "scipy.stats.t.ppf",
            "used_by": ["C2a", "C2b", "C5"],
        },
        "n_runs": len(runs),
        "runs": [{**r.ref(), "path": str(r.path)} for r in runs],
        "validations": [str(path) for path, _ in inputs.validations],
        "warnings": warnings,
        "claims": claims,
    }


# ----------------------------------------------------------------------------- rendering


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def effect_text(claim: dict[str, Any]) -> str:
    effect = claim["effect"]
    if claim["verdict"] == SKIPPED:
        return "—"
    if effect["ci_low"] is None:
        return f"{_num(effect['estimate'])} (no CI)"
    return f"{_num(effect['estimate'])} [{_num(effect['ci_low'])}, {_num(effect['ci_high'])}]"


def _verdict_text(claim: dict[str, Any]) -> str:
    if claim["verdict"] == SKIPPED:
        return f"skipped: {claim['reason']}"
    return claim["verdict"]


def _run_list(refs: Iterable[dict[str, Any]]) -> str:
    return (
        ", ".join(
            f"`{r['run_id']}` ({r['acc']:.3f})" if r.get("acc") is not None else f"`{r['run_id']}`"
            for r in refs
        )
        or "none"
    )


def claim_paragraph(claim: dict[str, Any]) -> str:
    """One short paragraph: what went in (run ids) and the paper's figure beside ours."""
    inputs, paper = claim["inputs"], claim["paper"]
    figure = f"Paper ({paper['source']}): {paper['figure']}"
    if "meaning" in paper:
        figure += f" ({paper['meaning']})"
    figure += f"; {paper['ours']}."
    if claim["verdict"] == SKIPPED:
        return f"Skipped: {claim['reason']}. {figure}"
    cid = claim["id"]
    if cid == "C1":
        parts = [
            f"{' > '.join(o['order'])}: mean {o['mean_acc']:.3f} over {_run_list(o['runs'])}"
            for o in inputs["orders"]
        ]
        text = "Orders: " + "; ".join(parts) + ". "
        if inputs["observed_spread"] is not None:
            text += (
                f"Observed spread {inputs['observed_spread']:.3f}, permutation null mean "
                f"{inputs['permutation_null_mean']:.3f} (permutation p "
                f"{inputs['permutation_p']:.3g}). "
            )
        if all(len(o["runs"]) == 1 for o in inputs["orders"]):
            text += (
                "With one run per order the permutation null equals the observed spread, so "
                "E is 0 by construction: order and seed noise cannot be told apart without "
                "repeated seeds. "
            )
        if inputs["left_out_single_run_orders"]:
            text += (
                "Left out (orders with one run): "
                + _run_list(inputs["left_out_single_run_orders"])
                + ". "
            )
        if inputs["not_counted"]:
            text += (
                "Not counted (the same computation as a counted run): "
                + _run_list(inputs["not_counted"])
                + ". "
            )
    elif cid in ("C2a", "C2b", "C5"):
        text = (
            "; ".join(
                f"{name}: mean {arm['mean_acc']:.3f} over {_run_list(arm['runs'])}"
                for name, arm in inputs["arms"].items()
            )
            + f". CI: {claim['resampling']}. "
        )
    elif cid in ("C3a", "C3b"):
        text = (
            "Runs (stages as task Δ): "
            + "; ".join(
                f"`{r['run_id']}` "
                + ", ".join(f"{s['task']} {s['delta']:+.3f}" for s in r["stages"])
                for r in inputs["runs"]
            )
            + ". "
        )
        if inputs["not_counted"]:
            text += (
                "Not counted (the same computation as a counted run): "
                + _run_list(inputs["not_counted"])
                + ". "
            )
    else:  # C4
        text = (
            "Orders (predicted → measured ACC): "
            + "; ".join(
                f"{' > '.join(o['order'])} {o['predicted_acc']:.3f} → {o['measured_acc']:.3f} "
                f"({', '.join('`' + p['run_id'] + '`' for p in o['points'])})"
                for o in inputs["orders"]
            )
            + ". "
        )
        if inputs["undefined_draws"]:
            text += (
                f"{inputs['undefined_draws']} of {SAMPLES:,} resamples had a constant side "
                "(no correlation) and were left out of the CI. "
            )
    return text + figure


def table_markdown(findings: dict[str, Any]) -> list[str]:
    """The claims table as Markdown lines (the findings file and the leaderboard's)."""
    lines = [
        "| claim | test | effect [95% CI] | seeds/runs | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in findings["claims"]:
        lines.append(
            f"| {c['id']} {c['claim']} | {c['test']} | {effect_text(c)} | {c['seeds_runs']} | "
            f"**{_verdict_text(c)}** |"
        )
    return lines


def render_markdown(findings: dict[str, Any]) -> str:
    track = findings["track"]
    lines = [
        f"# Findings: track `{track['name']}` (hash `{track['hash']}`)",
        "",
        f"{findings['n_runs']} runs read; ctbench {findings['ctbench_version']}; "
        f"{findings['created'][:10]}.",
        "",
        *(f"{line}  " for line in RULE_SHORT),
        "",
    ]
    for warning in findings["warnings"]:
        lines.append(f"**Warning:** {warning}  ")
    if findings["warnings"]:
        lines.append("")
    lines += [*table_markdown(findings), ""]
    for c in findings["claims"]:
        lines += [f"### {c['id']}: {c['claim']}", "", claim_paragraph(c), ""]
    lines += [
        "The rule in full, and every input number, are in the JSON next to this file.",
        "",
    ]
    return "\n".join(lines)


_COLOURS = {
    SUPPORTED: "#d5f5d5",
    CONTRADICTED: "#f8d4d4",
    INCONCLUSIVE: "#f3f3f3",
    TOO_FEW: "#fff3cd",
    SKIPPED: "#ffffff",
}


def table_html(findings: dict[str, Any]) -> str:
    """The claims table (claim, test, effect [95% CI], seeds/runs, verdict) as HTML: the
    findings page and the leaderboard page's findings section show the same one."""
    esc = html.escape
    rows = "".join(
        f'<tr class="claim" data-verdict="{esc(c["verdict"])}"><td>{esc(c["id"])} '
        f"{esc(c['claim'])}</td><td>{esc(c['test'])}</td><td>{esc(effect_text(c))}</td>"
        f"<td>{esc(c['seeds_runs'])}</td>"
        f'<td style="background:{_COLOURS[c["verdict"]]}"><b>{esc(_verdict_text(c))}</b></td></tr>'
        for c in findings["claims"]
    )
    return (
        '<table id="findings"><thead><tr><th>claim</th><th>test</th><th>effect [95% CI]</th>'
        f"<th>seeds/runs</th><th>verdict</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def render_html(findings: dict[str, Any]) -> str:
    """A self-contained page (no external assets): the table and one paragraph per claim."""
    track = findings["track"]
    esc = html.escape
    paragraphs = "".join(
        f"<h3>{esc(c['id'])}: {esc(c['claim'])}</h3><p>{esc(claim_paragraph(c))}</p>"
        for c in findings["claims"]
    )
    warnings = "".join(f"<p><b>Warning:</b> {esc(w)}</p>" for w in findings["warnings"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>ctbench findings: {esc(track["name"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 0.5rem 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }}
th {{ background: #f3f3f3; }}
</style></head><body>
<h1>ctbench findings — track <code>{esc(track["name"])}</code></h1>
<p>Track hash <code>{esc(track["hash"])}</code>; {findings["n_runs"]} runs read; ctbench
{esc(findings["ctbench_version"])}; {esc(findings["created"][:10])}.</p>
<p>{esc(RULE_SHORT[0])}<br>{esc(RULE_SHORT[1])}</p>
{warnings}
{table_html(findings)}
{paragraphs}
<p>The rule in full: {esc(findings["rule"])}</p>
</body></html>
"""


def findings_paths(out: Path, track: str) -> dict[str, Path]:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in track)
    return {ext: out / f"{safe}-findings.{ext}" for ext in ("md", "json", "html")}


def write_findings(findings: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write the three files atomically (each replaces any earlier one whole)."""
    paths = findings_paths(out, findings["track"]["name"])
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(paths["json"], findings)
        write_text_atomic(paths["md"], render_markdown(findings))
        write_text_atomic(paths["html"], render_html(findings))
    except OSError as exc:
        raise UserError(f"cannot write there: {exc.strerror}", where=f"--out {out}") from exc
    return paths
