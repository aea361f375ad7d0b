"""``ctbench findings``: every claim's verdict follows from its numbers by the written rule.

All inputs are hand-made ``result.json`` files holding only what findings read (with a valid
``result_hash``), so each dataset is built to force one verdict: for every claim one
supported, one contradicted, one inconclusive and one with too few runs. The rule is written
out again here, independently of the code, and every findings JSON is checked against it.
"""

from __future__ import annotations

import json
import warnings
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_runner import run_cli as ctb
from scipy import stats

from ctbench.results.findings import build_findings, load_inputs
from ctbench.runs.result import result_content_hash

REPO = Path(__file__).resolve().parent.parent
TASKS = ["math", "code", "qa", "creative"]
DOMAINS = {"math": "structured", "code": "structured", "qa": "structured", "creative": "open"}
ORDERS = [list(p) for p in permutations(TASKS)]


# ----------------------------------------------------------------------------- builders


def stage(tasks, objective="rl", *, branch=False, start="current", steps=100) -> dict[str, Any]:
    return {
        "kind": "stage",
        "name": ",".join(tasks) if not branch else "branch-" + ",".join(tasks),
        "tasks": list(tasks),
        "mixture": {t: 1 / len(tasks) for t in tasks},
        "objective": objective,
        "steps": steps,
        "start": start,
        "branch": branch,
        "probe": False,
    }


def main_line(strategy: str, order: list[str] | None) -> tuple[list, list]:
    """(stages trained aside, main-line items) of each reference strategy's shape."""
    if strategy == "joint":
        return [], [stage(TASKS, steps=400)]
    if strategy == "merge":
        aside = [stage([t], branch=True, start="base") for t in TASKS]
        merge = {"kind": "merge", "name": "merged", "sources": [s["name"] for s in aside]}
        return aside, [merge]
    if strategy == "sft_then_rl":
        return [], [stage(TASKS, "sft", steps=100), stage(TASKS, steps=300)]
    if strategy == "chord":
        return [], [stage(TASKS, "blend", steps=400)]
    return [], [stage([t]) for t in (order or TASKS)]  # random, bwt, fixed-order


def make_result(
    run_id: str,
    strategy: str,
    seed: int,
    acc: float,
    *,
    order: list[str] | None = None,
    deltas: dict[str, float] | None = None,
    report: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    track_hash: str = "hash-a",
    budget: int = 400,
) -> dict[str, Any]:
    """A result with the fields findings read; ``deltas``: task → Δ token entropy of the
    stage that trains it."""
    aside, main = main_line(strategy, order)
    R = [[0.5] * len(TASKS) for _ in range(len(main) + 1)]
    R[-1] = [acc] * len(TASKS)
    token = [[0.5] * len(TASKS)]
    for item in main:
        row = list(token[-1])
        if item["kind"] == "stage" and len(item["tasks"]) == 1:
            task = item["tasks"][0]
            row[TASKS.index(task)] += (deltas or {}).get(task, 0.0)
        token.append(row)
    result = {
        "schema_version": 1,
        "run_id": run_id,
        "track": {"name": "tiny", "version": 1, "hash": track_hash},
        "strategy": {
            "name": strategy,
            "version": "1",
            "params": params if params is not None else ({"order": order} if order else {}),
            "source_hash": "src",
            "report": report or {},
        },
        "seed": seed,
        "budget": {"steps": budget, "spent_steps": budget, "probe_steps": 0},
        "tasks": TASKS,
        "task_info": {t: {"domain": DOMAINS[t]} for t in TASKS},
        "stages": [{"index": i + 1, **s} for i, s in enumerate(aside + main)],
        "matrix": {"R": R},
        "metrics": {"acc": acc},
        "entropy": {"token": token},
    }
    result["result_hash"] = result_content_hash(result)
    return result


def write_runs(folder: Path, results: list[dict[str, Any]]) -> Path:
    for result in results:
        (folder / result["run_id"]).mkdir(parents=True)
        (folder / result["run_id"] / "result.json").write_text(json.dumps(result))
    return folder


