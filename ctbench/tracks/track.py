"""Tracks: a frozen benchmark = base model + task list + budget + engine settings + eval.

``tasks/tracks/<name>.yaml`` is parsed strictly (unknown keys are errors naming the file
and key) into a :class:`TrackSpec`; its hash covers the track file's content *and* every
task's content, so a result can prove which benchmark it was run on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctbench.common.yamlspec import Fields, load_yaml_mapping
from ctbench.errors import UserError
from ctbench.tracks.engine_settings import RLConfig, SFTConfig
from ctbench.tracks.model import TinyModelSpec
from ctbench.tracks.resources import tracks_dir
from ctbench.tracks.taskdata import Task, load_task
from ctbench.tracks.taskspec import TaskSpec, find_task_spec


@dataclass(frozen=True)
class PretrainSpec:
    """The tiny base model's short pre-training on the task formats
    (see ``ctbench.training.tiny_base``)."""

    max_steps: int = 1200
    lr: float = 2e-3
    rows: int = 32
    row_tokens: int = 64
    check_every: int = 100
    dev_items: int = 64
    band_low: float = 0.30
    band_high: float = 0.45
    patience: int = 12  # stop after this many checks without getting closer to the band
    seed: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """Either the embedded tiny model (built + pre-trained from a seed) or a HF model."""

    tiny: TinyModelSpec | None = None
    init_seed: int = 0
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    hf: str | None = None
    shipped: str | None = None  # a pre-built checkpoint folder, relative to the track file


@dataclass(frozen=True)
class EvalSettings:
    entropy_prompts: int = 48
    entropy_samples: int = 4


@dataclass(frozen=True)
class TrackSpec:
    name: str
    version: int
    description: str
    model: ModelSpec
    task_names: tuple[str, ...]
    steps_per_task: int
    rl: RLConfig
    sft: SFTConfig
    eval: EvalSettings
    file: str = ""

    @property
    def budget_steps(self) -> int:
        """The default total budget B in optimizer steps (per-task budget × tasks)."""
        return self.steps_per_task * len(self.task_names)


def _dataclass_from(fields: Fields, cls: type, *, skip: tuple[str, ...] = ()) -> Any:
    """Fill a flat dataclass from a mapping, type-checked against the defaults."""
    defaults = cls()
    values = {}
    for name, default in asdict(defaults).items():
        if name in skip:
            continue
        kind = type(default)
        values[name] = fields.get(name, float if kind is float else kind, default)
    fields.finish()
    return cls(**values)


def parse_track_spec(path: Path) -> TrackSpec:
    top = Fields(load_yaml_mapping(path), path=path)
    name = top.get("name", str)
    version = top.get("version", int)
    description = top.get("description", str, "")
    model_fields = top.sub("model")
    hf = model_fields.get("hf", (str, type(None)), None)
    tiny = None
    if "tiny" in model_fields.data:
        tiny = _dataclass_from(model_fields.sub("tiny"), TinyModelSpec)
    if (tiny is None) == (hf is None):
        raise model_fields.error("", "expected exactly one of model.tiny or model.hf")
    init_seed = model_fields.get("init_seed", int, 0)
    shipped = model_fields.get("shipped", (str, type(None)), None)
    pretrain = _dataclass_from(model_fields.sub("pretrain"), PretrainSpec)
    model_fields.finish()
    task_names = top.get("tasks", list)
    if not task_names or not all(isinstance(t, str) for t in task_names):
        raise top.error("tasks", "expected a non-empty list of task names")
    if len(set(task_names)) != len(task_names):
        raise top.error("tasks", "a task is listed twice")
    budget = top.sub("budget")
    steps_per_task = budget.positive("steps_per_task", int)
    budget.finish()
    rl = _dataclass_from(top.sub("rl"), RLConfig)
    if rl.aggregation not in ("token-mean", "seq-mean-token-mean"):
        raise top.error("rl.aggregation", "expected token-mean or seq-mean-token-mean")
    sft = _dataclass_from(top.sub("sft"), SFTConfig)
    evaluation = _dataclass_from(top.sub("eval"), EvalSettings)
    top.finish()
    return TrackSpec(
        name=name,
        version=version,
        description=description,
        model=ModelSpec(tiny=tiny, init_seed=init_seed, pretrain=pretrain, hf=hf, shipped=shipped),
        task_names=tuple(task_names),
        steps_per_task=steps_per_task,
        rl=rl,
        sft=sft,
        eval=evaluation,
        file=str(path),
    )


def available_tracks() -> dict[str, Path]:
    return {p.stem: p for p in sorted(tracks_dir().glob("*.yaml"))}


def find_track_spec(name_or_path: str) -> TrackSpec:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return parse_track_spec(candidate)
    tracks = available_tracks()
    if name_or_path not in tracks:
        raise UserError(
            f"unknown track {name_or_path!r}; known tracks: {', '.join(tracks) or '(none)'}",
            where="--track",
        )
    return parse_track_spec(tracks[name_or_path])


@dataclass(frozen=True)
class Track:
    spec: TrackSpec
    tasks: dict[str, Task]

    @property
    def task_specs(self) -> list[TaskSpec]:
        return [t.spec for t in self.tasks.values()]

    def content_hash(self) -> str:
        payload = {
            "track": {k: v for k, v in asdict(self.spec).items() if k != "file"},
            "tasks": {name: t.content_hash() for name, t in self.tasks.items()},
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_track(name_or_path: str) -> Track:
    spec = find_track_spec(name_or_path)
    task_dir = Path(spec.file).parent.parent
    tasks = {name: load_task(find_task_spec(name, task_dir)) for name in spec.task_names}
    return Track(spec=spec, tasks=tasks)
