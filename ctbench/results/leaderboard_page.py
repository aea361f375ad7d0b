"""Rendering a leaderboard JSON as Markdown and as one self-contained static HTML page.

The page has no external assets (no CDN, no fonts, no linked images): a sortable table,
and per strategy an R heatmap (coloured table cells) and the example run's figures from
:mod:`ctbench.results.plots` as inline PNG data (R with branch rows, forgetting, entropy over
stages and steps, Δ and predicted-vs-measured where measured), so it can be published as
is and opened offline.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from ctbench.training.compute import total_wall_s


def _fmt(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _steps(entry: dict[str, Any]) -> float:
    return sum((phase["optimizer_steps"] or 0) for phase in entry["compute"].values())


def _wall(entry: dict[str, Any]) -> float:
    return total_wall_s(entry["compute"])


def render_markdown(board: dict[str, Any], findings: dict[str, Any] | None = None) -> str:
    track = board["track"]
    lines = [
        f"# Leaderboard: track `{track['name']}` (v{track['version']}, hash `{track['hash']}`)",
        "",
        f"Budget: {track['budget_steps']} optimizer steps per run. Tasks: "
        f"{', '.join(track['tasks'])}. Ranked by {board['ranked_by']}. "
        f"Built with ctbench {board['ctbench_version']} on {board['built'][:10]}.",
        "",
        "| rank | strategy | ACC | 95% CI | seeds | BWT | forgetting | steps | wall s | params "
        "| items forgotten | sandbox | general ability Δ (lm-eval) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in board["entries"]:
        acc = e["metrics"]["acc"]
        params = ", ".join(f"{k}={v}" for k, v in e["params"].items()) or "—"
        lines.append(
            f"| {e['rank']} | `{e['strategy']}` v{e['version']} | {acc['mean']:.3f} | "
            f"[{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] | {e['n_seeds']} | "
            f"{_fmt(e['metrics']['bwt'])} | {_fmt(e['metrics']['forgetting'])} | "
            f"{_steps(e):.0f} | {_wall(e):.0f} | {params} | "
            f"{_share(e['metrics'].get('items_forgotten'))} | {_sandbox(e)} | {_general(e)} |"
        )
    lines += ["", _provenance(board, markdown=True), ""]
    lines += ["Result hashes per entry are in the JSON next to this file.", ""]
    if findings is not None and findings["track"]["hash"] == track["hash"]:
        from ctbench.results.findings import findings_paths, table_markdown

        details = findings_paths(Path("."), track["name"])["md"].name
        lines += [
            "## Findings: the papers' claims tested on these runs",
            "",
            *table_markdown(findings),
            "",
            f"Each claim's test, inputs and the verdict rule: [{details}]({details}).",
            "",
        ]
    return "\n".join(lines)


def _general(entry: dict[str, Any]) -> str:
    """General ability (lm-eval final − base, mean over the seeds scored), one metric per
    task: the first lm-eval reported in name order; the JSON keeps them all."""
    general = entry.get("general")
    if not general:
        return "—"
    parts = []
    for task, metrics in general["delta"].items():
        if metrics:
            metric, value = next(iter(metrics.items()))
            parts.append(f"{task} {metric.split(',')[0]} {value['mean']:+.3f} (n={value['n']})")
    if not parts:
        return "—"
    protocol = general.get("protocol") or {}
    how = []  # said only where it departs from lm-eval's defaults
    if protocol.get("chat_template"):
        how.append("chat template")
    if protocol.get("num_fewshot") is not None:
        how.append(f"{protocol['num_fewshot']}-shot")
    return (f"({', '.join(how)}) " if how else "") + "; ".join(parts)


def _share(value: float | None) -> str:
    """A share as a percentage; n/a for entries built before it was recorded."""
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _sandbox(entry: dict[str, Any]) -> str:
    """The code sandbox's fence the entry's runs recorded (older results recorded none)."""
    levels = entry.get("sandbox")
    return ", ".join(levels) if levels else "unrecorded"


def _provenance(board: dict[str, Any], *, markdown: bool = False) -> str:
    """Where and how long: the machines the runs recorded and their summed wall time."""
    machines = board.get("machines") or ["(not recorded)"]
    wall = board.get("wall_s_total")
    total = "n/a" if wall is None else f"{wall:.0f} s ({wall / 60:.1f} min)"
    runs = sum(e["n_seeds"] for e in board["entries"])
    quote = (lambda m: f"`{m}`") if markdown else (lambda m: html.escape(m))
    return (
        f"{runs} runs on {'; '.join(quote(m) for m in machines)}; "
        f"wall time of all runs together: {total}."
    )


def _heat(value: float) -> str:
    hue = 120 * max(0.0, min(1.0, value))  # red (0) → green (1)
    return f"background:hsl({hue:.0f},70%,80%)"


def _heatmap(entry: dict[str, Any], tasks: list[str]) -> str:
    example = entry["example"]
    head = "".join(f"<th>{html.escape(t)}</th>" for t in tasks)
    body = "".join(
        "<tr><th>"
        + html.escape(label)
        + "</th>"
        + "".join(f'<td style="{_heat(v)}">{v:.3f}</td>' for v in row)
        + "</tr>"
        for label, row in zip(example["rows"], example["R"], strict=True)
    )
    return f'<table class="heat"><tr><th>after</th>{head}</tr>{body}</table>'


def _figures(entry: dict[str, Any]) -> str:
    """The entry's example-run figures as inline PNGs (data URIs keep the page one file)."""
    from ctbench.results.plots import figures, png_bytes

    parts = []
    for name, fig in figures(entry["example"]).items():
        if name == "r_heatmap" and not entry["example"]["branches"]:
            continue  # the coloured table above already shows a main line without branches
        encoded = base64.b64encode(png_bytes(fig, dpi=80)).decode()
        alt = f"{name.replace('_', ' ')} of {entry['strategy']} seed {entry['example']['seed']}"
        parts.append(
            f'<img class="figure" data-figure="{name}" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{encoded}">'
        )
    return "".join(parts)