def findings_of(folder: Path) -> dict[str, Any]:
    found = build_findings(load_inputs([folder]))
    check_by_rule(found)
    return found


def claim(found: dict[str, Any], claim_id: str) -> dict[str, Any]:
    return next(c for c in found["claims"] if c["id"] == claim_id)


# ---------------------------------------------------------- the rule, written out again


def enough_runs(c: dict[str, Any]) -> bool:
    """Each claim's minimum, from its recorded inputs."""
    inputs = c["inputs"]
    if c["id"] == "C1":
        return sum(len(o["runs"]) >= 3 for o in inputs["orders"]) >= 2
    if c["id"] in ("C2a", "C2b", "C5"):
        return all(len(arm["runs"]) >= 3 for arm in inputs["arms"].values())
    if c["id"] in ("C3a", "C3b"):
        return len(inputs["runs"]) >= 3
    return len(inputs["orders"]) >= 5


def rule(lo: float | None, hi: float | None, enough: bool) -> str:
    if not enough:
        return "inconclusive (too few runs)"
    if lo is not None and lo > 0:
        return "supported"
    return "contradicted" if hi is not None and hi < 0 else "inconclusive"


def recomputed_estimate(c: dict[str, Any]) -> float | None:
    inputs = c["inputs"]
    if c["id"] == "C1":
        means = [np.mean([r["acc"] for r in o["runs"]]) for o in inputs["orders"]]
        if len(means) < 2:
            return None
        return max(means) - min(means) - inputs["permutation_null_mean"]
    if c["id"] in ("C2a", "C2b", "C5"):
        ours, theirs = (np.mean([r["acc"] for r in a["runs"]]) for a in inputs["arms"].values())
        return ours - theirs
    if c["id"] in ("C3a", "C3b"):
        stages = [s for r in inputs["runs"] for s in r["stages"]]
        assert all(abs(s["after"] - s["before"] - s["delta"]) < 1e-12 for s in stages)
        return inputs["sign"] * np.mean([s["delta"] for s in stages])
    predicted = [o["predicted_acc"] for o in inputs["orders"]]
    measured = [o["measured_acc"] for o in inputs["orders"]]
    if len(predicted) < 3:
        return None
    return stats.spearmanr(predicted, measured).statistic


def t_interval(c: dict[str, Any]) -> tuple[float, float]:
    """C2/C5's 95% CI by scipy's own t-tests: paired by seed, else Welch."""
    arm_a, arm_b = c["inputs"]["arms"].values()
    a, b = [r["acc"] for r in arm_a["runs"]], [r["acc"] for r in arm_b["runs"]]
    with warnings.catch_warnings():  # scipy warns on zero variance
        warnings.simplefilter("ignore", RuntimeWarning)
        if c["inputs"]["paired"]:
            assert [r["seed"] for r in arm_a["runs"]] == [r["seed"] for r in arm_b["runs"]]
            test = stats.ttest_rel(a, b)
        else:
            test = stats.ttest_ind(a, b, equal_var=False)
        ci = test.confidence_interval(0.95)
    if not np.isfinite(ci.low):  # zero variance: the interval is the point
        return float(np.mean(a) - np.mean(b)), float(np.mean(a) - np.mean(b))
    return float(ci.low), float(ci.high)


def check_by_rule(found: dict[str, Any]) -> None:
    """Every verdict follows from the recorded numbers by the written rule."""
    assert "lo > 0" in found["rule"] and "hi < 0" in found["rule"]
    assert found["bootstrap"]["samples"] == 10_000 and found["bootstrap"]["seed"] == 0
    for c in found["claims"]:
        if c["verdict"] == "skipped":
            assert c["reason"].startswith("no runs for it")
            continue
        enough = enough_runs(c)
        effect = c["effect"]
        assert c["verdict"] == rule(effect["ci_low"], effect["ci_high"], enough), c["id"]
        if not enough:
            assert effect["ci_low"] is None and effect["ci_high"] is None
        expected = recomputed_estimate(c)
        if expected is None:
            assert effect["estimate"] is None
        else:
            assert effect["estimate"] == pytest.approx(expected, abs=1e-9), c["id"]
        if enough and c["id"] in ("C2a", "C2b", "C5"):
            lo, hi = t_interval(c)
            assert effect["ci_low"] == pytest.approx(lo, abs=1e-9), c["id"]
            assert effect["ci_high"] == pytest.approx(hi, abs=1e-9), c["id"]


