"""The ``ctbench`` command line (click). User mistakes exit 2 with one clear line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ctbench import __version__
from ctbench.errors import UserError

console = Console(stderr=True)


class RichObserver:
    """Progress bars for base preparation, stages and steps."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.base_bar = None
        self.step_bar = None
        self.last_reward: float | None = None

    def base_progress(self, step: int, total: int, dev: dict[str, float]) -> None:
        if self.base_bar is None:
            self.base_bar = self.progress.add_task("preparing base model", total=total)
        scores = " ".join(f"{k}={v:+.2f}" for k, v in dev.items())
        self.progress.update(
            self.base_bar, completed=step, description=f"base model (dev {scores})"
        )

    def stage_started(self, index: int, stage) -> None:
        if self.base_bar is not None:
            self.progress.update(self.base_bar, completed=self.progress.tasks[self.base_bar].total)
        label = f"stage {index} {stage.objective} [{', '.join(stage.tasks)}]"
        if self.step_bar is not None:
            self.progress.remove_task(self.step_bar)
        self.step_bar = self.progress.add_task(label, total=stage.steps)

    def step_done(self, log) -> None:
        if self.step_bar is not None:
            self.progress.advance(self.step_bar)

    def stage_finished(self, index: int, row) -> None:
        scores = "  ".join(f"{name} {e.score:.3f}" for name, e in row.items())
        self.progress.console.print(f"  after stage {index}: {scores}")

    def note(self, message: str) -> None:
        self.progress.console.print(message)


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    params: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"expected key=value, got {pair!r}", where="--param")
        key, value = pair.split("=", 1)
        params[key.strip()] = yaml.safe_load(value)
    return params


def print_result(result: dict[str, Any]) -> None:
    out = Console()
    tasks = result["tasks"]
    table = Table(
        title=(
            f"R  ({result['strategy']['name']}, seed {result['seed']}, "
            f"track {result['track']['name']})"
        )
    )
    table.add_column("after")
    for task in tasks:
        table.add_column(task, justify="right")
    for label, row, errs in zip(
        result["matrix"]["rows"], result["matrix"]["R"], result["matrix"]["stderr"], strict=True
    ):
        table.add_row(label, *(f"{v:.3f}±{e:.3f}" for v, e in zip(row, errs, strict=True)))
    out.print(table)
    metrics = Table(title="metrics")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for name in ("acc", "bwt", "fwt", "forgetting", "forgetting_diagonal", "learning_accuracy"):
        value = result["metrics"].get(name)
        shown = (
            f"{value:+.4f}"
            if value is not None
            else f"n/a ({result['metrics'].get(name + '_reason', '')})"
        )
        metrics.add_row(name, shown)
    train = result["compute"]["train"]
    metrics.add_row("train steps", str(train["optimizer_steps"]))
    metrics.add_row(
        "wall s (train/eval)", f"{train['wall_s']:.0f} / {result['compute']['eval']['wall_s']:.0f}"
    )
    out.print(metrics)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctbench")
def cli() -> None:
    """Does the order of multi-task RL post-training change the outcome? Measure it."""


