"""Turning a task spec into items: seeded generators, Hugging Face datasets, local files.

Loading from a dataset goes through ``datasets.load_dataset`` (a hub name, or the ``json``
/ ``parquet`` builders for local files), so the same code serves the GPU tracks; these
machines are offline, so tests exercise it on local files. A dataset's rows pass through
``source.columns`` and then ``source.transforms`` (``ctbench.tracks.transforms``) before a
prompt is rendered; rows a transform rejects are dropped and counted (``Task.dropped``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctbench.common.yamlspec import Fields
from ctbench.errors import UserError

# Imported for its registrations: the smol track's generators join GENERATORS here, where
# tasks are looked up, so generators.py needs no import back into its extension.
from ctbench.tracks import smol_generators  # noqa: F401
from ctbench.tracks.generators import GENERATORS
from ctbench.tracks.taskspec import TaskSpec
from ctbench.tracks.transforms import (
    DropRecord,
    Transform,
    TransformFailed,
    apply_transforms,
    parse_transforms,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One prompt of a task, with what its reward and SFT need."""

    task: str
    index: int
    prompt: str
    answer: str | None
    demonstration: str | None
    fields: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    pretrain: bool = True

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Task:
    spec: TaskSpec
    train: tuple[Item, ...]
    eval: tuple[Item, ...]
    # Rows a transform rejected by its own rule, per split ("train"/"eval"): for MBPP, the
    # problems whose asserts are not all ``call == literal``. Empty when none were dropped.
    # Not part of the hash by itself: the items it leaves are.
    dropped: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def content_hash(self) -> str:
        """Hash of the spec *and* of every item it produced: a generator's code can change
        the data while the YAML stays the same, and a result must prove what it ran on."""
        digest = hashlib.sha256(self.spec.content_hash().encode())
        for split, items in (("train", self.train), ("eval", self.eval)):
            for item in items:
                digest.update(
                    f"{split}\0{item.prompt}\0{item.answer}\0{item.demonstration}\0".encode()
                )
                digest.update(b"1" if item.pretrain else b"0")
        return digest.hexdigest()[:16]


def _render(spec: TaskSpec, record: dict[str, Any], where: str) -> str:
    try:
        return spec.prompt_template.format(**record)
    except KeyError as exc:
        raise UserError(
            f"prompt_template uses {{{exc.args[0]}}} but the items have no such field "
            f"(fields: {', '.join(sorted(record))})",
            where=where,
        ) from exc


def _items(spec: TaskSpec, records: list[dict[str, Any]], split: str) -> tuple[Item, ...]:
    where = f"{spec.file}: prompt_template"
    items = []
    for index, record in enumerate(records):
        answer = record.get(spec.answer_field)
        demo = record.get(spec.expert_field)
        items.append(
            Item(
                task=spec.name,
                index=index,
                prompt=_render(spec, record, where),
                answer=None if answer is None else str(answer),
                demonstration=None if demo is None else str(demo),
                fields=record,
                pretrain=bool(record.get("pretrain", True)),
            )
        )
    if not items:
        raise UserError(f"the {split} split has no items", where=spec.file)
    return tuple(items)