# --------------------------------------------------------------------------- datasets


def c1_runs(verdict: str) -> list[dict[str, Any]]:
    def runs(order: list[str], accs: list[float], first_seed: int = 0):
        return [
            make_result(
                f"fixed-{'-'.join(order)}-s{first_seed + i}",
                "fixed-order",
                first_seed + i,
                a,
                order=order,
            )
            for i, a in enumerate(accs)
        ]

    a, b, c = ORDERS[0], ORDERS[7], ORDERS[14]
    if verdict == "supported":  # order means 0.50 / 0.60 / 0.70, seed noise ±0.01
        return (
            runs(a, [0.50, 0.51, 0.49]) + runs(b, [0.60, 0.61, 0.59]) + runs(c, [0.70, 0.71, 0.69])
        )
    if verdict == "contradicted":
        # Equal order means; the diverse order's mean is pinned by its 40 runs, so the
        # resampled spread stays far below what random regrouping of the runs gives.
        return runs(a, [0.5, 0.5, 0.5]) + runs(b, [0.3, 0.7] * 20)
    if verdict == "inconclusive":  # as much order as seed noise
        return (
            runs(a, [0.50, 0.56, 0.53]) + runs(b, [0.55, 0.51, 0.54]) + runs(c, [0.52, 0.57, 0.50])
        )
    return runs(a, [0.50, 0.52]) + runs(b, [0.70, 0.72])  # no order with a third seed


PAIRS = {"C2a": ("bwt", "joint"), "C2b": ("bwt", "merge"), "C5": ("chord", "sft_then_rl")}


def c2_runs(claim_id: str, verdict: str) -> list[dict[str, Any]]:
    ours, theirs = PAIRS[claim_id]
    better, worse = [0.60, 0.62, 0.61], [0.50, 0.53, 0.51]
    accs = {
        "supported": (better, worse),
        "contradicted": (worse, better),
        "inconclusive": ([0.50, 0.60, 0.55], [0.56, 0.54, 0.55]),
        "too few": (better[:2], worse),
    }[verdict]
    # C2a's arms share their seeds: paired by seed; C2b's and C5's do not: unpaired.
    offset = 0 if claim_id == "C2a" else 10
    return [make_result(f"{ours}-s{s}", ours, s, acc) for s, acc in enumerate(accs[0])] + [
        make_result(f"{theirs}-s{s + offset}", theirs, s + offset, acc)
        for s, acc in enumerate(accs[1])
    ]


def c3_runs(verdict: str) -> list[dict[str, Any]]:
    """Sequential runs; structured stages move entropy by s_delta, the open one by o_delta."""
    per_run = {
        "supported": [(-0.10, 0.05), (-0.12, 0.04), (-0.08, 0.06)],
        "contradicted": [(0.10, -0.05), (0.12, -0.04), (0.08, -0.06)],
        "inconclusive": [(-0.10, 0.05), (0.10, -0.05), (0.01, -0.01)],
        "too few": [(-0.10, 0.05), (-0.12, 0.04)],
    }[verdict]
    return [
        make_result(
            f"random-s{s}",
            "random",
            s,
            0.5,
            order=ORDERS[s],
            deltas={t: (o_delta if DOMAINS[t] == "open" else s_delta) for t in TASKS},
        )
        for s, (s_delta, o_delta) in enumerate(per_run)
    ]


