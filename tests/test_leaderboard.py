"""Leaderboard validation refuses edited, foreign, malformed, duplicate and off-budget runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from small_tiny import small_tiny_track

from ctbench.errors import UserError
from ctbench.results.leaderboard import build_leaderboard, find_results, write_leaderboard
from ctbench.runs.config import RunConfig
from ctbench.runs.result import result_content_hash
from ctbench.runs.run import Run, SilentObserver
from ctbench.tracks.track import load_track

# Every test here reads runs trained by the module's fixture.
pytestmark = pytest.mark.slow

BUDGET = 2
ONE_TASK = """
from ctbench.strategy import Stage, Strategy

class OneTask(Strategy):
    'All the budget on one task.'

    name = "{task}-only"

    def schedule(self, ctx):
        yield Stage(mixture={{"{task}": 1.0}}, steps=ctx.budget, name="{task}")
"""


@pytest.fixture(scope="module")
def tiny_track():
    """The tiny track with its evaluation cut (``tests/small_tiny.py``): the boards here
    check validation and rendering, and the runs behind them cost a quarter as much."""
    return load_track(small_tiny_track())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("board")
    strategies = {"joint": "joint"}
    for task in ("math", "creative"):
        (out.parent / f"{task}_only.py").write_text(ONE_TASK.format(task=task))
        strategies[f"{task}-only"] = f"{out.parent / f'{task}_only.py'}:OneTask"
    made = {}
    for name, seed, budget in (
        ("joint", 0, BUDGET),
        ("joint", 1, BUDGET),
        ("joint", 2, 3),
        ("math-only", 0, BUDGET),
        ("creative-only", 0, BUDGET),
    ):
        run = Run.create(
            RunConfig(
                track=small_tiny_track(), strategy=strategies[name], seed=seed, budget=budget
            ),
            out,
            SilentObserver(),
            run_id=f"{name}-s{seed}-b{budget}",
        )
        run.execute()
        made[f"{name}-s{seed}-b{budget}"] = run.dir
    return made


THREE = ("joint-s0-b2", "joint-s1-b2", "math-only-s0-b2", "creative-only-s0-b2")


def known_order(runs) -> list[str]:
    """The three entries by mean ACC over their seeds, worked out from the result files."""
    accs: dict[str, list[float]] = {}
    for key in THREE:
        result = json.loads((runs[key] / "result.json").read_text())
        accs.setdefault(result["strategy"]["name"], []).append(result["metrics"]["acc"])
    means = {name: sum(v) / len(v) for name, v in accs.items()}
    assert len(set(means.values())) == 3  # distinct, so the order is known
    return sorted(means, key=lambda name: -means[name])


def copy_run(source: Path, target: Path, edit=None, rehash: bool = False) -> Path:
    shutil.copytree(source, target)
    if edit is not None:
        result = json.loads((target / "result.json").read_text())
        edit(result)
        if rehash:
            result["result_hash"] = result_content_hash(result)
        (target / "result.json").write_text(json.dumps(result))
    return target


def test_builds_ranks_and_aggregates_seeds(runs, tiny_track, tmp_path):
    board = build_leaderboard(
        tiny_track, [runs["joint-s0-b2"], runs["joint-s1-b2"]], budget=BUDGET, samples=200
    )
    assert board["schema_version"] == 1 and board["track"]["hash"] == tiny_track.content_hash()
    (entry,) = board["entries"]
    results = [
        json.loads((runs[k] / "result.json").read_text()) for k in ("joint-s0-b2", "joint-s1-b2")
    ]
    assert entry["n_seeds"] == 2 and entry["seeds"] == [0, 1] and entry["rank"] == 1
    assert entry["metrics"]["acc"]["mean"] == pytest.approx(
        sum(r["metrics"]["acc"] for r in results) / 2
    )
    assert [r["result_hash"] for r in entry["results"]] == [r["result_hash"] for r in results]
    # joint trains in one stage: no seed defines BWT, so its mean is over none and says so
    assert entry["metrics"]["bwt"] is None
    assert entry["metrics"]["defined_seeds"] == {"bwt": 0, "forgetting": 0, "merge_loss": 0}
    path = write_leaderboard(board, tmp_path)
    assert json.loads(path.read_text())["entries"][0]["strategy"] == "joint"


def _refused(tiny_track, dirs, message):
    with pytest.raises(UserError, match=message):
        build_leaderboard(tiny_track, dirs, budget=BUDGET, samples=50)


def test_edited_metric_is_refused(runs, tiny_track, tmp_path):
    def edit(result):
        result["metrics"]["acc"] += 0.1

    bad = copy_run(runs["joint-s0-b2"], tmp_path / "edited", edit)
    _refused(tiny_track, [bad], "content hash mismatch")


def test_wrong_track_hash_is_refused_even_when_rehashed(runs, tiny_track, tmp_path):
    def edit(result):
        result["track"]["hash"] = "0" * 16

    bad = copy_run(runs["joint-s0-b2"], tmp_path / "foreign", edit, rehash=True)
    _refused(tiny_track, [bad], "track hash 0000000000000000 is not track 'tiny-small-eval'")


def test_schema_violation_is_refused(runs, tiny_track, tmp_path):
    def edit(result):
        del result["matrix"]["R"]

    bad = copy_run(runs["joint-s0-b2"], tmp_path / "schema", edit, rehash=True)
    _refused(tiny_track, [bad], "schema violation: matrix.R is missing")


def test_duplicate_entry_is_refused(runs, tiny_track, tmp_path):
    twin = copy_run(runs["joint-s0-b2"], tmp_path / "twin")
    _refused(tiny_track, [runs["joint-s0-b2"], twin], "duplicate entry: joint seed 0")


def test_over_budget_compute_is_refused(runs, tiny_track, tmp_path):
    _refused(tiny_track, [runs["joint-s2-b3"]], "over budget or off budget: the run had 3 steps")

    def edit(result):  # claims the right budget but booked more steps than it reports
        result["budget"]["steps"] = BUDGET
        result["budget"]["spent_steps"] = BUDGET

    sneaky = copy_run(runs["joint-s2-b3"], tmp_path / "sneaky", edit, rehash=True)
    _refused(tiny_track, [sneaky], "compute does not add up: 3 optimizer steps booked")


def test_three_entries_rank_by_mean_acc(runs, tiny_track):
    board = build_leaderboard(tiny_track, [runs[k] for k in THREE], budget=BUDGET, samples=50)
    order = known_order(runs)
    assert [e["strategy"] for e in board["entries"]] == order
    assert [e["rank"] for e in board["entries"]] == [1, 2, 3]
    seeds = [e["n_seeds"] for e in board["entries"]]
    assert seeds == [2 if name == "joint" else 1 for name in order]


def test_find_results_reads_folders_of_runs(runs, tmp_path):
    parent = next(iter(runs.values())).parent
    assert len(find_results([parent])) == len(runs)
    with pytest.raises(UserError, match="no finished runs"):
        find_results([tmp_path])


def test_render_markdown_and_html_show_every_entry(runs, tiny_track, tmp_path):
    from html.parser import HTMLParser

    from ctbench.results.leaderboard_page import render_html, render_markdown

    board = build_leaderboard(tiny_track, [runs[k] for k in THREE], budget=BUDGET, samples=50)
    order = known_order(runs)
    markdown = render_markdown(board)
    for rank, name in enumerate(order, start=1):
        assert f"| {rank} | `{name}` v" in markdown
    assert board["track"]["hash"] in markdown

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.entries, self.sections, self.external, self.figures = 0, [], [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "tr" and attrs.get("class") == "entry":
                self.entries += 1
            if tag == "section":
                self.sections.append(attrs["id"])
            if tag == "img":
                self.figures.append(attrs.get("data-figure"))
            src = attrs.get("src") or ""
            if (src and not src.startswith("data:")) or (tag == "link" and attrs.get("href")):
                self.external.append(tag)

    page = Collect()
    page.feed(render_html(board))
    assert page.entries == len(board["entries"]) == 3
    assert page.sections == order and page.external == []  # self-contained, ranked
    # One stage each: item transitions and entropy (R is the coloured table; forgetting is
    # undefined after a single stage).
    assert page.figures == ["items", "entropy"] * 3
    assert "wall time of all runs together" in markdown and board["machines"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--dump-dom",
]


def load_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and every console message it logged."""
    import subprocess

    proc = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_page_loads_in_headless_chromium_without_console_errors(runs, tiny_track, tmp_path):
    from ctbench.results.leaderboard_page import render_html

    board = build_leaderboard(tiny_track, [runs[k] for k in THREE], budget=BUDGET, samples=50)
    page = tmp_path / "tiny.html"
    # Test-only probe: after load, record each figure's decoded width in the DOM.
    probe = (
        "<script>window.addEventListener('load', () => document.querySelectorAll('img')"
        ".forEach(i => i.dataset.width = i.naturalWidth));</script></body>"
    )
    page.write_text(render_html(board).replace("</body>", probe))
    dom, console = load_in_chromium(page, tmp_path / "profile")
    assert console == []
    assert dom.count('class="entry"') == len(board["entries"])
    widths = re.findall(r'data-width="(\d+)"', dom)
    assert len(widths) == dom.count("<img") >= 1 and all(int(w) > 100 for w in widths)
    assert all(f'<section id="{e["strategy"]}">' in dom for e in board["entries"])
    assert dom.count('class="entry"') == 3
    # The check can fail: the same page with a script error is caught.
    broken = tmp_path / "broken.html"
    broken.write_text(render_html(board).replace("<script>", "<script>undefinedCall();", 1))
    _, console = load_in_chromium(broken, tmp_path / "profile2")
    assert any("undefinedCall" in line for line in console)