def _check_jsonl(path: Path, where: str) -> None:
    """Name the first line that is not a JSON object; ``datasets`` would raise a traceback
    about its own internals instead."""
    import json

    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise UserError(
                    f"line {number} of {str(path)!r} is not JSON ({exc.msg})", where=where
                ) from exc
            if not isinstance(row, dict):
                raise UserError(f"line {number} of {str(path)!r} is not a JSON object", where=where)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Hush huggingface_hub's per-retry warnings while a dataset loads: an unreachable hub
    would otherwise print a dozen "Retrying in 8s" lines before the one-line error."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def _unreachable(exc: BaseException) -> bool:
    """The hub could not be reached and the data is not cached (datasets says so with a
    ConnectionError; huggingface_hub and httpx with their own types)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, ConnectionError) or bool(
        names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "TransportError"}
    )


def _hub_rows(spec: TaskSpec) -> tuple[list[dict], list[dict]]:
    """Both splits of a hub dataset in one ``load_dataset`` call; a one-line error naming
    the dataset (and, when the hub cannot be reached, the command that gets it) otherwise."""
    import datasets  # imported here: it is slow to import and the tiny track never needs it

    source = spec.source
    named = f"dataset {source.dataset!r}"
    if source.subset:
        named += f" (subset {source.subset}"
        named += f", revision {source.revision})" if source.revision else ")"
    elif source.revision:
        named += f" (revision {source.revision})"
    where = f"{spec.file}: source.dataset"
    try:
        with _quiet_hub():
            train_ds, eval_ds = datasets.load_dataset(
                source.dataset,
                source.subset,
                split=[source.train_split, source.eval_split],
                revision=source.revision,
            )
    except Exception as exc:  # the hub raises many types; all mean "cannot load"
        if _unreachable(exc):
            args = ", ".join(repr(a) for a in (source.dataset, source.subset) if a)
            if source.revision:
                args += f", revision={source.revision!r}"
            command = f'python -c "import datasets; datasets.load_dataset({args})"'
            raise UserError(
                f"{named} is not in the datasets cache and the Hugging Face Hub cannot be "
                f"reached ({_first_line(exc)}); get it where the hub is reachable, then copy "
                f"that machine's HF_HOME (default ~/.cache/huggingface) here: {command}",
                where=where,
            ) from exc
        raise UserError(f"cannot load {named}: {_first_line(exc)}", where=where) from exc
    return [dict(r) for r in train_ds], [dict(r) for r in eval_ds]


def _file_rows(spec: TaskSpec) -> tuple[list[dict], list[dict], tuple[str, str], str]:
    """Rows of a local file: (train, eval, the two split names, the file)."""
    import datasets

    source = spec.source
    where = f"{spec.file}: source"
    assert source.path is not None
    path = Path(source.path)
    if not path.is_absolute():
        path = Path(spec.file).parent / path
    if not path.exists():
        raise UserError(f"data file {str(path)!r} does not exist", where=where)
    builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(
        path.suffix
    )
    if builder is None:
        raise UserError(
            f"expected a .jsonl, .json, .parquet or .csv file, got {path.name}", where=where
        )
    if path.suffix == ".jsonl":
        _check_jsonl(path, where)
    # One file holds both splits, told apart by a `split` column, or it is split by size.
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for one meaning: unreadable
        raise UserError(f"cannot read {str(path)!r}: {exc}", where=where) from exc
    rows = [dict(r) for r in table]
    if rows and "split" in rows[0]:
        train = [r for r in rows if r["split"] == source.train_split]
        evaluation = [r for r in rows if r["split"] == source.eval_split]
        return train, evaluation, (source.train_split, source.eval_split), str(path)
    cut = spec.eval.size
    return rows[cut:], rows[:cut], ("train", "eval"), str(path)


def _prepared(
    spec: TaskSpec,
    transforms: tuple[Transform, ...],
    rows: list[dict],
    origin: str,
    split: str,
) -> tuple[list[dict], int, str | None]:
    """The rows after ``columns`` and ``transforms``: (kept rows, how many were dropped,
    why the first one was). A transform that cannot take a row's value is a UserError
    naming the dataset, split, row index and field."""
    source = spec.source
    kept: list[dict] = []
    dropped, first_reason = 0, None
    for index, row in enumerate(rows):
        out = dict(row)
        for target, column in source.columns.items():
            if column not in row:
                raise UserError(
                    f"column mapping {target}: {column!r} names a column the data lacks "
                    f"(columns: {', '.join(sorted(row))})",
                    where=f"{spec.file}: source.columns",
                )
            out[target] = row[column]
        try:
            out = apply_transforms(transforms, out)
        except DropRecord as exc:
            dropped += 1
            first_reason = first_reason or f"row {index}: {exc}"
            continue
        except TransformFailed as exc:
            failed = exc.transform
            assert failed is not None
            raise UserError(
                f"transform {failed.target} (from {failed.source!r}) failed on {origin}, "
                f"split {split}, row {index}: {exc}",
                where=f"{spec.file}: source.transforms.{failed.target}",
            ) from exc
        kept.append(out)
    return kept, dropped, first_reason


def _records_from_dataset(spec: TaskSpec) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(train rows, eval rows, rows dropped per split) of a hub dataset or a local file."""
    source = spec.source
    if source.path is not None:
        train, evaluation, names, origin = _file_rows(spec)
    else:
        train, evaluation = _hub_rows(spec)
        names, origin = (source.train_split, source.eval_split), f"dataset {source.dataset}"
    transforms = ()
    if source.transforms:
        transforms = parse_transforms(
            Fields(source.transforms, path=spec.file, prefix="source.transforms.")
        )
    dropped: dict[str, int] = {}
    prepared = []
    for key, rows, name in (("train", train, names[0]), ("eval", evaluation, names[1])):
        kept, count, reason = _prepared(spec, transforms, rows, origin, name)
        if count:
            dropped[key] = count
            logger.warning(
                "%s: dropped %d of %d rows of %s split %s that its transforms reject (first: %s)",
                spec.name,
                count,
                len(rows),
                origin,
                name,
                reason,
            )
            if not kept:
                raise UserError(
                    f"every row of {origin} split {name} was dropped by the transforms "
                    f"({count} rows; first: {reason})",
                    where=f"{spec.file}: source.transforms",
                )
        prepared.append(kept)
    return prepared[0], prepared[1][: spec.eval.size], dropped


def load_task(spec: TaskSpec) -> Task:
    if spec.source.generator is not None:
        generator = GENERATORS.get(spec.source.generator)
        if generator is None:
            raise UserError(
                f"unknown generator {spec.source.generator!r}; known: {', '.join(GENERATORS)}",
                where=f"{spec.file}: source.generator",
            )
        params = dict(spec.source.params)
        params.setdefault("data_seed", 0)
        try:
            train, evaluation = generator(eval_size=spec.eval.size, **params)
        except TypeError as exc:
            raise UserError(
                f"bad generator parameters: {exc}", where=f"{spec.file}: source.params"
            ) from exc
        except ValueError as exc:
            raise UserError(str(exc), where=f"{spec.file}: source") from exc
        dropped: dict[str, int] = {}
    else:
        train, evaluation, dropped = _records_from_dataset(spec)
    return Task(
        spec=spec,
        train=_items(spec, train, "train"),
        eval=_items(spec, evaluation, "eval"),
        dropped=dropped,
    )
