"""Atomic writes and durable folders (ctbench/common/atomic.py)."""

from __future__ import annotations

import os

import pytest

from ctbench.common import atomic


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync is called on, read back from the descriptor."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return synced


def test_an_atomic_write_syncs_the_file_and_its_folder(tmp_path, monkeypatch) -> None:
    synced = _record_fsyncs(monkeypatch)
    target = tmp_path / "sub" / "state.json"
    atomic.write_json_atomic(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert synced[-1] == str(tmp_path / "sub")  # the rename is durable too
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_fsync_tree_syncs_every_file_and_folder(tmp_path, monkeypatch) -> None:
    (tmp_path / "ckpt" / "inner").mkdir(parents=True)
    for name in ("ckpt/model.safetensors", "ckpt/config.json", "ckpt/inner/x.bin"):
        (tmp_path / name).write_bytes(b"w")
    synced = _record_fsyncs(monkeypatch)
    atomic.fsync_tree(tmp_path / "ckpt")
    expected = {
        str(tmp_path / p)
        for p in ("ckpt", "ckpt/inner", "ckpt/model.safetensors", "ckpt/config.json",
                  "ckpt/inner/x.bin")
    }  # fmt: skip
    assert set(synced) == expected and len(synced) == len(expected)
