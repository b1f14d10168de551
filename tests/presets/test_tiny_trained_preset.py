"""The tiny-trained preset's name: built on first use by a child `m2ugen make-tiny --trained`
(training sits above presets in the import order), cached, rebuilt when stale."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from m2ugen.errors import ConfigError
from m2ugen.presets import PRESET_NAMES, tiny_trained
from m2ugen.presets.tiny_trained import TINY_TRAINED_VERSION, ensure_tiny_trained


def _fake_build(path, version=TINY_TRAINED_VERSION):
    path.mkdir(parents=True, exist_ok=True)
    (path / "m2ugen.json").write_text(json.dumps({"extra": {"tiny_trained_version": version}}))
    (path / "adapter.safetensors").write_bytes(b"")


def test_built_once_by_the_make_tiny_command(tmp_path, monkeypatch):
    assert "tiny-trained" in PRESET_NAMES
    calls = []

    def run(cmd, env, check):
        calls.append(cmd)
        _fake_build(tmp_path / "tt")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(tiny_trained.subprocess, "run", run)
    assert ensure_tiny_trained(tmp_path / "tt", seed=3) == tmp_path / "tt"
    assert calls == [[sys.executable, "-m", "m2ugen.cli", "make-tiny", str(tmp_path / "tt"),
                      "--trained", "--seed", "3"]]
    ensure_tiny_trained(tmp_path / "tt")  # cached: no second build
    assert len(calls) == 1
    _fake_build(tmp_path / "tt", version=TINY_TRAINED_VERSION - 1)  # stale: rebuilt
    ensure_tiny_trained(tmp_path / "tt")
    assert len(calls) == 2


def test_a_failed_build_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_trained.subprocess, "run",
                        lambda cmd, env, check: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(ConfigError, match=r"building the tiny-trained preset into .* failed "
                                          r"\(exit code 1"):
        ensure_tiny_trained(tmp_path / "tt")
