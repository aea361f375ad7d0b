"""The six reference strategies and the plugin API, on the tiny track with real training.

Each strategy runs from the same ``Run`` a user starts, on a small budget: real model,
real rollouts, real mergekit merges, real files.
"""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import pytest
from cli_runner import invoke
from killpoints import killed_at, run_files
from small_tiny import small_tiny_track

from ctbench.errors import UserError
from ctbench.runs.config import RunConfig
from ctbench.runs.run import Run, SilentObserver
from ctbench.strategies.plugins import resolve_strategy
from ctbench.strategies.transfer import TransferMatrix, best_order
from ctbench.strategy import BudgetExceeded, StrategyFailed

BUDGET = 8
REFERENCE = ("joint", "random", "merge", "bwt", "sft_then_rl", "chord", "chord-mu")


class Interrupt(Exception):
    pass


class InterruptAt(SilentObserver):
    def __init__(self, item: int) -> None:
        self.item, self.current = item, 0

    def stage_started(self, index, stage) -> None:
        self.current = index

    def step_done(self, log) -> None:
        if self.current == self.item:
            raise Interrupt()


def deterministic_part(result: dict) -> dict:
    out = {
        k: v for k, v in result.items() if k not in ("run_id", "timestamps", "env", "result_hash")
    }
    out["compute"] = {
        phase: {k: v for k, v in values.items() if k != "wall_s"}
        for phase, values in result["compute"].items()
    }
    return out


RUN_DIRS: dict[str, Path] = {}  # the folders of the `results` runs


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("strategies")
    made = {}
    for name in REFERENCE:
        run = Run.create(
            RunConfig(track=small_tiny_track(), strategy=name, seed=0, budget=BUDGET),
            out,
            SilentObserver(),
        )
        made[name] = run.execute()
        RUN_DIRS[name] = run.dir
    return made


@pytest.mark.slow
@pytest.mark.parametrize("name", REFERENCE)
def test_every_reference_strategy_runs_within_the_budget(results, name):
    result = results[name]
    assert result["strategy"]["name"] == name
    assert result["budget"]["spent_steps"] <= BUDGET
    steps = sum(p["optimizer_steps"] for p in result["compute"].values())
    assert steps == result["budget"]["spent_steps"]
    assert len(result["matrix"]["R"]) >= 2 and 0.0 <= result["metrics"]["acc"] <= 1.0
    assert result["strategy"]["source_hash"] and result["config_hash"]


@pytest.mark.slow
def test_merge_keeps_branch_rows_and_reports_merge_loss(results):
    result = results["merge"]
    assert [b["name"] for b in result["branches"]] == result["tasks"]
    assert all(len(b["tasks"]) == 1 and len(b["R"]) == 4 for b in result["branches"])
    assert result["stages"][-1]["kind"] == "merge" and result["stages"][-1]["method"] == "ties"
    assert len(result["matrix"]["R"]) == 2  # base, merged model
    final = result["matrix"]["R"][-1]
    expected = [final[j] - result["branches"][j]["R"][j] for j in range(4)]
    assert result["metrics"]["merge_loss_per_task"] == pytest.approx(expected)
    assert result["compute"]["merge"]["wall_s"] > 0


@pytest.mark.slow
def test_bwt_records_transfer_order_predictions_and_probe_compute(results):
    result = results["bwt"]
    report = result["strategy"]["report"]
    probes = [b for b in result["branches"] if b["probe"]]
    assert len(probes) == 4 and result["budget"]["probe_steps"] == 4
    assert result["compute"]["probe"]["optimizer_steps"] == 4
    base = result["matrix"]["R"][0]
    for i, probe in enumerate(probes):  # Δ[i][j] = probe_i score on j − base score on j
        assert report["transfer"]["delta"][i] == pytest.approx(
            [probe["R"][j] - base[j] for j in range(4)]
        )
    assert sorted(report["order"]) == sorted(result["tasks"])
    # The order is the search's best order of the very Δ the run recorded.
    recorded = TransferMatrix.from_json(report["transfer"])
    assert best_order(recorded, "auto") == (report["order"], report["search"])
    main = [s["name"] for s in result["stages"] if not s["probe"]]
    assert main == report["order"]
    assert set(report["predicted_final"]) == set(result["tasks"])
    assert len(result["matrix"]["R"]) == 5  # probes stay out of the main line's matrix


@pytest.mark.slow
def test_sft_then_rl_records_both_objectives(results):
    stages = results["sft_then_rl"]["stages"]
    assert [(s["objective"], s["steps"]) for s in stages] == [("sft", 2), ("rl", 6)]


