"""The ``ctbench`` command line (click). User mistakes exit 2 with one clear line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
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
        self.current = ""

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
        from ctbench.strategy import Merge

        if isinstance(stage, Merge):
            label = f"{index} merge ({stage.method}) of {', '.join(stage.sources)}"
        else:
            kind = "probe" if stage.probe else "branch" if stage.branch else "stage"
            label = f"{index} {kind} {stage.objective} [{', '.join(stage.tasks)}]"
        if self.step_bar is not None:
            self.progress.remove_task(self.step_bar)
        self.step_bar = self.progress.add_task(label, total=max(stage.steps, 1))
        self.current = stage.name or label

    def step_done(self, log) -> None:
        if self.step_bar is not None:
            self.progress.advance(self.step_bar)

    def stage_finished(self, index: int, row) -> None:
        scores = "  ".join(f"{name} {e.score:.3f}" for name, e in row.items())
        self.progress.console.print(f"  after {index} ({self.current}): {scores}")

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
    if result["branches"]:
        aside = Table(title="branches and probes (trained aside; not rows of R)")
        aside.add_column("name")
        for task in tasks:
            aside.add_column(task, justify="right")
        for branch in result["branches"]:
            kind = "probe" if branch["probe"] else "branch"
            aside.add_row(f"{kind} {branch['name']}", *(f"{v:.3f}" for v in branch["R"]))
        out.print(aside)
    report = result["strategy"]["report"]
    if "order" in report:
        out.print(f"order: {' > '.join(report['order'])}")
    if "predicted_final" in report:
        final = dict(zip(tasks, result["matrix"]["R"][-1], strict=True))
        out.print(
            "predicted final (additive): "
            + "  ".join(
                f"{t} {report['predicted_final'][t]:.3f} (measured {final[t]:.3f})" for t in tasks
            )
        )
    metrics = Table(title="metrics")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    names = ["acc", "bwt", "fwt", "forgetting", "forgetting_diagonal", "learning_accuracy"]
    for name in names + (["merge_loss"] if "merge_loss" in result["metrics"] else []):
        value = result["metrics"].get(name)
        shown = (
            f"{value:+.4f}"
            if value is not None
            else f"n/a ({result['metrics'].get(name + '_reason', '')})"
        )
        metrics.add_row(name, shown)
    train = result["compute"]["train"]
    metrics.add_row("train steps", str(train["optimizer_steps"]))
    if result["budget"]["probe_steps"]:
        metrics.add_row("probe steps", str(result["budget"]["probe_steps"]))
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
    from ctbench.runs.config import RunConfig
    from ctbench.runs.run import Run

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
    from ctbench.tracks.taskspec import available_task_files, parse_task_spec
    from ctbench.tracks.track import find_track_spec, track_task_specs

    if track:
        specs = list(track_task_specs(find_track_spec(track)).values())
    else:
        specs = [parse_task_spec(path) for path in available_task_files().values()]
    table = Table(title="tasks")
    for column in ("name", "domain", "reward", "eval size", "source", "description"):
        table.add_column(column)
    for spec in specs:
        name = spec.name
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
    """List every strategy: baseline recipes and installed plugins, with their parameters."""
    from ctbench.strategies.plugins import available_strategies

    table = Table(title="strategies", show_lines=True)
    for column in ("name", "class", "parameters (recipe values)", "description", "from"):
        table.add_column(column)
    for resolved in available_strategies():
        params = {**resolved.cls.defaults, **resolved.params}
        shown = "\n".join(f"{k}={v!r}" for k, v in params.items()) or "-"
        origin = resolved.origin.replace(str(Path.cwd()) + "/", "")
        table.add_row(
            resolved.name,
            f"{resolved.cls.__name__} v{resolved.cls.version}",
            shown,
            resolved.description,
            origin,
        )
    Console(width=160).print(table)


@cli.command()
@click.option("--track", default="tiny", show_default=True)
@click.option(
    "--rebuild", is_flag=True, help="Re-create the base from its seed (ignores shipped/cached)."
)
def base(track: str, rebuild: bool) -> None:
    """Show (or rebuild from its seed) the track's base checkpoint and its band report."""

    from safetensors.torch import load_file

    from ctbench.tracks.track import load_track
    from ctbench.training.tiny_base import ensure_base_checkpoint, shipped_checkpoint_dir

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


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def print_transfer(transfer, title: str) -> None:
    table = Table(title=title)
    table.add_column("probe on ↓ / Δ on →")
    for task in transfer.tasks:
        table.add_column(task, justify="right")
    for task, row in zip(transfer.tasks, transfer.delta, strict=True):
        table.add_row(task, *(f"{v:+.3f}" for v in row))
    table.add_row("base", *(f"{v:.3f}" for v in transfer.base), style="dim")
    table.add_row("a* (own probe)", *(f"{v:.3f}" for v in transfer.single_task_levels))
    Console().print(table)


