"""Atomic writes and model directories: a failure or a crash mid-write leaves the previous
file or directory intact, and nothing that is not ours is ever touched."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from m2ugen.checkpoint import (
    MANIFEST,
    atomic_path,
    atomic_write_text,
    check_output_dir,
    load_tensors,
    model_directory,
    save_tensors,
)
from m2ugen.errors import ConfigError

OURS = ("m2ugen.json", "adapter.safetensors", "tokenizer")


def _write(target: Path, version: str, names=OURS, force: bool = False) -> Path:
    """A model-directory write whose every file says which write made it."""
    with model_directory(target, force=force) as tmp:
        for name in names:
            if "." in name:
                (tmp / name).write_text(json.dumps({"version": version}))
            else:
                (tmp / name).mkdir()
                (tmp / name / "part.json").write_text(version)
    return target


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`, hidden ones included, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _versions(root: Path, names=OURS) -> set[str]:
    out = set()
    for name in names:
        f = root / name if "." in name else root / name / "part.json"
        text = f.read_text()
        out.add(json.loads(text)["version"] if "." in name else text)
    return out


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


@pytest.mark.parametrize("writer", ["text", "tensors"])
def test_atomic_write_fsyncs_the_temp_file_before_it_replaces_the_target(tmp_path, monkeypatch,
                                                                         writer):
    """Spies on the OS calls: the temp file's data must be on disk before the rename makes
    it the target (renamed first, a crash could leave the target naming lost data)."""
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / ("a.json" if writer == "text" else "a.safetensors")
    if writer == "text":
        atomic_write_text(target, "data")
    else:
        save_tensors(target, {"w": torch.ones(3)})
    renames = [e for e in events if e[0] == "replace"]
    assert len(renames) == 1 and renames[0][2] == str(target)
    at = events.index(renames[0])
    assert ("fsync", renames[0][1]) in events[:at]  # the temp file, before the rename
    assert ("fsync", str(tmp_path)) in events[at + 1:]  # the directory entry, after it


def test_atomic_write_errors_name_the_target_not_the_temp_file(tmp_path):
    (tmp_path / "file").write_text("x")
    under = tmp_path / "file" / "a.json"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(under))}: cannot be written \(a "
                                          "part of the path is a file"):
        atomic_write_text(under, "y")
    (tmp_path / "out.wav").mkdir()  # a directory where a file is expected
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'out.wav'))}: cannot "
                                          r"be written \(Is a directory\)") as err:
        atomic_write_text(tmp_path / "out.wav", "y")
    assert ".tmp" not in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["file", "out.wav"] and not os.listdir(
        tmp_path / "out.wav")


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


def test_a_new_model_directory_appears_whole_and_a_failed_block_changes_nothing(tmp_path):
    target = _write(tmp_path / "model", "v1")
    assert sorted(os.listdir(target)) == sorted([*OURS, MANIFEST])
    assert json.loads((target / MANIFEST).read_text()) == sorted(OURS)
    assert _versions(target) == {"v1"} and os.listdir(tmp_path) == ["model"]
    before = _tree(target)
    with pytest.raises(RuntimeError), model_directory(target) as tmp:
        (tmp / "m2ugen.json").write_text("half")
        raise RuntimeError("crash")
    assert _tree(target) == before and os.listdir(tmp_path) == ["model"]
    with pytest.raises(RuntimeError), model_directory(tmp_path / "new") as tmp:
        raise RuntimeError("crash")
    assert os.listdir(tmp_path) == ["model"]  # no half-written directory, no temporary


def test_replacing_a_model_directory_replaces_only_ours_and_drops_our_stale_names(tmp_path):
    target = _write(tmp_path / "model", "v1", names=(*OURS, "musicgen"))
    (target / "notes.txt").write_text("the user's")
    (target / "data").mkdir()
    (target / "data" / "x.wav").write_bytes(b"RIFF")
    _write(target, "v2", names=(*OURS, "audioldm2"))
    assert sorted(os.listdir(target)) == sorted([*OURS, "audioldm2", "data", "notes.txt",
                                                 MANIFEST])
    assert _versions(target, (*OURS, "audioldm2")) == {"v2"}  # musicgen/ was ours: gone
    assert (target / "notes.txt").read_text() == "the user's"
    assert (target / "data" / "x.wav").read_bytes() == b"RIFF"
    assert json.loads((target / MANIFEST).read_text()) == sorted([*OURS, "audioldm2"])


@pytest.mark.parametrize("legacy_tiny", [True, False])
def test_directories_written_before_the_manifest_are_ours_by_their_config(tmp_path,
                                                                          legacy_tiny):
    """No manifest: m2ugen.json, adapter, tokenizer are ours, and the component folders
    only when the config says it is the tiny preset (which writes them)."""
    target = tmp_path / "model"
    (target / "tokenizer").mkdir(parents=True)
    (target / "musicgen").mkdir()
    (target / "musicgen" / "config.json").write_text("{}")
    extra = {"tiny_version": 1} if legacy_tiny else {}
    (target / "m2ugen.json").write_text(json.dumps({"extra": extra}))
    (target / "adapter.safetensors").write_text("old")
    _write(target, "v2")
    assert _versions(target) == {"v2"}
    assert (target / "musicgen").exists() is not legacy_tiny


def test_a_failing_replacement_keeps_every_old_file_and_rolls_back(tmp_path, monkeypatch):
    """Whichever rename of the replacement fails, the old directory is left as it was:
    nothing of the old copy is deleted before the new one is fully in place."""
    target = _write(tmp_path / "model", "v1", names=(*OURS, "musicgen"))
    (target / "notes.txt").write_text("the user's")
    before = _tree(target)
    real_rename = os.rename
    calls = {"n": 0, "fail_at": -1}

    def rename(src, dst):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise OSError(errno.EIO, "Input/output error", str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    shutil.copytree(target, tmp_path / "probe", symlinks=True)
    _write(tmp_path / "probe", "v2", names=(*OURS, "audioldm2"))  # counts the renames
    n = calls["n"]
    assert n >= 8
    for k in range(1, n + 1):
        calls.update(n=0, fail_at=k)
        with pytest.raises(ConfigError) as err:
            _write(target, "v2", names=(*OURS, "audioldm2"))
        message = str(err.value)
        assert message.startswith(f"{target}: ") and ".m2ugen-" not in message, message
        assert _tree(target) == before, f"rename {k} of {n} failed"
        assert sorted(os.listdir(tmp_path)) == ["model", "probe"]


def test_a_crash_at_any_point_of_a_replacement_is_recovered_by_the_next_write(tmp_path,
                                                                              monkeypatch):
    """Copies of the directory taken around every rename are what a crash there leaves:
    each holds one whole model or none (no m2ugen.json, still ours), keeps the user's
    file, and the next plain write finishes it with no temporary left."""
    target = _write(tmp_path / "model", "v1", names=(*OURS, "musicgen"))
    (target / "notes.txt").write_text("the user's")
    real_rename = os.rename
    snaps: list[Path] = []

    def snapshot():
        snaps.append(tmp_path / f"crash{len(snaps)}")
        shutil.copytree(target, snaps[-1], symlinks=True)

    def rename(src, dst):
        snapshot()
        real_rename(src, dst)
        snapshot()

    monkeypatch.setattr(os, "rename", rename)
    _write(target, "v2", names=(*OURS, "audioldm2"))
    monkeypatch.setattr(os, "rename", real_rename)
    assert len(snaps) >= 16
    whole = set()
    for snap in snaps:
        assert (snap / "notes.txt").read_text() == "the user's"
        if (snap / "m2ugen.json").exists():  # loadable: every part from the same write
            version = _versions(snap)
            assert len(version) == 1, snap
            whole |= version
            parts = ("musicgen",) if version == {"v1"} else ("audioldm2",)
            assert _versions(snap, parts) == version
        assert check_output_dir(snap) >= {MANIFEST}  # ours: no --force needed
        _write(snap, "v3")
        assert sorted(os.listdir(snap)) == sorted([*OURS, "notes.txt", MANIFEST]), snap
        assert _versions(snap) == {"v3"}
    assert whole == {"v1", "v2"}


def test_outputs_that_are_not_ours_are_refused_untouched(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=rf"^{foreign}: is not empty .*--force"):
        _write(foreign, "v1")
    assert os.listdir(foreign) == ["notes.txt"]
    _write(foreign, "v1", force=True)  # only our names are written beside the user's
    assert sorted(os.listdir(foreign)) == sorted([*OURS, MANIFEST, "notes.txt"])
    assert (foreign / "notes.txt").read_text() == "mine"


def test_force_never_replaces_a_users_entry_under_one_of_our_names(tmp_path):
    """--force writes beside the user's files; one that holds a name the model needs is
    refused in one line, before anything moves, and stays the user's."""
    foreign = tmp_path / "photos"
    (foreign / "tokenizer").mkdir(parents=True)
    (foreign / "tokenizer" / "vocab.txt").write_text("my own tokenizer")
    (foreign / "notes.txt").write_text("mine")
    before = _tree(foreign)
    with pytest.raises(ConfigError, match=rf"^{foreign / 'tokenizer'}: is not m2ugen's"):
        _write(foreign, "v1", force=True)
    assert _tree(foreign) == before  # nothing written, moved or deleted

    file = tmp_path / "model.bin"
    file.write_bytes(b"precious")
    for force in (False, True):
        with pytest.raises(ConfigError, match=rf"^{file}: is a file, not a directory"):
            _write(file, "v1", force=force)
    assert file.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["model.bin", "photos"]  # nothing moved aside

    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="broken symbolic link"):
        _write(link, "v1")
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()

    run = _write(tmp_path / "run", "v1")
    (run / "trainer_state").mkdir()
    with pytest.raises(ConfigError, match=r"holds a training run \(trainer_state/\)"):
        _write(run, "v2")
    _write(run, "v2", force=True)
    assert (run / "trainer_state").is_dir() and _versions(run) == {"v2"}

    with pytest.raises(ConfigError, match=rf"^{file / 'sub'}: cannot write"):
        _write(file / "sub", "v1")  # under a file: the user's path, not a temporary


