"""Atomic writes: a failure mid-write leaves the previous file or directory intact."""

from __future__ import annotations

import pytest
import torch

from m2ugen.checkpoint import (
    atomic_directory,
    atomic_path,
    atomic_write_text,
    load_tensors,
    save_tensors,
)
from m2ugen.errors import ConfigError


def test_atomic_file_survives_a_failed_write(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp left behind
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) == "0o644"


def test_atomic_directory_swaps_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("2")
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert (target / "a.txt").read_text() == "1"
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_tensors_round_trip_and_damaged_files_are_named(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_tensors(tmp_path / "t.safetensors", tensors, metadata={"step": "7"})
    back = load_tensors(tmp_path / "t.safetensors")
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in back)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ConfigError, match="bad.safetensors: not a readable safetensors file"):
        load_tensors(tmp_path / "bad.safetensors")
    with pytest.raises(ConfigError, match="missing.safetensors: not found"):
        load_tensors(tmp_path / "missing.safetensors")
