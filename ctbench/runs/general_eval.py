"""General ability through lm-eval: a finished run's base model and final model, scored on
lm-eval tasks, written to ``<run>/general_eval.json``.

Post-training on a handful of tasks can cost ability the benchmark's own tasks never ask
for; this measures it on whatever lm-eval measures (a registry task such as ``arc_easy``,
or a local task YAML under ``--include-path``). Both models go through the same harness
with the same fixed seeds, so ``delta`` (final − base) is the effect of the run alone.

How the models are prompted is part of what is measured, so it is chosen once and recorded
(``protocol`` in the output): ``num_fewshot`` overrides every task's own few-shot count, and
``chat_template`` renders each request through the tokenizer's chat template, few-shot
examples as turns (lm-eval's ``apply_chat_template`` and ``fewshot_as_multiturn``), which is
how an instruction-tuned model is meant to be asked. By default the template is used when
the run's track is a chat track and its tokenizer has one, so a chat model is scored the way
it was trained. The leaderboard refuses to average seeds scored under different protocols.

The final model is the run's ``final-model/`` (adapters over the track's base, folded into
plain weights first, or full weights); a run whose main line trained nothing (``final_model``
null in result.json) has the base as its final model, scored once.

lm-eval is an optional extra (``pip install 'ctbench[eval]'``): it is imported here, inside
functions only, so ctbench runs without it.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ctbench.common.atomic import write_json_atomic
from ctbench.errors import UserError

OUTPUT = "general_eval.json"
# lm-eval's four seeds (python, numpy, torch, few-shot sampling), the same for both models.
SEED = 1234
# Dataset builders that read local files (dataset_kwargs.data_files) rather than the Hub.
_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}


CHAT_TEMPLATE_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class Protocol:
    """How lm-eval prompts both models: it changes the scores, so it is recorded and compared.

    ``num_fewshot`` None keeps each task's own count."""

    num_fewshot: int | None = None
    chat_template: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_protocol(
    num_fewshot: int | None, chat_template: str, *, track_chat: bool, tokenizer: Any
) -> Protocol:
    """The protocol for a run's tokenizer: ``chat_template`` is auto, on or off (auto: on
    for a chat track whose tokenizer has a template)."""
    check_protocol_options(num_fewshot, chat_template)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "on" and not has_template:
        raise UserError(
            "the run's tokenizer has no chat template to render requests with; "
            "use --chat-template off",
            where="--chat-template",
        )
    use = chat_template == "on" or (chat_template == "auto" and track_chat and has_template)
    return Protocol(num_fewshot=num_fewshot, chat_template=use)


def check_protocol_options(num_fewshot: int | None, chat_template: str) -> None:
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(
            f"expected a number of few-shot examples >= 0, got {num_fewshot}",
            where="--num-fewshot",
        )
    if chat_template not in CHAT_TEMPLATE_CHOICES:
        raise UserError(
            f"expected one of {', '.join(CHAT_TEMPLATE_CHOICES)}, got {chat_template!r}",
            where="--chat-template",
        )


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as exc:
        raise UserError(
            f"lm-eval is not installed ({exc}); install the extra: pip install 'ctbench[eval]'"
        ) from exc
    return lm_eval