def test_a_manifest_cannot_point_outside_its_directory(tmp_path):
    target = _write(tmp_path / "model", "v1")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (target / MANIFEST).write_text(json.dumps([*OURS, "../victim.txt", str(victim), ".."]))
    _write(target, "v2")
    assert victim.read_text() == "keep" and _versions(target) == {"v2"}


def test_temporaries_of_earlier_versions_are_recovered_or_removed(tmp_path):
    """The whole-directory swap of earlier versions could die between its two renames,
    leaving the model at `.NAME.old-PID` and a build at `.NAME.XXXXXXXX.tmp`."""
    old = _write(tmp_path / f".model.old-{os.getpid()}", "v1")
    (old / "notes.txt").write_text("the user's")
    _write(tmp_path / ".model.ab12cd34.tmp", "v2")
    target = tmp_path / "model"
    _write(target, "v3")
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert (target / "notes.txt").read_text() == "the user's" and _versions(target) == {"v3"}


def test_a_live_writers_temporaries_survive_a_dead_ones_go(tmp_path):
    """Leftovers carry their writer's pid: those of a crashed (dead) writer are cleaned
    up by the next write, those of a writer still running (pid 1 is always alive) are
    not touched."""
    target = _write(tmp_path / "model", "v1")
    live = target / ".m2ugen-build-1-abcdef"
    dead = target / ".m2ugen-build-999999999-abcdef"
    beside = tmp_path / ".model.m2ugen-build-999999999-ghijkl"
    for d in (live, dead, beside):
        d.mkdir()
        (d / "part.json").write_text("half written")
    _write(target, "v2")
    assert live.is_dir() and (live / "part.json").read_text() == "half written"
    assert not dead.exists() and not beside.exists()
