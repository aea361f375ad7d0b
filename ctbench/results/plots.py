"""Figures of a run: R heatmap, forgetting matrix, entropy over stages and steps, Δ, and
predicted-vs-measured scores.

Two layers, so that ``ctbench report`` (one run folder) and the leaderboard page (one
example run per entry, carried inside the leaderboard JSON) draw the same figures:
:func:`plot_data` turns a result into a small JSON-ready dict, and :func:`figures` turns
that dict into matplotlib figures. Figures use matplotlib's object API with the Agg canvas
(no pyplot, no global backend state), so drawing works headless and in threads.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from ctbench.results.aggregate import correlation
from ctbench.runs.metrics import forgetting_matrix
from ctbench.runs.result import is_main_line, main_line_schedule

# Per-step traces are averaged into at most this many bins for the page: a 400-step run
# stays legible and the leaderboard JSON stays small.
STEP_BINS = 100
DOMAIN_COLOURS = {"structured": "#1f77b4", "open": "#d62728"}


# ---------------------------------------------------------------------------------- data
def _binned(values: Sequence[float | None], bins: int) -> tuple[list[float], list[float | None]]:
    """Mean of the defined values in each of ``bins`` equal step ranges (x: bin centre)."""
    n = len(values)
    if n == 0:
        return [], []
    size = max(1, math.ceil(n / bins))
    xs, ys = [], []
    for start in range(0, n, size):
        chunk = [v for v in values[start : start + size] if v is not None and math.isfinite(v)]
        xs.append(start + (min(size, n - start) - 1) / 2)
        ys.append(sum(chunk) / len(chunk) if chunk else None)
    return xs, ys


def _step_entropy(result: dict[str, Any], bins: int) -> dict[str, Any]:
    """Per-task token entropy of sampled completions at every main-line RL step.

    A stage trained on one task books its batch entropy to that task; a mixed stage needs
    ``entropy_by_task`` in its trace (recorded since it was added; older results show the
    mixed stages' tasks as missing rather than guessed)."""
    tasks = result["tasks"]
    series: dict[str, list[float | None]] = {t: [] for t in tasks}
    boundaries = []
    for item in result["stages"]:
        if item["kind"] != "stage" or not is_main_line(item):
            continue
        trace = item["trace"]
        by_task = trace.get("entropy_by_task") or [{} for _ in trace["entropy"]]
        for overall, split in zip(trace["entropy"], by_task, strict=True):
            if not split and overall is not None and len(item["tasks"]) == 1:
                split = {item["tasks"][0]: overall}
            for t in tasks:
                series[t].append(split.get(t))
        boundaries.append(len(series[tasks[0]]))
    binned = {t: _binned(v, bins) for t, v in series.items()}
    first = next(iter(binned.values()), ([], []))
    return {
        "x": first[0],
        "per_task": {t: ys for t, (_, ys) in binned.items()},
        "stage_ends": boundaries[:-1],
    }


def plot_data(result: dict[str, Any], bins: int = STEP_BINS) -> dict[str, Any]:
    """Everything the figures need, from one result.json (JSON-ready, a few KB)."""
    tasks = result["tasks"]
    R = result["matrix"]["R"]
    schedule = main_line_schedule(result)
    report = result["strategy"].get("report", {})
    data: dict[str, Any] = {
        "title": f"{result['strategy']['name']}, seed {result['seed']}",
        "tasks": tasks,
        "domains": {t: result["task_info"][t]["domain"] for t in tasks},
        "rows": result["matrix"]["rows"],
        "R": R,
        "branches": [
            {"name": b["name"] or ",".join(b["tasks"]), "probe": b["probe"], "R": b["R"]}
            for b in result.get("branches", [])
        ],
        "forgetting": forgetting_matrix(R, schedule) if schedule else [],
        "token_entropy": result["entropy"]["token"],
        "step_entropy": _step_entropy(result, bins),
    }
    if "item_forgetting" in result:
        data["items"] = {
            task: {
                "forgotten": [e["forgotten"] for e in entries],
                "learned": [e["learned"] for e in entries],
            }
            for task, entries in result["item_forgetting"]["tasks"].items()
        }
    if "transfer" in report:
        estimator = (report.get("estimate") or {}).get("estimator", "probes")
        data["transfer"] = {**report["transfer"], "estimator": estimator}
    if "predicted_final" in report:
        data["prediction"] = [
            {"label": t, "predicted": report["predicted_final"][t], "measured": R[-1][j]}
            for j, t in enumerate(tasks)
        ]
    return data


def validation_plot_data(report: dict[str, Any]) -> dict[str, Any]:
    """Predicted vs measured final scores over every (order, task) of validate-prediction."""
    tasks = report["transfer"]["tasks"]
    return {
        "title": f"{len(report['orders'])} orders, seed {report['seed']}",
        "tasks": tasks,
        "prediction": [
            {"label": t, "predicted": row["predicted"][t], "measured": row["measured"][t]}
            for row in report["orders"]
            for t in tasks
        ],
    }


# ------------------------------------------------------------------------------- figures
def _matrix_axes(
    fig: Figure,
    ax: Any,
    values: Sequence[Sequence[float | None]],
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    cmap: str,
    vmin: float,
    vmax: float,
    label: str,
) -> None:
    grid = [[math.nan if v is None else v for v in row] for row in values]
    colours = matplotlib.colormaps[cmap].with_extremes(bad="#e6e6e6")  # undefined: grey
    image = ax.imshow(grid, cmap=colours, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.tick_params(labelsize=8)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            text = "–" if v is None else f"{v:.2f}"
            # White on dark cells, black on light ones (by the cell colour's luminance).
            red, green, blue, _ = colours(image.norm(v)) if v is not None else (1, 1, 1, 1)
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w" if dark else "k")
    fig.colorbar(image, ax=ax, label=label, shrink=0.8)


def r_heatmap(data: dict[str, Any]) -> Figure:
    branches = data["branches"]
    heights = [len(data["R"])] + ([len(branches)] if branches else [])
    fig = Figure(figsize=(5.2, 1.2 + 0.32 * sum(heights) + (0.5 if branches else 0)))
    axes = fig.subplots(len(heights), 1, squeeze=False, height_ratios=heights)[:, 0]
    _matrix_axes(
        fig, axes[0], data["R"], data["rows"], data["tasks"],
        cmap="viridis", vmin=0.0, vmax=1.0, label="score",
    )  # fmt: skip
    axes[0].set_title(f"R (main line): {data['title']}", fontsize=9)
    if branches:
        names = [("probe " if b["probe"] else "branch ") + b["name"] for b in branches]
        _matrix_axes(
            fig, axes[1], [b["R"] for b in branches], names, data["tasks"],
            cmap="viridis", vmin=0.0, vmax=1.0, label="score",
        )  # fmt: skip
        axes[1].set_title("branches and probes (trained aside)", fontsize=9)
    fig.tight_layout()
    return fig


def forgetting_heatmap(data: dict[str, Any]) -> Figure | None:
    """None when forgetting is undefined everywhere (one joint stage, a single merge)."""
    matrix = data["forgetting"]
    if not any(v is not None for row in matrix for v in row):
        return None
    top = max(abs(v) for row in matrix for v in row if v is not None) or 0.1
    fig = Figure(figsize=(5.2, 1.2 + 0.32 * len(matrix)))
    ax = fig.subplots()
    _matrix_axes(
        fig, ax, matrix, data["rows"][1:], data["tasks"],
        cmap="RdBu_r", vmin=-top, vmax=top, label="forgetting",
    )  # fmt: skip
    ax.set_title(f"forgetting (best earlier − now): {data['title']}", fontsize=9)
    fig.tight_layout()
    return fig


def _domain_mean(
    data: dict[str, Any], values_for: dict[str, Sequence[float | None]], domain: str
) -> list[float | None]:
    tasks = [t for t in data["tasks"] if data["domains"][t] == domain]
    out = []
    for k in range(len(values_for[tasks[0]])):
        defined = [values_for[t][k] for t in tasks if values_for[t][k] is not None]
        out.append(sum(defined) / len(defined) if defined else None)
    return out


def _plot_gapped(ax: Any, xs: Sequence[float], ys: Sequence[float | None], **style: Any) -> None:
    ax.plot(xs, [math.nan if y is None else y for y in ys], **style)


def entropy_curves(data: dict[str, Any]) -> Figure:
    """Per-domain token entropy (thick) and per task (thin) over stages and over RL steps."""
    fig = Figure(figsize=(9.0, 3.2))
    by_stage, by_step = fig.subplots(1, 2)
    tasks, domains = data["tasks"], sorted(set(data["domains"].values()))
    stage_values = {t: [row[j] for row in data["token_entropy"]] for j, t in enumerate(tasks)}
    xs = list(range(len(data["token_entropy"])))
    steps = data["step_entropy"]
    for domain in domains:
        colour = DOMAIN_COLOURS.get(domain, "#555555")
        for t in tasks:
            if data["domains"][t] == domain:
                _plot_gapped(by_stage, xs, stage_values[t], color=colour, lw=0.8, alpha=0.4)
                _plot_gapped(
                    by_step, steps["x"], steps["per_task"][t], color=colour, lw=0.8, alpha=0.4
                )
        _plot_gapped(
            by_stage, xs, _domain_mean(data, stage_values, domain),
            color=colour, lw=2.2, marker="o", label=domain,
        )  # fmt: skip
        _plot_gapped(
            by_step, steps["x"], _domain_mean(data, steps["per_task"], domain),
            color=colour, lw=2.2, label=domain,
        )  # fmt: skip
    by_stage.set_xticks(xs, [r.split(":")[0] for r in data["rows"]])
    by_stage.set_xlabel("after stage (eval, sampled at T=1)", fontsize=8)
    by_stage.set_ylabel("token entropy (nats)", fontsize=8)
    by_stage.set_title(f"entropy over stages: {data['title']}", fontsize=9)
    for end in steps["stage_ends"]:
        by_step.axvline(end - 0.5, color="#999999", lw=0.8, ls="--")
    by_step.set_xlabel("main-line optimizer step (training rollouts)", fontsize=8)
    by_step.set_title("entropy over RL steps (thin: per task)", fontsize=9)
    for ax in (by_stage, by_step):
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def transfer_heatmap(data: dict[str, Any]) -> Figure | None:
    transfer = data.get("transfer")
    if transfer is None:
        return None
    delta = transfer["delta"]
    top = max(abs(v) for row in delta for v in row) or 0.1
    fig = Figure(figsize=(5.0, 1.4 + 0.4 * len(delta)))
    ax = fig.subplots()
    # The gradient estimate's Δ̂ is a first-order reward change per unit step, not a score.
    gradient = transfer.get("estimator") == "gradient"
    rows = [f"{'train' if gradient else 'probe'} {t}" for t in transfer["tasks"]]
    # (No combining hat in figures: the bundled fonts place it beside the Δ.)
    label = "estimated Δ (first order, per unit step)" if gradient else "Δ (score change)"
    _matrix_axes(
        fig, ax, delta, rows, transfer["tasks"],
        cmap="RdBu", vmin=-top, vmax=top, label=label,
    )  # fmt: skip
    what = "gradient estimate of Δ (row: task trained)" if gradient else "Δ (row: task probed)"
    ax.set_title(f"transfer {what}: {data['title']}", fontsize=9)
    fig.tight_layout()
    return fig


def prediction_scatter(data: dict[str, Any]) -> Figure | None:
    points = data.get("prediction")
    if not points:
        return None
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for j, task in enumerate(data["tasks"]):
        mine = [p for p in points if p["label"] == task]
        ax.scatter(
            [p["predicted"] for p in mine],
            [p["measured"] for p in mine],
            color=colours[j % len(colours)],
            label=task,
            s=22,
        )
    xs, ys = [p["predicted"] for p in points], [p["measured"] for p in points]
    low, high = min(xs + ys) - 0.05, max(xs + ys) + 0.05
    ax.plot([low, high], [low, high], color="#888888", lw=0.8, ls="--")
    title = f"predicted vs measured: {data['title']}"
    pearson = correlation(xs, ys)["pearson"]
    if pearson is not None:
        title += f"\nPearson {pearson:+.2f} (n={len(points)})"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("predicted final score (additive Δ)", fontsize=8)
    ax.set_ylabel("measured final score", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def item_transitions(data: dict[str, Any]) -> Figure | None:
    """Items learned (up) and forgotten (down) at each main-line evaluation, per task: the
    churn that an unchanged accuracy can hide. None for results without the record."""
    items = data.get("items")
    if not items:
        return None
    tasks = list(items)
    stages = data["rows"][1:]
    width = 0.8 / max(len(tasks), 1)
    fig = Figure(figsize=(5.6, 2.8))
    ax = fig.subplots()
    for t, task in enumerate(tasks):
        xs = [s + (t - (len(tasks) - 1) / 2) * width for s in range(len(stages))]
        colour = f"C{t}"
        ax.bar(xs, items[task]["learned"], width, color=colour, label=task)
        ax.bar(xs, [-v for v in items[task]["forgotten"]], width, color=colour, alpha=0.45)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(stages)), stages, fontsize=7)
    ax.set_ylabel("items: learned (+) / forgotten (−)", fontsize=8)
    ax.set_title(f"item transitions since the previous evaluation: {data['title']}", fontsize=9)
    ax.legend(fontsize=7, ncols=min(len(tasks), 4))
    fig.tight_layout()
    return fig


def figures(data: dict[str, Any]) -> dict[str, Figure]:
    """Every figure that is defined for this data, by file stem."""
    out: dict[str, Figure | None] = {}
    if "R" in data:
        out["r_heatmap"] = r_heatmap(data)
        out["forgetting"] = forgetting_heatmap(data)
        out["items"] = item_transitions(data)
        out["entropy"] = entropy_curves(data)
        out["transfer"] = transfer_heatmap(data)
    out["prediction"] = prediction_scatter(data)
    return {name: fig for name, fig in out.items() if fig is not None}


def png_bytes(fig: Figure, dpi: int = 90) -> bytes:
    """PNG without a timestamp or software tag, so the same figure gives the same bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def write_figures(data: dict[str, Any], folder: Path) -> list[Path]:
    from ctbench.common.atomic import write_bytes_atomic

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures(data).items():
        path = folder / f"{name}.png"
        write_bytes_atomic(path, png_bytes(fig))
        written.append(path)
    return written