@pytest.mark.slow
def test_chord_records_the_mu_trace(results):
    phi = results["chord"]["stages"][0]
    assert phi["objective"] == "blend" and phi["trace"]["mu"] == [0.1] * BUDGET
    assert phi["hparams"]["phi"] is True
    mu = results["chord-mu"]["stages"][0]["trace"]["mu"]
    assert mu[0] == pytest.approx(0.9) and mu[-1] == pytest.approx(0.05)
    assert all(a >= b for a, b in itertools.pairwise(mu))


@pytest.mark.slow
def test_bwt_resumes_after_an_interrupted_probe(results, tmp_path):
    run = Run.create(
        RunConfig(track=small_tiny_track(), strategy="bwt", seed=0, budget=BUDGET),
        tmp_path,
        InterruptAt(3),
    )
    with pytest.raises(Interrupt):
        run.execute()
    resumed = Run.resume(run.dir, SilentObserver()).execute()
    assert deterministic_part(resumed) == deterministic_part(results["bwt"])


@pytest.mark.slow
def test_merge_resumes_with_its_kept_branches(results, tmp_path):
    run = Run.create(
        RunConfig(track=small_tiny_track(), strategy="merge", seed=0, budget=BUDGET),
        tmp_path,
        InterruptAt(4),
    )
    with pytest.raises(Interrupt):
        run.execute()
    assert len(json.loads((run.dir / "state.json").read_text())["kept"]) == 3
    resumed = Run.resume(run.dir, SilentObserver()).execute()
    assert deterministic_part(resumed) == deterministic_part(results["merge"])