# Test-only probe: click column headers in turn and record the strategy column after each.
SORT_PROBE = """<script>
window.addEventListener('load', () => {
  const heads = Array.from(document.querySelectorAll('#board th'));
  const column = name => heads.findIndex(th => th.textContent === name);
  const record = () => Array.from(document.querySelectorAll('#board tbody tr'))
    .map(row => row.cells[column('strategy')].dataset.value).join(',');
  const seen = [record()];
  for (const name of ['ACC', 'ACC', 'strategy', 'seeds', 'rank']) {
    heads[column(name)].click();
    seen.push(record());
  }
  document.body.dataset.sorted = seen.join(';');
});
</script></body>"""


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_page_columns_sort_in_headless_chromium(runs, tiny_track, tmp_path):
    from ctbench.results.leaderboard_page import render_html

    board = build_leaderboard(tiny_track, [runs[k] for k in THREE], budget=BUDGET, samples=50)
    order = known_order(runs)
    page = tmp_path / "tiny.html"
    page.write_text(render_html(board).replace("</body>", SORT_PROBE))
    dom, console = load_in_chromium(page, tmp_path / "profile")
    assert console == []
    found = re.search(r'data-sorted="([^"]*)"', dom)
    assert found is not None, "the sort probe did not run"
    seen = [step.split(",") for step in found.group(1).split(";")]
    seeds = {e["strategy"]: e["n_seeds"] for e in board["entries"]}
    assert seen == [
        order,  # as built: by rank
        order[::-1],  # ACC, first click: ascending
        order,  # ACC again: descending
        sorted(order),  # strategy: alphabetical
        sorted(sorted(order), key=lambda name: seeds[name]),  # seeds: numeric, stable
        order,  # rank: ascending
    ]


