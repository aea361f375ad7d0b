"""The CLI's commands end to end on the tiny track at tiny budgets, through ``ctbench``'s
entry point (in this process: see ``tests/cli_runner.py``).

One workspace is shared by the module: ``transfer`` measures Δ, ``predict`` reads it,
``validate-prediction`` runs two orders (first in process with a hand-made Δ, then through
the CLI, which reuses the finished order runs), ``compare`` runs a small grid, ``submit``
makes a bundle, and ``leaderboard build``/``render`` publish both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from cli_runner import Outcome, invoke

from ctbench.results.validation import validate_prediction
from ctbench.runs.evaluate import distinct_entropy
from ctbench.runs.run import SilentObserver
from ctbench.strategies.transfer import TransferMatrix, best_order

TASKS = ("math", "code", "qa", "creative")
MATH_ONLY = """
from ctbench.strategy import Stage, Strategy

class MathOnly(Strategy):
    '''One RL stage on math.'''

    name = "math-only"

    def schedule(self, ctx):
        yield Stage(mixture={"math": 1.0}, steps=ctx.budget, name="math")
"""


def ctbench(*args: str, cwd: Path) -> Outcome:
    """A command that must succeed, run in this process (``tests/cli_runner.py``: a real
    process would pay torch's import on every call; the SIGKILL tests keep real ones)."""
    proc = invoke(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


def last_line(proc: Outcome) -> Path:
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


# --------------------------------------------------------------------------- no runs
def test_distinct_entropy_by_hand():
    assert distinct_entropy(["a", "a", "b", "b"]) == pytest.approx(math.log(2))
    assert distinct_entropy(["a", "b", "c", "d"]) == pytest.approx(math.log(4))
    assert distinct_entropy(["x"] * 5) == 0.0
    assert distinct_entropy(["a", "a", "a", "b"]) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    )


def test_base_shows_the_shipped_checkpoint(workspace):
    from ctbench.tracks.track import load_track
    from ctbench.training.tiny_base import shipped_checkpoint_dir

    shipped = shipped_checkpoint_dir(load_track("tiny"))
    assert shipped is not None
    report = json.loads((shipped / "base_report.json").read_text())
    out = ctbench("base", "--track", "tiny", cwd=workspace).stdout
    assert f"base checkpoint: {shipped}" in out
    assert f"pre-training steps: {report['steps']}" in out
    assert not (workspace / "runs").exists()  # showing the base trains nothing


# ------------------------------------------------------------- transfer and predict
@pytest.fixture(scope="module")
def transfer_path(workspace) -> Path:
    proc = ctbench("transfer", "--probe-steps", "1", "--seed", "0", "--out", "runs", cwd=workspace)
    return workspace / last_line(proc)


@pytest.mark.slow
def test_transfer_measures_delta_from_its_probes(transfer_path):
    result = json.loads(transfer_path.read_text())
    transfer = result["strategy"]["report"]["transfer"]
    base = result["matrix"]["R"][0]
    probes = [b for b in result["branches"] if b["probe"]]
    assert [p["tasks"] for p in probes] == [[t] for t in TASKS]
    assert result["budget"]["probe_steps"] == 4 == result["compute"]["probe"]["optimizer_steps"]
    for i, probe in enumerate(probes):  # Δ[i][j] = probe i's score on j − base score on j
        assert transfer["delta"][i] == pytest.approx([probe["R"][j] - base[j] for j in range(4)])
    assert transfer["base"] == pytest.approx(base)


@pytest.mark.slow
def test_predict_prints_the_additive_prediction(workspace, transfer_path):
    transfer = json.loads(transfer_path.read_text())["strategy"]["report"]["transfer"]
    delta, base = transfer["delta"], transfer["base"]
    order = ["code", "math", "creative", "qa"]
    index = [TASKS.index(t) for t in order]
    # a*_π(m) + Σ_{l>m} Δ[π(l)][π(m)], worked out here from the recorded numbers
    predicted = {
        TASKS[j]: base[j] + delta[j][j] + sum(delta[later][j] for later in index[m + 1 :])
        for m, j in enumerate(index)
    }
    out = ctbench("predict", "--order", ",".join(order), cwd=workspace).stdout  # newest Δ
    acc_line = next(line for line in out.splitlines() if line.startswith("predicted ACC"))
    assert float(acc_line.split()[-1]) == pytest.approx(sum(predicted.values()) / 4, abs=1e-4)
    for task, value in predicted.items():
        assert any(
            line.split()[:1] == [task] and line.split()[-1] == f"{value:.3f}"
            for line in out.replace("│", " ").splitlines()
        ), task
    best, search = best_order(TransferMatrix.from_json(transfer))
    assert f"best predicted order ({search}): {','.join(best)}" in out


# ------------------------------------------------------------------ validate-prediction
HAND_DELTA = TransferMatrix(
    tasks=TASKS,
    delta=(
        (0.30, -0.10, 0.00, 0.05),
        (0.05, 0.20, -0.05, 0.00),
        (0.00, 0.10, 0.25, -0.20),
        (-0.15, 0.00, 0.10, 0.40),
    ),
    base=(0.40, 0.40, 0.30, 0.30),
)


@pytest.fixture(scope="module")
def validation(workspace) -> dict:
    return validate_prediction(
        track="tiny",
        seed=0,
        orders=2,
        transfer=HAND_DELTA,
        transfer_source="hand-made",
        stage_steps=1,
        out=workspace / "runs",
        observer=SilentObserver(),
    )


def _pearson_of_centred(x: list[float], y: list[float]) -> float:
    """Both sides already have mean 0 (every task centred), so r = Σxy / √(Σx² Σy²)."""
    sxy = sum(a * b for a, b in zip(x, y, strict=True))
    return sxy / math.sqrt(sum(a * a for a in x) * sum(b * b for b in y))


@pytest.mark.slow
def test_validate_prediction_against_hand_made_delta(validation, workspace):
    rows = validation["orders"]
    assert len(rows) == 2 and rows[0]["order"] != rows[1]["order"]
    a_star = [HAND_DELTA.base[j] + HAND_DELTA.delta[j][j] for j in range(4)]
    for row in rows:
        index = [TASKS.index(t) for t in row["order"]]
        for m, j in enumerate(index):
            later = sum(HAND_DELTA.delta[k][j] for k in index[m + 1 :])
            assert row["predicted"][TASKS[j]] == pytest.approx(a_star[j] + later)
        folder = Path(validation["path"]).parent / row["run_id"]
        result = json.loads((folder / "result.json").read_text())
        assert row["measured"] == dict(zip(TASKS, result["matrix"]["R"][-1], strict=True))
        assert [s["tasks"] for s in result["stages"]] == [[t] for t in row["order"]]
    # Task-centring: each task's mean over the orders is subtracted on both sides.
    pred, meas = [], []
    for task in TASKS:
        p = [row["predicted"][task] for row in rows]
        m = [row["measured"][task] for row in rows]
        pred += [v - sum(p) / 2 for v in p]
        meas += [v - sum(m) / 2 for v in m]
    centred = validation["per_task_final_centred"]
    assert centred["n"] == 8
    assert centred["pearson"] == pytest.approx(_pearson_of_centred(pred, meas))
    pooled = validation["per_task_final"]
    pooled_pred = [row["predicted"][t] for row in rows for t in TASKS]
    pooled_meas = [row["measured"][t] for row in rows for t in TASKS]
    mx, my = sum(pooled_pred) / 8, sum(pooled_meas) / 8
    assert pooled["pearson"] == pytest.approx(
        _pearson_of_centred([v - mx for v in pooled_pred], [v - my for v in pooled_meas])
    )
    assert pooled["pearson"] != pytest.approx(centred["pearson"])  # centring changed it
    assert validation["per_order_acc"]["reason"] == "fewer than 3 points"


@pytest.mark.slow
def test_validate_prediction_cli_reuses_the_finished_orders(validation, workspace, transfer_path):
    finished = {
        row["run_id"]: json.loads(
            (Path(validation["path"]).parent / row["run_id"] / "result.json").read_text()
        )["timestamps"]
        for row in validation["orders"]
    }
    proc = ctbench(
        "validate-prediction",
        "--orders", "2",
        "--stage-steps", "1",
        "--transfer", str(transfer_path),
        "--out", "runs",
        cwd=workspace,
    )  # fmt: skip
    report = json.loads((workspace / last_line(proc)).read_text())
    assert report["transfer_source"] == str(transfer_path)
    measured = [r["measured"] for r in validation["orders"]]
    assert [r["measured"] for r in report["orders"]] == measured
    for run_id, stamps in finished.items():  # the order runs were not run again
        folder = Path(validation["path"]).parent / run_id
        assert json.loads((folder / "result.json").read_text())["timestamps"] == stamps
    assert "each task centred (order effect only): Pearson" in proc.stdout
    assert (Path(validation["path"]).parent / "plots").is_dir()


# --------------------------------------------------- compare, submit, leaderboard
@pytest.fixture(scope="module")
def compare_dir(workspace) -> Path:
    proc = ctbench(
        "compare", "--strategies", "joint", "--seeds", "0,1", "--budget", "1",
        "--bootstrap", "200", "--out", "runs",
        cwd=workspace,
    )  # fmt: skip
    summary = workspace / last_line(proc)
    assert summary.name == "compare.json" and "joint" in proc.stdout
    return summary.parent


@pytest.fixture(scope="module")
def bundle(workspace) -> Path:
    (workspace / "math_only.py").write_text(MATH_ONLY)
    proc = ctbench(
        "submit", "math_only.py:MathOnly", "--seeds", "0,1", "--budget", "1",
        "--out", "submissions",
        cwd=workspace,
    )  # fmt: skip
    path = workspace / last_line(proc)
    entry = json.loads((path / "manifest.json").read_text())["entry"]
    assert f"math-only: ACC {entry['metrics']['acc']['mean']:.3f}" in proc.stdout
    return path


@pytest.mark.slow
def test_compare_summarises_its_grid(compare_dir):
    summary = json.loads((compare_dir / "compare.json").read_text())
    results = sorted(compare_dir.glob("*/result.json"))
    accs = [json.loads(p.read_text())["metrics"]["acc"] for p in results]
    assert len(accs) == 2
    (row,) = summary["rows"]
    assert row["strategy"] == "joint" and row["acc"]["n_seeds"] == 2
    assert row["acc"]["mean"] == pytest.approx(sum(accs) / 2)
    assert row["optimizer_steps"] == 1


@pytest.mark.slow
def test_submit_then_leaderboard_build_and_render(workspace, compare_dir, bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["seeds"] == [0, 1] and (bundle / "strategy" / "math_only.py").exists()
    proc = ctbench(
        "leaderboard",
        "build",
        "--track",
        "tiny",
        "--budget",
        "1",
        "--bootstrap",
        "200",
        "--out",
        "boards",
        str(compare_dir),
        str(bundle / "runs"),
        cwd=workspace,
    )  # fmt: skip  (the bundle's own re-check is the submission tests' business)
    board = json.loads((workspace / last_line(proc)).read_text())
    joint = [json.loads(p.read_text())["metrics"]["acc"] for p in compare_dir.glob("*/result.json")]
    means = {"joint": sum(joint) / 2, "math-only": manifest["entry"]["metrics"]["acc"]["mean"]}
    assert [e["strategy"] for e in board["entries"]] == sorted(means, key=lambda k: -means[k])
    for entry in board["entries"]:
        assert entry["n_seeds"] == 2
        assert entry["metrics"]["acc"]["mean"] == pytest.approx(means[entry["strategy"]])
    rendered = ctbench("leaderboard", "render", "--track", "tiny", "--dir", "boards", cwd=workspace)
    markdown, page = (workspace / line for line in rendered.stdout.split())
    assert (markdown.name, page.name) == ("tiny.md", "tiny.html")
    for rank, entry in enumerate(board["entries"], start=1):
        assert f"| {rank} | `{entry['strategy']}` v" in markdown.read_text()
    assert page.read_text().count('<tr class="entry">') == 2