def parse_tasks(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not names or any(not name for name in names):
        raise UserError(f"expected comma-separated task names, got {text!r}", where="--tasks")
    if len(set(names)) != len(names):
        raise UserError(f"a task is named twice in {text!r}", where="--tasks")
    return names


def finished_run(run_dir: Path) -> tuple[dict[str, Any], Path | None]:
    """The run's result and its final model's folder (None: the final model is the base)."""
    if not run_dir.is_dir():
        raise UserError("no such run folder", where=str(run_dir))
    result_file = run_dir / "result.json"
    if not result_file.exists():
        raise UserError(
            "not a finished run folder (no result.json); finish it first with "
            f"`ctbench run --resume {run_dir}`",
            where=str(run_dir),
        )
    try:
        result = json.loads(result_file.read_text())
    except ValueError as exc:
        raise UserError(f"result.json is not valid JSON ({exc})", where=str(result_file)) from exc
    if "final_model" not in result:
        raise UserError(
            "the run kept no final model (it finished before ctbench kept final-model/); "
            "run its strategy and seed again to get one",
            where=str(run_dir),
        )
    if result["final_model"] is None:
        return result, None
    folder = run_dir / result["final_model"]["path"]
    if not folder.is_dir():
        raise UserError(
            f"result.json names the final model {result['final_model']['path']}/ but it is "
            "missing (deleted or not copied with the run); run its strategy and seed again",
            where=str(run_dir),
        )
    return result, folder


# --------------------------------------------------------------------------- tasks
def task_manager(names: Sequence[str], include_path: Path | None) -> Any:
    """lm-eval's task index: the ``--include-path`` folder alone when it has every task
    asked for (indexing lm-eval's thousands of built-in tasks takes seconds), else both."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not include_path.is_dir():
            raise UserError("no such folder", where=f"--include-path {include_path}")
        try:
            local = TaskManager(include_path=str(include_path), include_defaults=False)
        except Exception as exc:
            raise UserError(
                f"cannot read the task YAML files there: {exc}",
                where=f"--include-path {include_path}",
            ) from exc
        if all(name in local.all_tasks for name in names):
            return local
    return TaskManager(include_path=str(include_path) if include_path else None)


def check_tasks(manager: Any, names: Sequence[str]) -> None:
    """Load every task once (its dataset too) before any model is: an unknown name or a
    dataset that cannot be had is one line naming the task, not a traceback mid-way."""
    for name in names:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(
                f"unknown lm-eval task {name!r}{hint}; give a name from lm-eval's registry "
                "(`lm-eval ls tasks`) or a folder of task YAML files with --include-path",
                where="--tasks",
            )
        try:
            manager.load([name])
        except Exception as exc:
            raise _task_error(name, manager, exc) from exc


def _task_error(name: str, manager: Any, exc: Exception) -> UserError:
    entry = manager.task_index.get(name)
    dataset = (getattr(entry, "cfg", None) or {}).get("dataset_path")
    local = dataset in _LOCAL_BUILDERS or (isinstance(dataset, str) and Path(dataset).exists())
    if local:
        hint = (
            "; relative dataset_kwargs.data_files are resolved from the current directory, "
            "so give absolute paths or run from the folder that holds them"
            if isinstance(exc, FileNotFoundError)
            else ""
        )
        return UserError(
            f"lm-eval task {name!r} cannot read its local data ({exc}){hint}", where="--tasks"
        )
    if _is_fetch_failure(exc) or isinstance(exc, FileNotFoundError):
        return UserError(
            f"the dataset of lm-eval task {name!r} ({dataset or 'from the Hub'}) cannot be "
            f"fetched ({exc}): this machine is offline or cannot reach the Hugging Face Hub, "
            "and the dataset is not in its cache; fetch it once where the Hub is reachable, or "
            "write a task YAML reading a local file (dataset_path: json, dataset_kwargs: "
            "{data_files: ...}) and pass its folder with --include-path",
            where="--tasks",
        )
    return UserError(
        f"lm-eval task {name!r} cannot be loaded: {type(exc).__name__}: {exc}", where="--tasks"
    )


def _is_fetch_failure(exc: BaseException) -> bool:
    names = {"DatasetNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"}
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError | TimeoutError) or type(seen).__name__ in names:
            return True
        if "HTTPError" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# --------------------------------------------------------------------------- models
def load_models(run_dir: Path, result: dict[str, Any], final_dir: Path | None, device: str):
    """(tokenizer, base model, load_final, track is chat) for the run's track; the final
    model is loaded only after the base was scored, so two models never share memory."""
    from ctbench.runs.config import RunConfig
    from ctbench.tracks.track import load_track
    from ctbench.training import adapters
    from ctbench.training.tiny_base import ensure_base_checkpoint, load_base

    try:
        config = RunConfig(**json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"unreadable config.json: {exc}", where=str(run_dir)) from exc
    track = load_track(config.track)
    if result["track"]["hash"] != track.content_hash():
        raise UserError(
            f"track {track.spec.name!r} changed since this run (hash {result['track']['hash']}, "
            f"now {track.content_hash()}): its base model may not be the one the run trained",
            where=str(run_dir),
        )
    base, tokenizer, _ = load_base(track)
    base_path = ensure_base_checkpoint(track)

    def load_final() -> Any:
        assert final_dir is not None
        model = adapters.load_checkpoint(final_dir, base_path, device)
        if adapters.is_adapted(model):  # lm-eval scores a plain model: adapters folded in
            model = model.merge_and_unload()
        return model

    return tokenizer, base.to(device), load_final, track.spec.chat


def _score(
    lm_eval: Any,
    model: Any,
    tokenizer: Any,
    names: Sequence[str],
    manager: Any,
    limit: int | None,
    batch_size: int,
    protocol: Protocol,
) -> dict[str, Any]:
    from lm_eval.models.huggingface import HFLM

    model.eval()
    # HFLM warns (twice) that a model object, not a name, was passed: that is the design here.
    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    finally:
        hf_logger.setLevel(level)
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=list(names),
        limit=limit,
        num_fewshot=protocol.num_fewshot,
        apply_chat_template=protocol.chat_template,
        fewshot_as_multiturn=protocol.chat_template,
        task_manager=manager,
        log_samples=True,  # for each task's docs_hash
        random_seed=SEED,
        numpy_random_seed=SEED,
        torch_random_seed=SEED,
        fewshot_random_seed=SEED,
    )


# --------------------------------------------------------------------------- output
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def metric_values(task_results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """lm-eval's ``"acc,none"``-style keys as ``acc`` (``acc,<filter>`` for a filter other
    than none), values and standard errors apart."""
    values, stderrs = {}, {}
    for key, value in task_results.items():
        if "," not in key:
            continue  # name, alias, sample_len
        metric, filter_name = key.split(",", 1)
        stderr = metric.endswith("_stderr")
        metric = metric.removesuffix("_stderr")
        label = metric if filter_name == "none" else f"{metric},{filter_name}"
        (stderrs if stderr else values)[label] = _number(value)
    return values, stderrs


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of the task config lm-eval reports, less ``metadata.config_source`` (the path
    of the YAML file on this machine, not its content)."""
    body = json.loads(json.dumps(config, default=str))
    if isinstance(body.get("metadata"), dict):
        body["metadata"].pop("config_source", None)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def docs_hash(samples: list[dict[str, Any]]) -> str:
    """SHA-256 over the evaluated documents' hashes (lm-eval's doc_hash), in doc order."""
    ordered = sorted(samples, key=lambda s: s["doc_id"])
    seen, hashes = set(), []
    for sample in ordered:
        if sample["doc_id"] not in seen:
            seen.add(sample["doc_id"])
            hashes.append(str(sample.get("doc_hash")))
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def summarise(
    base: dict[str, Any],
    final: dict[str, Any],
    *,
    version: str,
    run: dict[str, Any],
    limit: int | None,
    batch_size: int,
    device: str,
    protocol: Protocol = Protocol(),
) -> dict[str, Any]:
    """general_eval.json from lm-eval's two results: every task (and group) it reported."""
    tasks: dict[str, Any] = {}
    scores: dict[str, dict[str, Any]] = {"base": {}, "final": {}}
    stderr: dict[str, dict[str, Any]] = {"base": {}, "final": {}}
    delta: dict[str, Any] = {}
    for name in base["results"]:
        for label, source in (("base", base), ("final", final)):
            scores[label][name], stderr[label][name] = metric_values(source["results"][name])
        better = base["higher_is_better"].get(name, {})
        info: dict[str, Any] = {
            "metrics": {
                m: {"higher_is_better": better.get(m.split(",")[0])} for m in scores["base"][name]
            }
        }
        if name in base["configs"]:
            counts = base["n-samples"][name]
            info = {
                "config_hash": config_hash(base["configs"][name]),
                "version": base["versions"].get(name),
                "num_fewshot": base["n-shot"].get(name),
                "n": counts["effective"],
                "n_available": counts["original"],
                "docs_hash": docs_hash(base["samples"][name]),
                **info,
            }
        else:  # a group: its scores aggregate its subtasks'
            info = {"subtasks": base["group_subtasks"].get(name, []), **info}
        tasks[name] = info
        delta[name] = {
            metric: None
            if value is None or scores["final"][name].get(metric) is None
            else scores["final"][name][metric] - value
            for metric, value in scores["base"][name].items()
        }
    return {
        "lm_eval_version": version,
        "run_id": run["run_id"],
        "result_hash": run["result_hash"],
        "final_model": run["final_model"],
        "tasks": tasks,
        "base": scores["base"],
        "final": scores["final"],
        "delta": delta,
        "stderr": stderr,
        "limit": limit,
        "protocol": protocol.to_json(),
        "seed": SEED,
        "batch_size": batch_size,
        "device": device,
        "created": dt.datetime.now(dt.UTC).isoformat(),
    }