@cli.command()
@click.option("--track", default="tiny", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--probe-steps",
    type=int,
    default=None,
    help="RL steps per single-task probe (default: the bwt baseline's, 20% of the budget / n).",
)
@click.option("--out", default="runs", show_default=True, type=click.Path(path_type=Path))
@click.option("--device", default="auto", show_default=True)
def transfer(track: str, seed: int, probe_steps: int | None, out: Path, device: str) -> None:
    """Measure and print the transfer matrix Δ of a track (one probe per task)."""
    from ctbench.results.validation import default_probe_steps, measure_transfer_run
    from ctbench.strategies.transfer import TransferMatrix

    steps = probe_steps if probe_steps is not None else default_probe_steps(track)
    if steps <= 0:
        raise UserError(f"expected a positive number of steps, got {steps}", where="--probe-steps")
    with _progress() as progress:
        result = measure_transfer_run(track, seed, steps, out, RichObserver(progress), device)
    matrix = TransferMatrix.from_json(result["strategy"]["report"]["transfer"])
    print_transfer(matrix, f"Δ ({track}, seed {seed}, {steps} steps per probe)")
    click.echo(str(out / result["run_id"] / "result.json"))


@cli.command()
@click.option("--order", required=True, help="Comma-separated task order, e.g. math,code,qa.")
@click.option(
    "--transfer",
    "source",
    type=click.Path(path_type=Path),
    default=None,
    help="A transfer or bwt result.json (default: the newest one under --runs).",
)
@click.option("--track", default="tiny", show_default=True)
@click.option("--runs", default="runs", show_default=True, type=click.Path(path_type=Path))
def predict(order: str, source: Path | None, track: str, runs: Path) -> None:
    """Print the additive prediction of the final per-task scores for one order."""
    from ctbench.results.validation import find_transfer, load_transfer, parse_order
    from ctbench.strategies.transfer import best_order, predict_final_scores

    path = source if source is not None else find_transfer(runs, track)
    matrix = load_transfer(path)
    tasks = parse_order(order, matrix)
    predicted = predict_final_scores(tasks, matrix)
    table = Table(title=f"predicted final scores for {' > '.join(tasks)}  (Δ from {path})")
    table.add_column("task")
    table.add_column("a*", justify="right")
    table.add_column("transfer from later stages", justify="right")
    table.add_column("predicted", justify="right")
    levels = dict(zip(matrix.tasks, matrix.single_task_levels, strict=True))
    for task in tasks:
        table.add_row(
            task,
            f"{levels[task]:.3f}",
            f"{predicted[task] - levels[task]:+.3f}",
            f"{predicted[task]:.3f}",
        )
    Console().print(table)
    best, search = best_order(matrix)
    best_acc = sum(predict_final_scores(best, matrix).values()) / len(best)
    click.echo(f"predicted ACC {sum(predicted.values()) / len(tasks):.4f}")
    click.echo(f"best predicted order ({search}): {','.join(best)}  ACC {best_acc:.4f}")