def test_general_ability_is_averaged_over_the_seeds_that_have_it(tmp_path):
    """eval-general's final − base reaches the entry (mean over the scored seeds) and the
    page; a general_eval.json of another result is refused by name."""
    from ctbench.results.leaderboard import general_ability
    from ctbench.results.leaderboard_page import _general

    runs = []
    for seed, delta in ((0, 0.10), (1, -0.02), (2, None)):
        run_dir = tmp_path / f"s{seed}"
        run_dir.mkdir()
        result = {"run_id": f"r{seed}", "result_hash": f"h{seed}", "seed": seed}
        if delta is not None:
            summary = {
                "run_id": f"r{seed}",
                "result_hash": f"h{seed}",
                "lm_eval_version": "0.4.13",
                "limit": None,
                "delta": {"arc": {"acc,none": delta, "acc_norm,none": 0.0}, "gsm": {"em": None}},
            }
            (run_dir / "general_eval.json").write_text(json.dumps(summary))
        runs.append((run_dir, result))
    general = general_ability(runs)
    assert general["seeds"] == [0, 1] and general["lm_eval_versions"] == ["0.4.13"]
    assert general["delta"]["arc"]["acc,none"] == {"mean": pytest.approx(0.04), "n": 2}
    assert "gsm" not in general["delta"]  # no number to average
    assert _general({"general": general}) == "arc acc +0.040 (n=2)"
    assert general_ability(runs[2:]) is None and _general({"general": None}) == "—"

    (runs[0][0] / "general_eval.json").write_text(
        json.dumps({"run_id": "other", "result_hash": "x", "delta": {}})
    )
    with pytest.raises(UserError, match=r"scores run 'other'.*ctbench eval-general"):
        general_ability(runs)


def test_general_ability_refuses_seeds_scored_under_different_protocols(tmp_path):
    """A 5-shot chat-template delta and a zero-shot plain one measure different things; a
    file from before the protocol was recorded counts as lm-eval's defaults."""
    from ctbench.results.leaderboard import general_ability
    from ctbench.results.leaderboard_page import _general

    chat = {"num_fewshot": 5, "chat_template": True}
    runs = []
    for seed, protocol in ((0, chat), (1, chat), (2, None)):
        run_dir = tmp_path / f"s{seed}"
        run_dir.mkdir()
        result = {"run_id": f"r{seed}", "result_hash": f"h{seed}", "seed": seed}
        summary = {"run_id": f"r{seed}", "result_hash": f"h{seed}", "delta": {"arc": {"acc": 0.1}}}
        if protocol is not None:
            summary["protocol"] = protocol
        (run_dir / "general_eval.json").write_text(json.dumps(summary))
        runs.append((run_dir, result))
    general = general_ability(runs[:2])
    assert general["protocol"] == chat
    assert _general({"general": general}) == "(chat template, 5-shot) arc acc +0.100 (n=2)"
    assert general_ability(runs[2:])["protocol"] == {"num_fewshot": None, "chat_template": False}
    with pytest.raises(UserError, match=r"s2/general_eval.json: scored under protocol .*s0"):
        general_ability(runs)