def evaluate_general(
    run_dir: Path,
    tasks: Sequence[str],
    *,
    include_path: Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    num_fewshot: int | None = None,
    chat_template: str = "auto",
    note=print,
) -> tuple[Path, dict[str, Any]]:
    """Score the run's base and final model on ``tasks``; write and return general_eval.json."""
    from ctbench.runs.config import resolve_device

    if limit is not None and limit <= 0:
        raise UserError(f"expected a positive number of examples, got {limit}", where="--limit")
    if batch_size <= 0:
        raise UserError(f"expected a positive batch size, got {batch_size}", where="--batch-size")
    check_protocol_options(num_fewshot, chat_template)  # before anything loads
    device = resolve_device(device)
    result, final_dir = finished_run(run_dir)
    lm_eval = _lm_eval()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    manager = task_manager(tasks, include_path)
    check_tasks(manager, tasks)
    tokenizer, base_model, load_final, track_chat = load_models(run_dir, result, final_dir, device)
    protocol = resolve_protocol(
        num_fewshot, chat_template, track_chat=track_chat, tokenizer=tokenizer
    )
    shots = "each task's own" if protocol.num_fewshot is None else str(protocol.num_fewshot)
    template = "with" if protocol.chat_template else "without"
    note(f"prompting {template} the chat template, few-shot examples: {shots}")
    note(f"scoring the base model on {', '.join(tasks)}")
    base = _score(lm_eval, base_model, tokenizer, tasks, manager, limit, batch_size, protocol)
    del base_model
    if final_dir is None:
        note("the run's main line trained nothing: its final model is the base")
        final = base
    else:
        note(f"scoring the final model ({result['final_model']['kind']})")
        final = _score(
            lm_eval, load_final(), tokenizer, tasks, manager, limit, batch_size, protocol
        )
    summary = summarise(
        base,
        final,
        version=lm_eval.__version__,
        run=result,
        limit=limit,
        batch_size=batch_size,
        device=device,
        protocol=protocol,
    )
    path = run_dir / OUTPUT
    write_json_atomic(path, summary)
    return path, summary