def c4_runs(verdict: str) -> list[dict[str, Any]]:
    predicted = [0.40, 0.45, 0.50, 0.55, 0.60]
    measured = {
        "supported": [0.41, 0.46, 0.49, 0.56, 0.61],
        "contradicted": [0.61, 0.56, 0.49, 0.46, 0.41],
        "inconclusive": [0.50, 0.40, 0.60, 0.45, 0.55],  # Spearman +0.3 on five orders
        "too few": [0.41, 0.46, 0.49, 0.56],
    }[verdict]
    return [
        make_result(
            f"bwt-s{s}",
            "bwt",
            s,
            m,
            order=ORDERS[s],
            params={},
            report={"order": ORDERS[s], "predicted_acc": p},
        )
        for s, (p, m) in enumerate(zip(predicted, measured, strict=False))
    ]


VERDICTS = {
    "supported": "supported",
    "contradicted": "contradicted",
    "inconclusive": "inconclusive",
    "too few": "inconclusive (too few runs)",
}


def dataset(claim_id: str, verdict: str) -> list[dict[str, Any]]:
    if claim_id == "C1":
        return c1_runs(verdict)
    if claim_id in PAIRS:
        return c2_runs(claim_id, verdict)
    if claim_id in ("C3a", "C3b"):
        return c3_runs(verdict)
    return c4_runs(verdict)


@pytest.mark.parametrize("verdict", list(VERDICTS))
@pytest.mark.parametrize("claim_id", ["C1", "C2a", "C2b", "C3a", "C3b", "C4", "C5"])
def test_each_claim_reaches_each_verdict(tmp_path, claim_id, verdict):
    found = findings_of(write_runs(tmp_path, dataset(claim_id, verdict)))
    c = claim(found, claim_id)
    assert c["verdict"] == VERDICTS[verdict], c
    assert c["effect"]["estimate"] is not None  # the point estimate is reported anyway
    if verdict == "too few":
        assert c["effect"]["ci_low"] is None
    if claim_id in PAIRS and verdict != "too few":  # two bwt runs cannot pair three
        paired = claim_id == "C2a"
        assert c["resampling"].startswith("paired by seed" if paired else "unpaired")


def test_mean_difference_ci_is_paired_t_welch_t_or_the_point(tmp_path):
    """Paired by seed: t on the differences; identical differences: lo = hi = E."""
    accs = [0.5, 0.75, 0.625]  # exact in binary: the differences are exactly 0.25
    runs = [make_result(f"bwt-s{s}", "bwt", s, a) for s, a in enumerate(accs)]
    runs += [make_result(f"joint-s{s}", "joint", s, a - 0.25) for s, a in enumerate(accs)]
    runs += [make_result(f"merge-s{s}", "merge", s, 0.25) for s in (5, 6, 7)]
    found = findings_of(write_runs(tmp_path, runs))
    c2a, c2b = claim(found, "C2a"), claim(found, "C2b")
    assert c2a["inputs"]["paired"] and c2a["inputs"]["interval"]["method"] == "paired t"
    assert c2a["effect"]["ci_low"] == c2a["effect"]["ci_high"] == c2a["effect"]["estimate"]
    assert c2a["effect"]["estimate"] == 0.25 and c2a["inputs"]["interval"]["df"] is None
    assert c2a["verdict"] == "supported"
    welch = c2b["inputs"]["interval"]  # merge constant: Welch's df is bwt's n − 1
    assert not c2b["inputs"]["paired"] and welch["method"] == "Welch t"
    assert welch["df"] == pytest.approx(2.0) and welch["t_quantile"] == pytest.approx(
        stats.t.ppf(0.975, 2)
    )