@cli.command()
@click.option(
    "--strategy",
    default="random",
    show_default=True,
    help="A baseline name or path/to/file.py:Class.",
)
@click.option(
    "--track", default="tiny", show_default=True, help="A track name or a track YAML path."
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", "out", default="runs", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--budget", type=int, default=None, help="Total optimizer steps (default: the track's budget)."
)
@click.option(
    "--param", "params", multiple=True, help="Strategy parameter override key=value (repeatable)."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option(
    "--resume",
    "resume",
    type=click.Path(path_type=Path),
    default=None,
    help="Continue an interrupted run folder.",
)
def run(
    strategy: str,
    track: str,
    seed: int,
    out: Path,
    budget: int | None,
    params: tuple[str, ...],
    device: str,
    resume: Path | None,
) -> None:
    """Train the track's base model under one strategy; write <out>/<run-id>/result.json."""
    from ctbench.run import Run, RunConfig

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        observer = RichObserver(progress)
        if resume is not None:
            if not resume.is_dir():
                raise UserError("no such run folder", where=f"--resume {resume}")
            the_run = Run.resume(resume, observer)
        else:
            config = RunConfig(
                track=track,
                strategy=strategy,
                params=parse_params(params),
                seed=seed,
                budget=budget,
                device=device,
            )
            the_run = Run.create(config, out, observer)
            progress.console.print(f"run folder: {the_run.dir}")
        result = the_run.execute()
    print_result(result)
    click.echo(str(the_run.dir / "result.json"))


@cli.command()
@click.option("--track", default=None, help="Only the tasks of this track.")
def tasks(track: str | None) -> None:
    """List the tasks that exist (name, domain, reward, eval size, source)."""
    from ctbench.taskspec import available_task_files, parse_task_spec
    from ctbench.track import find_track_spec

    names = list(find_track_spec(track).task_names) if track else list(available_task_files())
    files = available_task_files()
    table = Table(title="tasks")
    for column in ("name", "domain", "reward", "eval size", "source", "description"):
        table.add_column(column)
    for name in names:
        spec = parse_task_spec(files[name])
        source = spec.source.generator or spec.source.dataset or spec.source.path or ""
        table.add_row(
            name,
            spec.domain,
            spec.reward.kind,
            str(spec.eval.size),
            source,
            spec.description.strip(),
        )
    Console().print(table)


@cli.command()
def strategies() -> None:
    """List the strategies (baselines) with their parameters."""
    import inspect

    from ctbench.strategy import builtin_strategies

    table = Table(title="strategies")
    for column in ("name", "version", "parameters", "description"):
        table.add_column(column)
    for name, cls in sorted(builtin_strategies().items()):
        params = ", ".join(f"{k}={v!r}" for k, v in cls.defaults.items()) or "-"
        table.add_row(name, cls.version, params, inspect.getdoc(cls) or "")
    Console().print(table)


@cli.command()
@click.option("--track", default="tiny", show_default=True)
@click.option(
    "--rebuild", is_flag=True, help="Re-create the base from its seed (ignores shipped/cached)."
)
def base(track: str, rebuild: bool) -> None:
    """Show (or rebuild from its seed) the track's base checkpoint and its band report."""
    import json

    from safetensors.torch import load_file

    from ctbench.base import ensure_base_checkpoint, shipped_checkpoint_dir
    from ctbench.track import load_track

    the_track = load_track(track)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(
            "pre-training base model", total=the_track.spec.model.pretrain.max_steps
        )

        def on_progress(step: int, total: int, dev: dict[str, float]) -> None:
            scores = " ".join(f"{k}={v:+.2f}" for k, v in dev.items())
            progress.update(bar, completed=step, description=f"base model (dev {scores})")

        path = ensure_base_checkpoint(the_track, on_progress, rebuild=rebuild)
    report = (
        json.loads((path / "base_report.json").read_text())
        if (path / "base_report.json").exists()
        else {}
    )
    click.echo(f"base checkpoint: {path}")
    click.echo(
        f"pre-training steps: {report.get('steps')}  "
        f"final dev (chance-normalised): {report.get('final_dev')}"
    )
    shipped = shipped_checkpoint_dir(the_track)
    if rebuild and shipped is not None:
        ours, theirs = (
            load_file(path / "model.safetensors"),
            load_file(shipped / "model.safetensors"),
        )
        diff = max(float((ours[k] - theirs[k]).abs().max()) for k in theirs)
        verdict = (
            "identical"
            if diff == 0.0
            else f"differs (max |diff| {diff:.3g}; another CPU or library version)"
        )
        click.echo(f"rebuild vs shipped checkpoint: {verdict}")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except UserError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
