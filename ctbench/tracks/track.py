"""Tracks: a frozen benchmark = base model + task list + budget + engine settings + eval.

``tasks/tracks/<name>.yaml`` is parsed strictly (unknown keys are errors naming the file
and key) into a :class:`TrackSpec`; its hash covers the track file's content *and* every
task's content, so a result can prove which benchmark it was run on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ctbench.common.yamlspec import Fields, load_yaml_mapping
from ctbench.errors import UserError
from ctbench.tracks.engine_settings import LoraSettings, MemorySettings, RLConfig, SFTConfig
from ctbench.tracks.model import TinyModelSpec
from ctbench.tracks.model_source import ModelSource, portable_source, source_from_fields
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
    """Either the embedded tiny model (built + pre-trained from a seed) or a model *source*
    (a Hugging Face name or folder, a GGUF file, a GGUF file in an installed package; see
    ``ctbench.tracks.model_source``), prepared once into the cache and loaded from there."""

    tiny: TinyModelSpec | None = None
    init_seed: int = 0
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    source: ModelSource | None = None
    shipped: str | None = None  # a pre-built checkpoint folder, relative to the track file
    lora: LoraSettings | None = None  # train peft adapters instead of every weight


@dataclass(frozen=True)
class EvalSettings:
    entropy_prompts: int = 48
    entropy_samples: int = 4
    # Score each task on the first N items of its eval set only (None: all of them). For
    # smoke runs and tests, as lm-eval's --limit: scores get noisier, so results record the
    # size used (task_info.<task>.eval_size) and the track hash changes with it.
    max_items: int | None = None


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
    # The chat-format default of the track's tasks (a task's own ``chat:`` wins) and the
    # system prompt of its chat tasks that set none.
    chat: bool = False
    system_prompt: str | None = None
    memory: MemorySettings = field(default_factory=MemorySettings)

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
    source = source_from_fields(model_fields, base_dir=path.parent)
    tiny = None
    if "tiny" in model_fields.data:
        tiny = _dataclass_from(model_fields.sub("tiny"), TinyModelSpec)
        for key, value in asdict(tiny).items():
            if value <= 0:
                raise model_fields.error(f"tiny.{key}", f"expected a positive size, got {value}")
        if tiny.hidden_size % tiny.num_heads:
            raise model_fields.error(
                "tiny.num_heads", f"expected a divisor of hidden_size ({tiny.hidden_size})"
            )
    if (tiny is None) == (source is None):
        raise model_fields.error(
            "", "expected exactly one of model.tiny or a model source (hf, gguf or package)"
        )
    init_seed = model_fields.get("init_seed", int, 0)
    shipped = model_fields.get("shipped", (str, type(None)), None)
    pretrain = _dataclass_from(model_fields.sub("pretrain"), PretrainSpec)
    lora = _lora_from(model_fields.sub("lora"), path) if "lora" in model_fields.data else None
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
    eval_fields = top.sub("eval")
    max_items = eval_fields.get("max_items", (int, type(None)), None)
    if max_items is not None and max_items <= 0:
        raise eval_fields.error("max_items", f"expected a positive item count, got {max_items}")
    evaluation = _dataclass_from(eval_fields, EvalSettings, skip=("max_items",))
    evaluation = replace(evaluation, max_items=max_items)
    chat = top.get("chat", bool, False)
    system_prompt = top.get("system_prompt", (str, type(None)), None)
    memory = _memory_from(top.sub("memory"), path)
    if memory.gradient_checkpointing and tiny is not None:
        raise top.error("memory.gradient_checkpointing", "the tiny model does not need it")
    top.finish()
    return TrackSpec(
        name=name,
        version=version,
        description=description,
        model=ModelSpec(
            tiny=tiny,
            init_seed=init_seed,
            pretrain=pretrain,
            source=source,
            shipped=shipped,
            lora=lora,
        ),
        task_names=tuple(task_names),
        steps_per_task=steps_per_task,
        rl=rl,
        sft=sft,
        eval=evaluation,
        file=str(path),
        chat=chat,
        system_prompt=system_prompt,
        memory=memory,
    )


def _lora_from(fields: Fields, path: Path) -> LoraSettings:
    defaults = LoraSettings()
    modules = fields.get("target_modules", list, list(defaults.target_modules))
    if not modules or not all(isinstance(m, str) and m for m in modules):
        raise fields.error("target_modules", "expected a non-empty list of module names")
    try:
        settings = LoraSettings(
            r=fields.positive("r", int, defaults.r),
            alpha=fields.positive("alpha", float, defaults.alpha),
            dropout=fields.get("dropout", float, defaults.dropout),
            target_modules=tuple(modules),
        )
    except UserError as exc:
        raise UserError(exc.message, where=f"{path}: {exc.where}") from exc
    fields.finish()
    return settings


def _memory_from(fields: Fields, path: Path) -> MemorySettings:
    try:
        settings = MemorySettings(
            micro_batch=fields.get("micro_batch", int, 0),
            gradient_checkpointing=fields.get("gradient_checkpointing", bool, False),
            precision=fields.get("precision", str, "fp32", choices=("fp32", "bf16")),
        )
    except UserError as exc:
        raise UserError(exc.message, where=f"{path}: {exc.where}") from exc
    fields.finish()
    return settings


def available_tracks() -> dict[str, Path]:
    return {p.stem: p for p in sorted(tracks_dir().glob("*.yaml"))}


def is_track_path(name_or_path: str) -> bool:
    """A track named by file (``path/to/x.yaml``) rather than by registry name (``tiny``)."""
    return Path(name_or_path).suffix in (".yaml", ".yml") or "/" in name_or_path


def find_track_spec(name_or_path: str) -> TrackSpec:
    candidate = Path(name_or_path)
    if is_track_path(name_or_path):
        if not candidate.is_file():
            raise UserError("no such track file", where=f"--track {name_or_path}")
        return parse_track_spec(candidate.resolve())
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
        """Hash of the track spec and every task. The model source enters as its portable
        description (a package file, a hub name, a path relative to the track), never as a
        path on this machine, so the same track hashes alike everywhere; which weights it
        resolved to is the result's ``base.weights_sha256``. Keys added since the tiny
        track's results were published enter only when set, so its hash is unchanged."""
        track = {k: v for k, v in asdict(self.spec).items() if k != "file"}
        model = track["model"]
        del model["source"]
        if self.spec.model.source is None:
            model["hf"] = None  # the key a track without a source always hashed with
        else:
            model["source"] = portable_source(self.spec.model.source, Path(self.spec.file).parent)
        if not track["chat"]:
            del track["chat"]
        if track["system_prompt"] is None:
            del track["system_prompt"]
        if model["lora"] is None:
            del model["lora"]
        if track["eval"]["max_items"] is None:
            del track["eval"]["max_items"]
        # How a step is computed (micro-batches, checkpointing) gives the same numbers within
        # rounding, so it is not part of the benchmark's identity; precision is.
        memory = track.pop("memory")
        if memory["precision"] != "fp32":
            track["precision"] = memory["precision"]
        payload = {
            "track": track,
            "tasks": {name: t.content_hash() for name, t in self.tasks.items()},
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def track_task_dir(spec: TrackSpec) -> Path:
    """Where a track's tasks live: ``<root>/tasks/tracks/x.yaml`` reads ``<root>/tasks/``, so a
    user's own track folder outside the repository brings its own task files."""
    return Path(spec.file).parent.parent


def track_task_specs(spec: TrackSpec) -> dict[str, TaskSpec]:
    """The track's task specs, found beside the track; an unknown name names the track file."""
    specs = {}
    for name in spec.task_names:
        try:
            specs[name] = find_task_spec(name, track_task_dir(spec))
        except UserError as exc:
            if exc.where != "task":
                raise
            raise UserError(
                f"{exc.message} (looked in {track_task_dir(spec)})", where=f"{spec.file}: tasks"
            ) from exc
    return specs


def with_track_defaults(task: TaskSpec, track: TrackSpec) -> TaskSpec:
    """A task spec with the track's chat defaults filled in where the task sets none, so
    everything downstream reads one settled ``chat`` and ``system_prompt`` per task."""
    chat = track.chat if task.chat is None else task.chat
    system = task.system_prompt if task.system_prompt is not None else track.system_prompt
    if chat and track.model.tiny is not None:
        raise UserError(
            "the chat format needs a model with a chat template; the tiny model's character "
            "tokenizer has none (drop chat: true or name a model source)",
            where=f"{task.file}: chat" if task.chat else f"{track.file}: chat",
        )
    return replace(task, chat=chat, system_prompt=system if chat else None)


def load_track(name_or_path: str) -> Track:
    spec = find_track_spec(name_or_path)
    tasks = {
        name: load_task(with_track_defaults(task, spec))
        for name, task in track_task_specs(spec).items()
    }
    return Track(spec=spec, tasks=tasks)
