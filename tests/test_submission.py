"""Submission bundles: a real submitted strategy run on two seeds, then tampered with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ctbench.errors import UserError
from ctbench.results.submission import create_bundle, validate_bundle
from ctbench.runs.run import SilentObserver

# Every test here reads runs trained by the module's fixture.
pytestmark = pytest.mark.slow

STRATEGY = """
from ctbench.strategy import Stage, Strategy

class MathOnly(Strategy):
    '''One RL stage on math.'''

    name = "math-only"

    def schedule(self, ctx):
        yield Stage(mixture={"math": 1.0}, steps=ctx.budget, name="math")
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("submit")
    (folder / "math_only.py").write_text(STRATEGY)
    return create_bundle(
        f"{folder / 'math_only.py'}:MathOnly",
        track_name="tiny",
        seeds=[0, 1],
        out=folder / "out",
        observer=SilentObserver(),
        budget=1,
    )


def test_bundle_holds_source_runs_and_entry(bundle, tiny_track):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["seeds"] == [0, 1] and manifest["entry"]["n_seeds"] == 2
    assert (bundle / "strategy" / "math_only.py").exists()
    assert not (bundle / "work").exists()
    runs = validate_bundle(bundle, tiny_track, 1)
    assert [r.name for r in runs] == [run["run_id"] for run in manifest["runs"]]


def tampered(bundle: Path, target: Path, change) -> Path:
    copy = shutil.copytree(bundle, target)
    change(copy)
    return copy


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda b: _edit_json(
                next((b / "runs").glob("*/result.json")),
                lambda r: r["metrics"].update(acc=r["metrics"]["acc"] + 0.2),
            ),
            "content hash mismatch",
        ),
        (
            lambda b: _edit_json(b / "manifest.json", lambda m: m["track"].update(hash="f" * 16)),
            "bundle was made for track hash ffffffffffffffff",
        ),
        (
            lambda b: _edit_json(b / "manifest.json", lambda m: m["runs"].pop()),
            "missing seeds: [1]",
        ),
        (
            lambda b: (b / "strategy" / "math_only.py").write_text(STRATEGY + "\n# edited\n"),
            "strategy source does not match its source_hash",
        ),
    ],
    ids=["edited-metric", "other-track", "missing-seed", "edited-source"],
)
def test_tampered_bundles_are_refused(bundle, tiny_track, tmp_path, change, message):
    bad = tampered(bundle, tmp_path / "bad", change)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_bundle(bad, tiny_track, 1)
