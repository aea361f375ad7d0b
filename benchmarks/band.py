"""Measure the band of a track: base score, chance level and single-task RL gain per task.

    python benchmarks/band.py [--track tiny] [--seeds 0,1] [--steps N] [--tasks a,b]

Prints JSON (one row per task). The README's band table comes from this script.
"""

from __future__ import annotations

import json
import sys
import time

import click

from ctbench.runs.calibration import BAND_HIGH, BAND_LOW, MIN_GAIN, measure_band
from ctbench.runs.provenance import environment
from ctbench.tracks.track import load_track


@click.command()
@click.option("--track", default="tiny")
@click.option("--seeds", default="0", help="Comma-separated RL seeds.")
@click.option(
    "--steps",
    type=int,
    default=None,
    help="RL steps (default: the track's per-task budget; 0: base scores only).",
)
@click.option("--tasks", default=None, help="Comma-separated subset of the track's tasks.")
def main(track: str, seeds: str, steps: int | None, tasks: str | None) -> None:
    started = time.perf_counter()
    env = environment("cpu")  # at the start: the commit that ran, not the one at the end
    the_track = load_track(track)
    rows = measure_band(
        the_track,
        [int(s) for s in seeds.split(",")],
        steps,
        task_names=tasks.split(",") if tasks else None,
        on_step=lambda task, log: print(
            json.dumps(
                {
                    "task": task,
                    "step": log.step,
                    "reward": log.reward,
                    "elapsed_s": round(time.perf_counter() - started, 1),
                }
            ),
            file=sys.stderr,
            flush=True,
        ),
        on_row=lambda row: print(json.dumps(row.to_json()), file=sys.stderr, flush=True),
    )
    report = {
        "track": track,
        "track_hash": the_track.content_hash(),
        "band": {"low": BAND_LOW, "high": BAND_HIGH, "min_gain": MIN_GAIN},
        "steps": the_track.spec.steps_per_task if steps is None else steps,
        "tasks_measured": tasks.split(",") if tasks else list(the_track.tasks),
        "tasks": [r.to_json() for r in rows],
        "all_in_band": all(r.in_band for r in rows),
        "wall_s": time.perf_counter() - started,
        "command": " ".join(["python", "benchmarks/band.py", *sys.argv[1:]]),
        "env": env,
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
