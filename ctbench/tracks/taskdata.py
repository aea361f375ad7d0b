"""Turning a task spec into items: seeded generators, Hugging Face datasets, local files.

Loading from a dataset goes through ``datasets.load_dataset`` (a hub name, or the ``json``
/ ``parquet`` builders for local files), so the same code serves the GPU tracks; these
machines are offline, so tests exercise it on local files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctbench.errors import UserError

# Imported for its registrations: the smol track's generators join GENERATORS here, where
# tasks are looked up, so generators.py needs no import back into its extension.
from ctbench.tracks import smol_generators  # noqa: F401
from ctbench.tracks.generators import GENERATORS
from ctbench.tracks.taskspec import TaskSpec


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


def _records_from_dataset(spec: TaskSpec) -> tuple[list[dict], list[dict]]:
    import datasets  # imported here: it is slow to import and the tiny track never needs it

    source = spec.source
    where = f"{spec.file}: source"
    if source.path is not None:
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
        else:
            cut = spec.eval.size
            train, evaluation = rows[cut:], rows[:cut]
    else:
        try:
            train_ds = datasets.load_dataset(
                source.dataset, source.subset, split=source.train_split
            )
            eval_ds = datasets.load_dataset(source.dataset, source.subset, split=source.eval_split)
        except Exception as exc:  # the hub raises many types; all mean "cannot load"
            raise UserError(f"cannot load dataset {source.dataset!r}: {exc}", where=where) from exc
        train, evaluation = [dict(r) for r in train_ds], [dict(r) for r in eval_ds]

    def mapped(row: dict) -> dict:
        out = dict(row)
        for target, column in source.columns.items():
            if column not in row:
                raise UserError(
                    f"column mapping {target}: {column!r} names a column the data lacks "
                    f"(columns: {', '.join(sorted(row))})",
                    where=f"{spec.file}: source.columns",
                )
            out[target] = row[column]
        return out

    return [mapped(r) for r in train], [mapped(r) for r in evaluation][: spec.eval.size]


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
    else:
        train, evaluation = _records_from_dataset(spec)
    return Task(
        spec=spec, train=_items(spec, train, "train"), eval=_items(spec, evaluation, "eval")
    )