@pytest.mark.slow
def test_merge_killed_during_its_merge_resumes_to_the_same_run(results, tmp_path):
    """SIGKILL after mergekit wrote the merged model and before the run loaded it: the resumed
    run merges again (DARE/TIES seeds derive from the run seed) and ends with the numbers and
    the files of the uninterrupted run, leaving no staging folder behind."""
    out = tmp_path / "out"
    args = ["run", "--track", small_tiny_track(), "--strategy", "merge", "--seed", "0"]
    args += ["--budget", str(BUDGET)]
    killed_at("merge", 1, [*args, "--out", str(out)], tmp_path)
    (run_dir,) = out.iterdir()
    assert len(json.loads((run_dir / "state.json").read_text())["kept"]) == 4
    assert not (run_dir / "result.json").exists()
    proc = invoke("run", "--resume", str(run_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    resumed = json.loads((run_dir / "result.json").read_text())
    assert deterministic_part(resumed) == deterministic_part(results["merge"])
    assert run_files(run_dir) == run_files(RUN_DIRS["merge"])


# ------------------------------------------------------------------------ parameters
def test_params_are_typed_from_defaults_and_recipes():
    merge = resolve_strategy("merge").instantiate({"density": 1, "method": "linear"})
    assert merge.params == {"density": 1.0, "method": "linear", "weights": []}
    assert isinstance(merge.params["density"], float)


def test_param_checks_name_the_parameter():
    with pytest.raises(UserError, match="parameter probe_share: expected float, got 'abc'"):
        resolve_strategy("bwt").instantiate({"probe_share": "abc"})
    with pytest.raises(UserError, match="search must be one of"):
        resolve_strategy("bwt").instantiate({"search": "magic"})
    merge = resolve_strategy("merge").instantiate({"weights": "1,2,1,1"})
    assert merge.params["weights"] == ["1", "2", "1", "1"]


def test_stage_hparams_are_checked_by_the_engine(tmp_path):
    bad = tmp_path / "bad_hparams.py"
    bad.write_text(
        textwrap.dedent(
            """
            from ctbench.strategy import Stage, Strategy

            class Bad(Strategy):
                name = "bad-hparams"

                def schedule(self, ctx):
                    yield Stage(mixture={"math": 1.0}, steps=1, hparams={"mu_peak": 0.5})
            """
        )
    )
    run = Run.create(
        RunConfig(track=small_tiny_track(), strategy=f"{bad}:Bad", budget=2),
        tmp_path / "out",
        SilentObserver(),
    )
    with pytest.raises(UserError, match="unknown stage hyper-parameter 'mu_peak'"):
        run.execute()


# --------------------------------------------------------------------------- plugins
PLUGIN = """
from ctbench.strategy import Stage, Strategy

class OneStage(Strategy):
    '''One RL stage on math, for plugin tests.'''

    name = "one-stage"
    defaults = {"steps": 1}

    def schedule(self, ctx):
        yield Stage(mixture={"math": 1.0}, steps=self.params["steps"], name="only")
"""


@pytest.mark.slow
def test_plugin_from_an_entry_point(tmp_path, monkeypatch):
    """A package that declares ``[project.entry-points."ctbench.strategies"]`` is found by
    name: here a real dist-info folder on sys.path, as pip would install it."""
    import importlib

    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "my_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[ctbench.strategies]\nmy-one-stage = my_plugin:OneStage\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    resolved = resolve_strategy("my-one-stage")
    assert resolved.cls.__name__ == "OneStage" and resolved.origin == "entry point my-one-stage"
    result = Run.create(
        RunConfig(track=small_tiny_track(), strategy="my-one-stage", budget=1),
        tmp_path / "out",
        SilentObserver(),
    ).execute()
    assert result["strategy"]["name"] == "my-one-stage" and result["budget"]["spent_steps"] == 1


def test_ctbench_own_instruments_are_entry_points():
    assert resolve_strategy("fixed-order").origin == "entry point fixed-order"
    assert resolve_strategy("transfer-probes").cls.name == "transfer-probes"


def test_plugin_from_a_file_and_a_recipe(tmp_path):
    (tmp_path / "one.py").write_text(PLUGIN)
    (tmp_path / "recipe.yaml").write_text("strategy: one.py:OneStage\nparams: {steps: 2}\n")
    resolved = resolve_strategy(str(tmp_path / "recipe.yaml"))
    assert resolved.params == {"steps": 2} and resolved.name == "recipe"
    assert resolve_strategy(f"{tmp_path / 'one.py'}:OneStage").cls is resolved.cls


@pytest.mark.parametrize(
    ("source", "ref", "message"),
    [
        (PLUGIN, "Missing", "no class named 'Missing' in that file"),
        (
            PLUGIN.replace("def schedule(self, ctx)", "def schedule(self)"),
            "OneStage",
            "OneStage.schedule must take (self, ctx), it takes (self)",
        ),
        ("import not_a_module_anywhere\n", "X", "importing the strategy failed: ModuleNotFound"),
        (PLUGIN.replace("name = ", "label = "), "OneStage", "must set a class attribute name"),
    ],
)
def test_bad_plugins_are_refused_before_a_run_folder_exists(tmp_path, source, ref, message):
    path = tmp_path / "plugin.py"
    path.write_text(source)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Run.create(
            RunConfig(track=small_tiny_track(), strategy=f"{path}:{ref}"),
            tmp_path / "out",
            SilentObserver(),
        )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_report_with_nan_is_refused_when_it_is_made(tmp_path):
    """result.json is written without NaN: a NaN in ctx.report is the strategy's error at
    once, not a run that can never write its result."""
    from types import SimpleNamespace

    from ctbench.strategy import StrategyFailed

    fake = SimpleNamespace(_where=lambda: "strategy x")
    Run._check_report(fake, {"fine": [1.0, None, "a"]})
    for bad in (float("nan"), {"deep": [float("inf")]}):
        with pytest.raises(StrategyFailed, match=r"ctx.report\['x'\] cannot be written as JSON"):
            Run._check_report(fake, {"x": bad})


def test_a_resumed_folder_is_kept_when_its_strategy_fails_before_any_item(tmp_path):
    """Only a folder made by this very run is removed when its strategy fails at once; a
    resumed one (it may hold a judge's paid verdicts) is marked failed and kept."""
    from ctbench.strategy import StrategyFailed

    path = tmp_path / "crash.py"
    path.write_text(PLUGIN.replace("yield Stage", "1 / 0\n        yield Stage"))
    config = RunConfig(track=small_tiny_track(), strategy=f"{path}:OneStage", budget=2)
    made = Run.create(config, tmp_path / "out", SilentObserver())  # a folder, never run
    (made.dir / "keep-me.txt").write_text("earlier work")
    with pytest.raises(StrategyFailed, match="division by zero"):
        Run.resume(made.dir, SilentObserver()).execute()
    assert (made.dir / "keep-me.txt").exists() and (made.dir / "failed.json").exists()


def test_one_process_per_run_folder(tmp_path):
    import fcntl

    made = Run.create(
        RunConfig(track=small_tiny_track(), strategy="joint", budget=1), tmp_path, SilentObserver()
    )
    with open(made.dir / "config.json", "rb") as held:  # as a running process holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another ctbench process is running this folder"):
            Run.resume(made.dir, SilentObserver()).execute()
    assert not (made.dir / "state.json").exists()  # it touched nothing


def test_a_resume_on_a_changed_track_is_refused(tmp_path):
    """state.json records the track's hash: a resume on another track content is refused."""
    from ctbench.training.compute import ComputeMeter

    made = Run.create(
        RunConfig(track=small_tiny_track(), strategy="joint", budget=1), tmp_path, SilentObserver()
    )
    state = {
        "started": "2026-01-01T00:00:00+00:00",
        "meter": ComputeMeter().to_json(),
        "rows": [],
        "items": [],
        "main": None,
        "kept": {},
        "inputs": {"track_hash": "f" * 64, "strategy_source_hash": made.resolved.source_hash()},
    }
    (made.dir / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match=r"the track \(its tasks, base model or recipe\) changed"):
        Run.resume(made.dir, SilentObserver()).execute()


def test_exception_inside_schedule_leaves_no_partial_result(tmp_path):
    path = tmp_path / "crash.py"
    path.write_text(PLUGIN.replace("yield Stage", "1 / 0\n        yield Stage"))
    proc = invoke(
        "run", "--strategy", f"{path}:OneStage", "--budget", "2", "--out", "out", cwd=tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "schedule() raised ZeroDivisionError: division by zero" in " ".join(proc.stderr.split())
    assert not any((tmp_path / "out").iterdir())


def test_unknown_start_and_duplicate_branch_names_are_refused(tmp_path):
    path = tmp_path / "branches.py"
    path.write_text(
        PLUGIN.replace(
            'yield Stage(mixture={"math": 1.0}, steps=self.params["steps"], name="only")',
            'yield Stage(mixture={"math": 1.0}, steps=1, start="nowhere", name="x")',
        )
    )
    run = Run.create(
        RunConfig(track=small_tiny_track(), strategy=f"{path}:OneStage", budget=2),
        tmp_path,
        SilentObserver(),
    )
    with pytest.raises(StrategyFailed, match="starts from 'nowhere'"):
        run.execute()


def test_probe_budget_overrun_is_refused(tmp_path):
    path = tmp_path / "overrun.py"
    path.write_text(
        PLUGIN.replace(
            'yield Stage(mixture={"math": 1.0}, steps=self.params["steps"], name="only")',
            'yield Stage(mixture={"math": 1.0}, steps=ctx.budget, probe=True, name="p")\n'
            '        yield Stage(mixture={"qa": 1.0}, steps=1, name="q")',
        )
    )
    run = Run.create(
        RunConfig(track=small_tiny_track(), strategy=f"{path}:OneStage", budget=2),
        tmp_path,
        SilentObserver(),
    )
    with pytest.raises(BudgetExceeded, match="asks for 1 steps but only 0 of the budget of 2"):
        run.execute()
    assert not (run.dir / "result.json").exists()


@pytest.mark.slow
def test_example_submission_runs(tmp_path):
    example = Path(__file__).resolve().parent.parent / "examples" / "entropy_order.py"
    assert len(example.read_text().splitlines()) < 80
    result = Run.create(
        RunConfig(track=small_tiny_track(), strategy=f"{example}:EntropyOrder", budget=8),
        tmp_path,
        SilentObserver(),
    ).execute()
    report = result["strategy"]["report"]
    structured = sorted(report["entropy_drop"], key=lambda t: -report["entropy_drop"][t])
    assert sorted(structured) == ["code", "math", "qa"]
    assert report["order"] == [*structured, "creative"]


@pytest.mark.slow
def test_readme_strategy_example_runs(tmp_path):
    """The strategy the README shows a submitter is real code: it loads and runs."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Writing and submitting a strategy", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "mine.py").write_text(code)
    result = Run.create(
        RunConfig(
            track=small_tiny_track(), strategy=f"{tmp_path / 'mine.py'}:StructuredFirst", budget=4
        ),
        tmp_path / "out",
        SilentObserver(),
    ).execute()
    assert result["strategy"]["report"]["order"] == ["math", "code", "qa", "creative"]


@pytest.mark.slow
def test_mixed_rl_steps_record_each_tasks_entropy(results):
    """A joint batch mixes tasks; the trace keeps each task's own sampled-token entropy, and
    the batch mean lies within the per-task range (it is their token-weighted mean)."""
    trace = results["joint"]["stages"][0]["trace"]
    for overall, by_task in zip(trace["entropy"], trace["entropy_by_task"], strict=True):
        assert set(by_task) <= {"math", "code", "qa", "creative"} and len(by_task) >= 2
        assert min(by_task.values()) - 1e-6 <= overall <= max(by_task.values()) + 1e-6


@pytest.mark.slow
def test_plot_data_carries_what_each_strategy_measured(results):
    """bwt's figures include Δ and predicted-vs-measured; merge's R shows its branches;
    the step-entropy series has one point per main-line RL step (binned)."""
    from ctbench.results.plots import figures, plot_data

    bwt = plot_data(results["bwt"])
    assert len(bwt["transfer"]["delta"]) == 4 and len(bwt["prediction"]) == 4
    assert {p["measured"] for p in bwt["prediction"]} == set(results["bwt"]["matrix"]["R"][-1])
    assert set(figures(bwt)) == {
        *("r_heatmap", "forgetting", "items", "entropy", "transfer", "prediction"),
    }
    merge = plot_data(results["merge"])
    assert len(merge["branches"]) == 4 and "transfer" not in merge
    assert "forgetting" not in figures(merge)  # one merge: nothing could be forgotten
    joint = plot_data(results["joint"])
    assert len(joint["step_entropy"]["x"]) == BUDGET
    assert all(v is not None for v in joint["step_entropy"]["per_task"]["creative"])
