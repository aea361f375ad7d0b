"""Task specifications: ``tasks/<name>.yaml`` parsed into validated, frozen dataclasses.

Tasks are data (the lm-evaluation-harness habit): a task file names its domain, where its
items come from (a seeded generator, a Hugging Face dataset, or a local jsonl/parquet
file with a column mapping), how a prompt is rendered, how a completion is rewarded and how
the task is evaluated. Nothing here runs a model.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ctbench.common.yamlspec import Fields, load_yaml_mapping
from ctbench.errors import UserError
from ctbench.tracks.resources import tasks_dir
from ctbench.tracks.transforms import parse_transforms

REWARD_KINDS = ("exact", "numeric", "choice", "code", "judge")
JUDGE_TYPES = ("rubric", "embedding", "llm")
# The answer extraction rules (``ctbench.tracks.answers``) each reward kind accepts as
# ``reward.extract``: a rule must produce what the reward compares (a number for numeric, an
# option for choice, a program for code). A judge reads the whole text, so it takes none.
EXTRACT_RULES: dict[str, tuple[str, ...]] = {
    "exact": ("last_number", "boxed", "after_hashes", "code_block", "function_block"),
    "numeric": ("last_number", "boxed", "after_hashes"),
    "choice": ("choice",),
    "code": ("code_block", "function_block"),
}
Domain = Literal["structured", "open"]


@dataclass(frozen=True)
class SourceSpec:
    """Where items come from: exactly one of generator, dataset (hub name) or path."""

    generator: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    path: str | None = None
    subset: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    columns: dict[str, str] = field(default_factory=dict)
    # A hub dataset's commit (``datasets.load_dataset(revision=...)``); None: its main branch.
    revision: str | None = None
    # New field -> transform spec, validated at parse time (``ctbench.tracks.transforms``);
    # kept as written so the task hash covers it.
    transforms: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardSpec:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalSpec:
    size: int
    decoding: Literal["greedy", "sample"] = "greedy"
    samples_per_prompt: int = 1
    temperature: float = 1.0


@dataclass(frozen=True)
class TaskSpec:
    name: str
    version: int
    domain: Domain
    description: str
    source: SourceSpec
    prompt_template: str
    reward: RewardSpec
    eval: EvalSpec
    max_new_tokens: int
    answer_field: str = "answer"
    expert_field: str = "demonstration"
    file: str = ""
    # Chat format: render the prompt through the model's chat template (None: the track's
    # default decides, see ``ctbench.tracks.track.load_track``), with this system prompt
    # (None: the template's own default).
    chat: bool | None = None
    system_prompt: str | None = None

    def content_hash(self) -> str:
        """Hash of everything that defines the task (not where its file happens to live).

        The chat keys, a dataset's revision and its transforms enter only when set: a task
        without them hashes exactly as it did before they existed, so the published
        tiny-track hashes stay valid."""
        payload = {k: v for k, v in asdict(self).items() if k != "file"}
        if not payload["chat"]:
            del payload["chat"]
        if payload["system_prompt"] is None:
            del payload["system_prompt"]
        for key, unset in (("revision", None), ("transforms", {})):
            if payload["source"][key] == unset:
                del payload["source"][key]
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _check_reward_params(rew: Fields, kind: str, path: Path) -> None:
    """The reward's own keys, strictly: a typo (``tolerence:``) or a wrong type
    (``tolerance: abc``) is an error naming the file and key, not a silent default. Deeper
    checks that need the reward's code (a regex, sandbox limits, options on the items) run
    when the reward is built, which ``Run.create`` does before any run folder exists."""
    if kind == "numeric":
        tolerance = rew.get("tolerance", float, 1e-6)
        if tolerance < 0:
            raise rew.error("tolerance", f"expected a number >= 0, got {tolerance!r}")
    elif kind == "choice":
        rew.get("options_field", str, "options")
    elif kind == "code":
        # ``tests``: the program defines a function that hidden tests of each item call
        # (``tests_field``); see ``ctbench.scoring.rewards.CodeExecution``.
        rew.get("mode", str, "expression", choices=("expression", "program", "tests"))
        rew.get("tests_field", str, "tests")
        rew.get("pattern", (str, type(None)), None)
        rew.get("digits_field", (str, type(None)), None)
        rew.get("limits", dict, {})
    elif kind == "judge":
        judge = rew.sub("judge")
        judge.get("type", str, choices=JUDGE_TYPES)
        judge.used.update(judge.data)  # the judge's own options are checked by the judge
    if kind in EXTRACT_RULES:
        rew.get("extract", str, None, choices=EXTRACT_RULES[kind])
    rew.finish()


def parse_task_spec(path: Path) -> TaskSpec:
    top = Fields(load_yaml_mapping(path), path=path)
    name = top.get("name", str)
    version = top.get("version", int)
    domain = top.get("domain", str, choices=("structured", "open"))
    description = top.get("description", str, "")
    prompt_template = top.get("prompt_template", str)
    if not _template_fields(prompt_template):
        raise top.error("prompt_template", "expected at least one {field} placeholder")
    max_new_tokens = top.positive("max_new_tokens", int)
    answer_field = top.get("answer_field", str, "answer")
    expert_field = top.get("expert_field", str, "demonstration")
    chat = top.get("chat", (bool, type(None)), None)
    system_prompt = top.get("system_prompt", (str, type(None)), None)
    if system_prompt is not None and chat is False:
        raise top.error("system_prompt", "a system prompt needs the chat format (chat: true)")

    src = top.sub("source")
    source = SourceSpec(
        generator=src.get("generator", (str, type(None)), None),
        params=src.get("params", dict, {}),
        dataset=src.get("dataset", (str, type(None)), None),
        path=src.get("path", (str, type(None)), None),
        subset=src.get("subset", (str, type(None)), None),
        train_split=src.get("train_split", str, "train"),
        eval_split=src.get("eval_split", str, "test"),
        columns=src.get("columns", dict, {}),
        revision=src.get("revision", (str, type(None)), None),
        transforms=src.get("transforms", dict, {}),
    )
    chosen = [k for k in ("generator", "dataset", "path") if getattr(source, k)]
    if len(chosen) != 1:
        raise src.error("", "expected exactly one of generator, dataset or path")
    if source.revision is not None:
        if source.dataset is None:
            raise src.error("revision", "a revision applies only to a hub dataset (dataset: ...)")
        if not source.revision.strip():
            raise src.error("revision", "expected a commit, branch or tag, got an empty string")
    if source.transforms:
        if source.generator is not None:
            raise src.error("transforms", "transforms apply to dataset rows, not a generator")
        parse_transforms(src.sub("transforms"))  # validated now; applied by load_task
    src.finish()

    rew = top.sub("reward")
    kind = rew.get("kind", str, choices=REWARD_KINDS)
    _check_reward_params(rew, kind, path)
    reward = RewardSpec(kind=kind, params={k: v for k, v in rew.data.items() if k != "kind"})

    ev = top.sub("eval")
    evaluation = EvalSpec(
        size=ev.positive("size", int),
        decoding=ev.get("decoding", str, "greedy", choices=("greedy", "sample")),
        samples_per_prompt=ev.positive("samples_per_prompt", int, 1),
        temperature=ev.positive("temperature", float, 1.0),
    )
    ev.finish()
    top.finish()
    return TaskSpec(
        name=name,
        version=version,
        domain=domain,  # type: ignore[arg-type]
        description=description,
        source=source,
        prompt_template=prompt_template,
        reward=reward,
        eval=evaluation,
        max_new_tokens=max_new_tokens,
        answer_field=answer_field,
        expert_field=expert_field,
        file=str(path),
        chat=chat,
        system_prompt=system_prompt,
    )


def available_task_files(root: Path | None = None) -> dict[str, Path]:
    """Task name (file stem) → file, for every ``*.yaml`` directly under the tasks folder."""
    folder = root or tasks_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def find_task_spec(name_or_path: str, root: Path | None = None) -> TaskSpec:
    """A task by registry name (``math``) or by a path to its YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return parse_task_spec(candidate)
    files = available_task_files(root)
    if name_or_path not in files:
        known = ", ".join(files) or "(none)"
        raise UserError(f"unknown task {name_or_path!r}; known tasks: {known}", where="task")
    spec = parse_task_spec(files[name_or_path])
    if spec.name != name_or_path:
        raise UserError(
            f"name {spec.name!r} differs from the file name {name_or_path!r}",
            where=str(files[name_or_path]),
        )
    return spec