def test_an_arm_is_one_parameter_setting(tmp_path):
    """bwt with its probes (three seeds) and with the gradient estimate (two of the same
    seeds): the arm is the larger setting, paired with joint by seed, and the rest is named;
    two settings with equally many runs skip the claim, naming both."""
    runs = [make_result(f"joint-s{s}", "joint", s, 0.5) for s in range(3)]
    runs += [make_result(f"bwt-s{s}", "bwt", s, 0.75) for s in range(3)]
    gradient = {"estimator": "gradient"}
    runs += [make_result(f"bwt-g{s}", "bwt", s, 0.25, params=gradient) for s in range(2)]
    c2a = claim(findings_of(write_runs(tmp_path / "a", runs)), "C2a")
    assert c2a["inputs"]["paired"] and c2a["effect"]["estimate"] == 0.25
    assert [r["run_id"] for r in c2a["inputs"]["arms"]["bwt"]["runs"]] == [
        "bwt-s0", "bwt-s1", "bwt-s2"
    ]  # fmt: skip
    assert any(
        w.startswith("C2a: the bwt arm is its 3 runs with params {}; left out: params "
                     '{"estimator": "gradient"} (2 runs)')
        for w in c2a["warnings"]
    )  # fmt: skip
    runs.append(make_result("bwt-g2", "bwt", 2, 0.25, params=gradient))
    c2a = claim(findings_of(write_runs(tmp_path / "b", runs)), "C2a")
    assert c2a["verdict"] == "skipped"
    assert "bwt runs come in several settings with equally many runs" in c2a["reason"]


def test_claims_without_inputs_are_skipped(tmp_path):
    runs = [make_result(f"joint-s{s}", "joint", s, 0.5 + s / 100) for s in range(3)]
    found = findings_of(write_runs(tmp_path, runs))
    reasons = {c["id"]: c.get("reason") for c in found["claims"]}
    assert all(c["verdict"] == "skipped" for c in found["claims"])
    assert reasons["C2a"] == "no runs for it (no bwt runs)"
    assert reasons["C1"] == reasons["C3a"] == reasons["C4"] == "no runs for it"


def test_one_computation_counts_once(tmp_path):
    """random and fixed-order at the same seed and order, same R and entropy: one run."""
    runs = c3_runs("supported")
    deltas = {t: 0.05 if DOMAINS[t] == "open" else -0.10 for t in TASKS}  # as random-s0's
    twin = make_result("fixed-s0", "fixed-order", 0, 0.5, order=ORDERS[0], deltas=deltas)
    found = findings_of(write_runs(tmp_path, [*runs, twin]))
    for claim_id in ("C3a", "C3b"):
        c3 = claim(found, claim_id)
        # the first in path order counts (fixed-s0), its twin does not
        assert [r["run_id"] for r in c3["inputs"]["not_counted"]] == ["random-s0"]
        assert c3["n_runs"] == 3
    runs = c1_runs("supported")
    twin = make_result("random-s0", "random", 0, 0.50, order=ORDERS[0])
    found = findings_of(write_runs(tmp_path / "c1", [*runs, twin]))
    c1 = claim(found, "C1")
    assert [r["run_id"] for r in c1["inputs"]["not_counted"]] == ["random-s0"]
    assert c1["n_runs"] == 9


def test_c4_reads_validate_prediction_folders(tmp_path):
    folder = tmp_path / "validate-tiny-s0-st100"
    pairs = [(0.40, 0.41), (0.45, 0.46), (0.50, 0.49), (0.55, 0.56), (0.60, 0.61)]
    runs, rows = [], []
    for i, (p, m) in enumerate(pairs):
        run_id = "order-" + "-".join(ORDERS[i])
        runs.append(make_result(run_id, "fixed-order", 0, m, order=ORDERS[i]))
        rows.append({"order": ORDERS[i], "run_id": run_id, "predicted_acc": p, "measured_acc": m})
    write_runs(folder, runs)
    (folder / "validation.json").write_text(json.dumps({"track": "tiny", "orders": rows}))
    found = findings_of(tmp_path)  # a folder holding the validate-prediction folder
    c4 = claim(found, "C4")
    assert c4["verdict"] == "supported"
    assert len(c4["inputs"]["orders"]) == 5
    # the same folder named directly, or its validation.json: the same finding
    for source in (folder, folder / "validation.json"):
        again = build_findings(load_inputs([source]))
        assert claim(again, "C4")["effect"] == c4["effect"]


# --------------------------------------------------------------------------------- CLI