@cli.command("validate-prediction")
@click.option("--orders", "count", default=6, show_default=True, type=int)
@click.option("--track", default="tiny", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--transfer",
    "source",
    type=click.Path(path_type=Path),
    default=None,
    help="Use this transfer/bwt result.json instead of measuring Δ first.",
)
@click.option("--probe-steps", type=int, default=None, help="When measuring Δ (see transfer).")
@click.option(
    "--stage-steps",
    type=int,
    default=None,
    help="Steps per stage of each order (default: the track's steps per task).",
)
@click.option("--out", default="runs", show_default=True, type=click.Path(path_type=Path))
@click.option("--device", default="auto", show_default=True)
def validate_prediction_command(
    count: int,
    track: str,
    seed: int,
    source: Path | None,
    probe_steps: int | None,
    stage_steps: int | None,
    out: Path,
    device: str,
) -> None:
    """Run K orders; correlate predicted with measured final scores (Pearson, Spearman)."""
    from ctbench.results.validation import (
        default_probe_steps,
        load_transfer,
        measure_transfer_run,
        sample_orders,
        validate_prediction,
    )
    from ctbench.strategies.transfer import TransferMatrix
    from ctbench.tracks.track import load_track

    spec = load_track(track).spec
    steps = stage_steps if stage_steps is not None else spec.steps_per_task
    if steps <= 0:
        raise UserError(f"expected a positive number of steps, got {steps}", where="--stage-steps")
    sample_orders(spec.task_names, count, seed)  # checks --orders before any work
    with _progress() as progress:
        observer = RichObserver(progress)
        if source is not None:
            matrix, origin = load_transfer(source), str(source)
        else:
            probes = probe_steps if probe_steps is not None else default_probe_steps(track)
            result = measure_transfer_run(track, seed, probes, out, observer, device)
            matrix = TransferMatrix.from_json(result["strategy"]["report"]["transfer"])
            origin = str(out / result["run_id"] / "result.json")
        report = validate_prediction(
            track=track,
            seed=seed,
            orders=count,
            transfer=matrix,
            transfer_source=origin,
            stage_steps=steps,
            out=out,
            observer=observer,
            device=device,
        )
    print_transfer(matrix, f"Δ used ({origin})")
    table = Table(title=f"predicted vs measured ({len(report['orders'])} orders, seed {seed})")
    for column in ("order", "predicted ACC", "measured ACC"):
        table.add_column(column, justify="right" if "ACC" in column else "left")
    for row in report["orders"]:
        table.add_row(
            " > ".join(row["order"]), f"{row['predicted_acc']:.3f}", f"{row['measured_acc']:.3f}"
        )
    Console().print(table)
    for key, label in (
        ("per_task_final", "per (order, task) final score"),
        ("per_task_final_centred", "same, each task centred (order effect only)"),
        ("per_order_acc", "per order ACC"),
    ):
        c = report[key]
        if c["pearson"] is None:
            click.echo(f"{label}: undefined ({c['reason']}, n={c['n']})")
        else:
            click.echo(
                f"{label}: Pearson {c['pearson']:+.3f} (p={c['pearson_p']:.3g}), "
                f"Spearman {c['spearman']:+.3f} (p={c['spearman_p']:.3g}), n={c['n']}"
            )
    from ctbench.results.plots import validation_plot_data, write_figures

    write_figures(validation_plot_data(report), Path(report["path"]).parent / "plots")
    click.echo(report["path"])


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def report(paths: tuple[Path, ...]) -> None:
    """Write the figures (PNG) of runs into <run>/plots/.

    PATHS are run folders, folders of runs (a compare grid), or validate-prediction folders:
    R heatmap with branch and probe rows, forgetting after each stage, per-domain entropy over
    stages and over RL steps, and where the run has them the Δ matrix and predicted vs
    measured final scores."""
    from ctbench.results.plots import plot_data, validation_plot_data, write_figures

    sources: list[Path] = []  # result.json or validation.json files
    for path in paths:
        if (path / "result.json").exists():
            sources.append(path / "result.json")
        elif (path / "validation.json").exists():
            sources.append(path / "validation.json")
        elif path.is_dir() and any(path.glob("*/result.json")):
            sources.extend(sorted(path.glob("*/result.json")))
        else:
            raise UserError(
                "not a finished run folder (no result.json), a folder of runs, or a "
                "validate-prediction folder (no validation.json)",
                where=str(path),
            )
    for source in sources:
        try:
            loaded = json.loads(source.read_text())
            is_run = source.name == "result.json"
            data = plot_data(loaded) if is_run else validation_plot_data(loaded)
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"not a readable ctbench result: {exc!r}", where=str(source)) from exc
        for written in write_figures(data, source.parent / "plots"):
            click.echo(str(written))