_SCRIPT = """
document.querySelectorAll('#board th').forEach((th, column) => {
  th.addEventListener('click', () => {
    const body = document.querySelector('#board tbody');
    const rows = Array.from(body.rows);
    const ascending = th.dataset.order !== 'asc';
    th.dataset.order = ascending ? 'asc' : 'desc';
    rows.sort((a, b) => {
      const x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      const nx = parseFloat(x), ny = parseFloat(y);
      const both = !isNaN(nx) && !isNaN(ny);
      const cmp = both ? nx - ny : String(x).localeCompare(String(y));
      return ascending ? cmp : -cmp;
    });
    rows.forEach(row => body.appendChild(row));
  });
});
"""


def findings_section(board: dict[str, Any], findings: dict[str, Any] | None) -> str:
    """The page's findings section: ``ctbench findings``' claims table, when findings of
    this very track hash were written beside the board; a line saying why not otherwise."""
    from ctbench.results.findings import RULE_SHORT, findings_paths, table_html

    if findings is None:
        return ""
    track = board["track"]
    if findings["track"]["hash"] != track["hash"]:
        return (
            '<section id="findings"><h2>Findings</h2><p>The findings beside this board are of '
            f"track hash <code>{html.escape(findings['track']['hash'])}</code>, not this "
            "board's; rerun <code>ctbench findings</code> on its runs.</p></section>"
        )
    details = findings_paths(Path("."), track["name"])["html"].name
    return (
        '<section id="findings"><h2>Findings: the papers\' claims tested on these runs</h2>'
        f"<p>{findings['n_runs']} runs read. {html.escape(RULE_SHORT[0])} "
        f"{html.escape(RULE_SHORT[1])}</p>{table_html(findings)}"
        f'<p>Every claim\'s test and inputs: <a href="{html.escape(details)}">'
        f"{html.escape(details)}</a>.</p></section>"
    )


def render_html(board: dict[str, Any], findings: dict[str, Any] | None = None) -> str:
    track = board["track"]
    tasks = list(track["tasks"])
    header = "".join(
        f"<th>{name}</th>"
        for name in (
            *("rank", "strategy", "ACC", "95% CI", "seeds", "BWT", "forgetting", "steps"),
            *("items forgotten", "sandbox", "general ability Δ"),
        )
    )
    rows, sections = [], []
    for e in board["entries"]:
        acc = e["metrics"]["acc"]
        cells = [
            (e["rank"], str(e["rank"])),
            (e["strategy"], html.escape(e["strategy"])),
            (acc["mean"], f"{acc['mean']:.3f}"),
            (acc["ci_low"], f"[{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]"),
            (e["n_seeds"], str(e["n_seeds"])),
            (e["metrics"]["bwt"], _fmt(e["metrics"]["bwt"])),
            (e["metrics"]["forgetting"], _fmt(e["metrics"]["forgetting"])),
            (_steps(e), f"{_steps(e):.0f}"),
            (e["metrics"].get("items_forgotten"), _share(e["metrics"].get("items_forgotten"))),
            (_sandbox(e), html.escape(_sandbox(e))),
            (_general(e), html.escape(_general(e))),
        ]
        rows.append(
            '<tr class="entry">'
            + "".join(
                f'<td data-value="{html.escape(str(v if v is not None else ""))}">{text}</td>'
                for v, text in cells
            )
            + "</tr>"
        )
        params = html.escape(json.dumps(e["params"], sort_keys=True))
        sections.append(
            f'<section id="{html.escape(e["strategy"])}"><h2>{e["rank"]}. '
            f"{html.escape(e['strategy'])}</h2><p>params {params}; source hash "
            f"<code>{html.escape(e['source_hash'])}</code>; R and entropy of seed "
            f"{e['example']['seed']}</p><div class=pair>{_heatmap(e, tasks)}</div>"
            f"<div class=figures>{_figures(e)}</div></section>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>ctbench leaderboard: {html.escape(track["name"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 0.5rem 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }}
#board th {{ cursor: pointer; background: #f3f3f3; }}
.pair {{ display: flex; gap: 2rem; align-items: flex-start; flex-wrap: wrap; }}
.figures {{ display: flex; gap: 1rem; flex-wrap: wrap; align-items: flex-start; }}
.figure {{ max-width: 100%; border: 1px solid #eee; }}
</style></head><body>
<h1>ctbench leaderboard — track <code>{html.escape(track["name"])}</code></h1>
<p>Track hash <code>{html.escape(track["hash"])}</code>; {track["budget_steps"]} optimizer steps
per run; tasks {html.escape(", ".join(tasks))}. Ranked by {html.escape(board["ranked_by"])}.
Built with ctbench {html.escape(board["ctbench_version"])}. Click a column to sort.</p>
<p>{_provenance(board)}</p>
<table id="board"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>
{findings_section(board, findings)}
{"".join(sections)}
<script>{_SCRIPT}</script>
</body></html>
"""