def full_runs() -> list[dict[str, Any]]:
    """Every claim has inputs; arms on different seeds (Welch's t)."""
    runs = c1_runs("supported") + c3_runs("supported") + c4_runs("supported")
    for name, first, accs in (
        ("joint", 20, [0.55, 0.56, 0.54]),
        ("merge", 30, [0.50, 0.52, 0.51]),
        ("chord", 40, [0.60, 0.58, 0.59]),
        ("sft_then_rl", 50, [0.62, 0.64, 0.63]),
    ):
        runs += [
            make_result(f"{name}-s{first + i}", name, first + i, a) for i, a in enumerate(accs)
        ]
    return runs


def test_cli_writes_md_json_html_and_rerun_replaces_them(tmp_path, capsys):
    runs_dir, out = write_runs(tmp_path / "runs", full_runs()), tmp_path / "boards"
    code, stdout, err = ctb(capsys, "findings", str(runs_dir), "--out", str(out))
    assert code == 0, err
    paths = [out / f"tiny-findings.{ext}" for ext in ("md", "json", "html")]
    assert stdout.splitlines()[-3:] == [str(p) for p in paths]  # after the table
    found = json.loads(paths[1].read_text())
    check_by_rule(found)
    assert {c["id"] for c in found["claims"] if c["verdict"] != "skipped"} == {
        "C1",
        "C2a",
        "C2b",
        "C3a",
        "C3b",
        "C4",
        "C5",
    }
    markdown, page = paths[0].read_text(), paths[2].read_text()
    assert "| claim | test | effect [95% CI] | seeds/runs | verdict |" in markdown
    assert "hash `hash-a`" in markdown and f"{found['n_runs']} runs read" in markdown
    assert "+6.2%" in markdown and "+12.4%" in markdown
    for c in found["claims"]:
        assert f"**{c['verdict']}**" in markdown
        assert c["inputs"] and c["id"] in page
    assert page.count('class="claim"') == 7 and "http" not in page.replace("<!doctype html>", "")
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]

    # Re-running on other runs replaces all three files.
    (runs_dir / "joint-s20" / "result.json").unlink()
    (runs_dir / "joint-s20").rmdir()
    code, _, err = ctb(capsys, "findings", str(runs_dir), "--out", str(out))
    assert code == 0, err
    again = json.loads(paths[1].read_text())
    assert again["n_runs"] == found["n_runs"] - 1
    assert claim(again, "C2a")["verdict"] == "inconclusive (too few runs)"
    assert "inconclusive (too few runs)" in paths[0].read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)


def test_a_failed_write_leaves_the_previous_files_whole(tmp_path, capsys, monkeypatch):
    runs_dir, out = write_runs(tmp_path / "runs", c2_runs("C2b", "supported")), tmp_path / "o"
    assert ctb(capsys, "findings", str(runs_dir), "--out", str(out))[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ctbench.common.atomic.os.replace", crash)
    code, _, err = ctb(capsys, "findings", str(runs_dir), "--out", str(out))
    assert code == 2 and "Traceback" not in err and "--out" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files either


def test_mixed_track_hashes_are_refused_in_one_line(tmp_path, capsys):
    runs = [
        make_result("bwt-s0", "bwt", 0, 0.5),
        make_result("joint-s0", "joint", 0, 0.5, track_hash="hash-b"),
    ]
    out = tmp_path / "out"
    code, stdout, err = ctb(
        capsys, "findings", str(write_runs(tmp_path / "r", runs)), "--out", str(out)
    )
    assert code == 2 and "Traceback" not in err and not stdout
    assert "hash-a" in err and "hash-b" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda r: r["metrics"].update(acc=0.99), "content hash mismatch"),
        (lambda r: r.pop("entropy"), "entropy.token is missing"),
    ],
)
def test_an_edited_or_foreign_result_is_refused(tmp_path, capsys, change, fragment):
    result = make_result("bwt-s0", "bwt", 0, 0.5)
    change(result)
    code, _, err = ctb(
        capsys, "findings", str(write_runs(tmp_path, [result])), "--out", str(tmp_path / "o")
    )
    assert code == 2 and fragment in err and "result.json" in err