@cli.command("eval-general")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option(
    "--tasks",
    default="arc_easy",
    show_default=True,
    help="Comma-separated lm-eval task names (registry names, or tasks under --include-path).",
)
@click.option(
    "--include-path",
    type=click.Path(path_type=Path),
    default=None,
    help="A folder of lm-eval task YAML files (e.g. tasks reading a local JSON-lines file).",
)
@click.option("--limit", type=int, default=None, help="At most N examples per task.")
@click.option(
    "--num-fewshot",
    type=int,
    default=None,
    help="Few-shot examples for every task (default: each task's own count).",
)
@click.option(
    "--chat-template",
    default="auto",
    show_default=True,
    help="auto, on or off: render requests (few-shot examples as turns) through the "
    "tokenizer's chat template; auto: on for a chat track whose tokenizer has one.",
)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
def eval_general(
    run_dir: Path,
    tasks: str,
    include_path: Path | None,
    limit: int | None,
    num_fewshot: int | None,
    chat_template: str,
    batch_size: int,
    device: str,
) -> None:
    """Score a finished run's base and final model with lm-eval; write RUN/general_eval.json.

    Needs the eval extra: pip install 'ctbench[eval]'."""
    from ctbench.runs.general_eval import evaluate_general, parse_tasks

    path, summary = evaluate_general(
        run_dir,
        parse_tasks(tasks),
        include_path=include_path,
        limit=limit,
        batch_size=batch_size,
        device=device,
        num_fewshot=num_fewshot,
        chat_template=chat_template,
        note=lambda message: console.print(escape(message), highlight=False),
    )
    table = Table(title=f"general ability (lm-eval {summary['lm_eval_version']}): {run_dir.name}")
    for column in ("task", "n", "metric", "base", "final", "Δ final − base"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")

    def fmt(value: float | None, sign: str = "") -> str:
        return "n/a" if value is None else f"{value:{sign}.4f}"

    for name, info in summary["tasks"].items():
        for metric, base_value in summary["base"][name].items():
            table.add_row(
                name,
                str(info.get("n", "")),
                metric,
                fmt(base_value),
                fmt(summary["final"][name][metric]),
                fmt(summary["delta"][name][metric], "+"),
            )
    Console().print(table)
    click.echo(str(path))


@cli.command()
@click.option("--strategies", default="all", show_default=True, help="'all' (the six) or a,b,c.")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--track", default="tiny", show_default=True)
@click.option("--budget", type=int, default=None, help="Total optimizer steps per cell.")
@click.option("--out", default="runs", show_default=True, type=click.Path(path_type=Path))
@click.option("--device", default="auto", show_default=True)
@click.option("--bootstrap", "samples", default=2000, show_default=True, type=int)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: cells one after another here; ray: cells as Ray tasks.",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join (e.g. auto or ray://head:10001); default: a local Ray.",
)
@click.option(
    "--cpus-per-cell",
    type=int,
    default=None,
    help="Ray CPUs (and torch threads) per cell on a CPU cluster [default: 1].",
)
def compare(
    strategies: str,
    seeds: str,
    track: str,
    budget: int | None,
    out: Path,
    device: str,
    samples: int,
    executor: str,
    address: str | None,
    cpus_per_cell: int | None,
) -> None:
    """Run the (strategy × seed) grid (finished cells are reused) and compare with CIs."""
    from ctbench.results.compare import (
        parse_seeds,
        parse_strategies,
        run_grid,
        summarise,
        write_summary,
    )
    from ctbench.tracks.track import load_track

    names, seed_list = parse_strategies(strategies), parse_seeds(seeds)
    load_track(track)
    if budget is not None and budget <= 0:
        raise UserError(f"expected a positive number of steps, got {budget}", where="--budget")
    with _progress() as progress:
        cells = run_grid(
            names,
            seed_list,
            track=track,
            out=out,
            observer=RichObserver(progress),
            budget=budget,
            device=device,
            executor=executor,
            address=address,
            cpus_per_cell=cpus_per_cell,
        )
    summary = summarise(cells, samples=samples)
    path = write_summary(summary, out, track)
    table = Table(
        title=f"{track}: {len(names)} strategies × seeds {','.join(map(str, seed_list))} "
        "(ACC: mean [95% bootstrap CI over seeds and eval items])"
    )
    for column in ("strategy", "ACC", "BWT", "forgetting", "steps", "wall s", "ACC − joint"):
        table.add_column(column, justify="left" if column == "strategy" else "right")

    def fmt(row: dict, metric: str) -> str:
        value, defined = row[metric], row["defined_seeds"][metric]
        if value is None:
            return "n/a"
        partial = f" ({defined}/{len(row['seeds'])} seeds)" if defined < len(row["seeds"]) else ""
        return f"{value:+.3f}{partial}"

    for row in sorted(summary["rows"], key=lambda r: -r["acc"]["mean"]):
        acc = row["acc"]
        diff = row.get("minus_joint")
        table.add_row(
            row["strategy"],
            f"{acc['mean']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]",
            fmt(row, "bwt"),
            fmt(row, "forgetting"),
            f"{row['optimizer_steps']:.0f}",
            f"{row['wall_s']:.0f}",
            "—"
            if diff is None
            else f"{diff['mean']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}]",
        )
    Console().print(table)
    click.echo(str(path))