def test_other_track_and_bad_validation_are_refused(tmp_path, capsys):
    runs_dir = write_runs(tmp_path / "r", c2_runs("C2b", "supported"))
    code, _, err = ctb(capsys, "findings", str(runs_dir), "--track", "smol")
    assert code == 2 and "'tiny', not 'smol'" in err
    folder = tmp_path / "validate"
    write_runs(folder, [make_result("order-a", "fixed-order", 0, 0.5, order=ORDERS[0])])
    row = {"order": ORDERS[0], "run_id": "order-a", "predicted_acc": 0.4, "measured_acc": 0.6}
    (folder / "validation.json").write_text(json.dumps({"orders": [row]}))
    code, _, err = ctb(capsys, "findings", str(folder), "--out", str(tmp_path / "o"))
    assert code == 2 and "is not its run's metrics.acc" in err


def test_differing_budgets_are_a_warning_line(tmp_path):
    runs = c2_runs("C2b", "supported")
    runs[0] = make_result("bwt-s0", "bwt", 0, 0.60, budget=300)
    found = findings_of(write_runs(tmp_path, runs))
    assert any(w.startswith("C2b: budgets differ") for w in found["warnings"])
    from ctbench.results.findings import render_markdown

    assert "**Warning:** C2b: budgets differ among its runs: 300 steps (1 runs)" in (
        render_markdown(found)
    )


def test_findings_beside_a_leaderboard_become_a_section_of_its_page(tmp_path, capsys):
    """``ctbench findings --out <leaderboard dir>`` re-renders the board's .md and .html with
    the claims table; findings of another track hash are named, not shown."""
    published = json.loads((REPO / "leaderboards" / "tiny.json").read_text())
    out = tmp_path / "boards"
    out.mkdir()
    board = {**published, "track": {**published["track"], "hash": "hash-a"}}
    (out / "tiny.json").write_text(json.dumps(board))
    runs_dir = write_runs(tmp_path / "runs", full_runs())
    code, stdout, err = ctb(capsys, "findings", str(runs_dir), "--out", str(out))
    assert code == 0, err
    assert stdout.splitlines()[-1] == str(out / "tiny.html")
    found = json.loads((out / "tiny-findings.json").read_text())
    page, markdown = (out / "tiny.html").read_text(), (out / "tiny.md").read_text()
    assert page.count('<section id="findings">') == 1 and page.count('class="claim"') == 7
    assert 'href="tiny-findings.html"' in page
    assert "## Findings" in markdown and "(tiny-findings.md)" in markdown
    for c in found["claims"]:
        assert f"**{c['verdict']}**" in markdown
    assert page.count('class="entry"') == len(published["entries"])  # the board is whole

    # The same findings beside a board of another track hash: named, not shown.
    (out / "tiny.json").write_text(json.dumps(published))
    code, _, err = ctb(capsys, "leaderboard", "render", "--track", "tiny", "--dir", str(out))
    assert code == 0, err
    page = (out / "tiny.html").read_text()
    assert 'class="claim"' not in page and "not this board's" in page
    assert "## Findings" not in (out / "tiny.md").read_text()


def test_the_published_tiny_findings_follow_the_rule_and_sit_in_the_board():
    """leaderboards/tiny-findings.json: every verdict from its own numbers by the rule, of the
    published board's track hash, and shown on the board's page and Markdown."""
    folder = REPO / "leaderboards"
    found = json.loads((folder / "tiny-findings.json").read_text())
    check_by_rule(found)
    board = json.loads((folder / "tiny.json").read_text())
    assert found["track"]["hash"] == board["track"]["hash"]
    page, markdown = (folder / "tiny.html").read_text(), (folder / "tiny.md").read_text()
    assert page.count('class="claim"') == len(found["claims"])
    for c in found["claims"]:
        assert f"**{c['verdict']}**" in markdown or c["verdict"] == "skipped"