@cli.group()
def leaderboard() -> None:
    """Build leaderboards from validated runs."""


@leaderboard.command("build")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--track", default="tiny", show_default=True)
@click.option(
    "--budget", type=int, default=None, help="Steps every run must have (default: the track's)."
)
@click.option("--out", default="leaderboards", show_default=True, type=click.Path(path_type=Path))
@click.option("--bootstrap", "samples", default=2000, show_default=True, type=int)
def leaderboard_build(
    runs: tuple[Path, ...], track: str, budget: int | None, out: Path, samples: int
) -> None:
    """Validate every result.json under RUNS, aggregate seeds, rank by ACC, write JSON."""
    from ctbench.results.leaderboard import build_leaderboard, write_leaderboard
    from ctbench.results.submission import leaderboard_run_dirs
    from ctbench.tracks.track import load_track

    the_track = load_track(track)
    budget = budget if budget is not None else the_track.spec.budget_steps
    run_dirs = leaderboard_run_dirs(runs, the_track, budget)
    board = build_leaderboard(the_track, run_dirs, budget=budget, samples=samples)
    path = write_leaderboard(board, out)
    table = Table(title=f"leaderboard {track} (budget {board['track']['budget_steps']} steps)")
    for column in ("rank", "strategy", "ACC [95% CI]", "seeds", "BWT", "forgetting"):
        table.add_column(column)
    for entry in board["entries"]:
        acc = entry["metrics"]["acc"]
        bwt, forgetting = entry["metrics"]["bwt"], entry["metrics"]["forgetting"]
        table.add_row(
            str(entry["rank"]),
            entry["strategy"],
            f"{acc['mean']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]",
            str(entry["n_seeds"]),
            "n/a" if bwt is None else f"{bwt:+.3f}",
            "n/a" if forgetting is None else f"{forgetting:+.3f}",
        )
    Console().print(table)
    click.echo(str(path))


@leaderboard.command("render")
@click.option("--track", default="tiny", show_default=True)
@click.option(
    "--dir", "folder", default="leaderboards", show_default=True, type=click.Path(path_type=Path)
)
def leaderboard_render(track: str, folder: Path) -> None:
    """Write <dir>/<track>.md and a self-contained <dir>/<track>.html from the JSON (with a
    findings section when <dir>/<track>-findings.json is there)."""
    source = folder / f"{track}.json"
    if not source.exists():
        raise UserError(
            "no leaderboard JSON; run `ctbench leaderboard build` first", where=str(source)
        )
    for path in _render_board(folder, track):
        click.echo(str(path))


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"not valid JSON: {exc}", where=str(path)) from exc


def _render_board(folder: Path, track: str) -> list[Path]:
    """(Re)write a leaderboard's Markdown and HTML from its JSON and, where present, the
    findings JSON beside it; ``leaderboard render`` and ``findings`` both end here."""
    from ctbench.common.atomic import write_text_atomic
    from ctbench.results.findings import findings_paths
    from ctbench.results.leaderboard_page import render_html, render_markdown

    board = _read_json_file(folder / f"{track}.json")
    findings_file = findings_paths(folder, track)["json"]
    found = _read_json_file(findings_file) if findings_file.exists() else None
    write_text_atomic(folder / f"{track}.md", render_markdown(board, found))
    write_text_atomic(folder / f"{track}.html", render_html(board, found))
    return [folder / f"{track}.md", folder / f"{track}.html"]


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--track",
    default=None,
    help="Refuse runs of any other track (default: the runs' own; they must share one hash).",
)
@click.option("--out", default="leaderboards", show_default=True, type=click.Path(path_type=Path))
def findings(runs: tuple[Path, ...], track: str | None, out: Path) -> None:
    """Test the papers' claims on finished runs: effect, 95% CI and verdict per claim.

    RUNS are run folders, folders of them, submission bundles, validate-prediction folders,
    or result.json / validation.json files. Writes <out>/<track>-findings.md, .json and
    .html; the verdict rule is fixed in ctbench.results.findings (see the README)."""
    from ctbench.results.findings import (
        build_findings,
        effect_text,
        load_inputs,
        write_findings,
    )

    report = build_findings(load_inputs(runs, track))
    paths = write_findings(report, out)
    table = Table(
        title=f"findings: track {report['track']['name']} ({report['n_runs']} runs; "
        "effect [95% bootstrap CI])"
    )
    for column in ("claim", "effect", "seeds/runs", "verdict"):
        table.add_column(column)
    for claim in report["claims"]:
        shown = claim["verdict"] if claim["verdict"] != "skipped" else f"skipped: {claim['reason']}"
        table.add_row(
            f"{claim['id']} {claim['claim']}", effect_text(claim), claim["seeds_runs"], shown
        )
    Console(width=160).print(table)
    for warning in report["warnings"]:
        console.print(f"warning: {escape(warning)}", highlight=False)
    for path in (paths["md"], paths["json"], paths["html"]):
        click.echo(str(path))
    name = report["track"]["name"]
    if (out / f"{name}.json").exists():  # the leaderboard page shows the findings too
        click.echo(str(_render_board(out, name)[1]))


@cli.command()
@click.argument("strategy")
@click.option("--track", default="tiny", show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--budget", type=int, default=None, help="Steps per run (default: the track's).")
@click.option("--out", default="submissions", show_default=True, type=click.Path(path_type=Path))
@click.option("--device", default="auto", show_default=True)
def submit(
    strategy: str, track: str, seeds: str, budget: int | None, out: Path, device: str
) -> None:
    """Run a strategy on the track's seeds, validate it, and write a submission bundle."""

    from ctbench.results.compare import parse_seeds
    from ctbench.results.submission import create_bundle, validate_bundle
    from ctbench.tracks.track import load_track

    seed_list = parse_seeds(seeds)
    with _progress() as progress:
        bundle = create_bundle(
            strategy,
            track_name=track,
            seeds=seed_list,
            out=out,
            observer=RichObserver(progress),
            budget=budget,
            device=device,
        )
    the_track = load_track(track)
    validate_bundle(bundle, the_track, budget or the_track.spec.budget_steps)
    entry = json.loads((bundle / "manifest.json").read_text())["entry"]
    acc = entry["metrics"]["acc"]
    click.echo(
        f"{entry['strategy']}: ACC {acc['mean']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] "
        f"over seeds {entry['seeds']}"
    )
    click.echo(str(bundle))


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except UserError as exc:
        # escape: a message naming R[0][qa] or a list must not be read as rich markup
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
