"""Output paths: `make-tiny`, `convert-original --out` and `save_pretrained` never delete or
move what the user did not create, and every refusal is one line naming the user's path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from test_convert import _component_flags, published_state

from m2ugen.checkpoint import MANIFEST, TRAINED_NAME
from m2ugen.cli import main
from m2ugen.errors import ConfigError
from m2ugen.presets.tiny import is_current_tiny

TINY_PARTS = ["llm", "mert", "vit", "vivit"]


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones too) with its bytes: what must not change."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _user_dir(path: Path) -> Path:
    (path / "holiday").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "holiday" / "beach.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return path


def _fails(argv: list[str], capsys, path: Path) -> str:
    """Exit 2 with exactly one line, which names the user's path and no temporary."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("m2ugen: error:")]
    assert rc == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"m2ugen: error: {path}: "), err
    assert ".m2ugen-build" not in lines[0] and ".tmp" not in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tiny_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("published") / "checkpoint.pth"
    torch.save({"model": published_state(tiny_dir)}, path)
    return path


def test_make_tiny_refuses_a_users_directory_and_force_writes_only_ours(tmp_path, capsys):
    user = _user_dir(tmp_path / "photos")
    before = _tree(user)
    line = _fails(["make-tiny", str(user)], capsys, user)
    assert "not an m2ugen model directory" in line and "--force" in line
    assert _tree(user) == before and os.listdir(tmp_path) == ["photos"]

    assert main(["make-tiny", str(user), "--force"]) == 0
    assert is_current_tiny(user) and os.listdir(tmp_path) == ["photos"]
    assert {k: v for k, v in _tree(user).items() if k in before} == before
    assert (user / "musicgen").is_dir()

    # now ours: another decoder replaces it without --force, and the musicgen/ it no
    # longer writes goes, while the user's files stay
    assert main(["make-tiny", str(user), "--decoder", "audioldm2"]) == 0
    names = sorted(os.listdir(user))
    assert names == sorted([*TINY_PARTS, "audioldm2", "tokenizer", "m2ugen.json", TRAINED_NAME,
                            MANIFEST, "holiday", "notes.txt"])
    assert {k: v for k, v in _tree(user).items() if k in before} == before
    assert json.loads((user / "m2ugen.json").read_text())["decoder"] == "audioldm2"


@pytest.mark.parametrize("force", [False, True])
def test_an_existing_file_as_output_is_left_exactly_as_it_was(tmp_path, capsys, checkpoint,
                                                              force):
    target = tmp_path / "model.bin"
    target.write_bytes(b"the user's weights")
    flag = ["--force"] if force else []
    line = _fails(["make-tiny", str(target), *flag], capsys, target)
    assert "is a file, not a directory" in line
    line = _fails(["convert-original", str(checkpoint), "--out", str(target), *flag], capsys,
                  target)
    assert "is a file, not a directory" in line
    assert target.read_bytes() == b"the user's weights"
    assert os.listdir(tmp_path) == ["model.bin"]  # not moved aside to a hidden name


def test_impossible_outputs_name_the_users_path(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    under_file = tmp_path / "file" / "model"
    line = _fails(["make-tiny", str(under_file)], capsys, under_file)
    assert "cannot write" in line
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    assert "broken symbolic link" in _fails(["make-tiny", str(link)], capsys, link)
    assert sorted(os.listdir(tmp_path)) == ["file", "link"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_parent_names_the_users_path(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir(mode=0o555)
    try:
        assert "cannot write" in _fails(["make-tiny", str(parent / "m")], capsys,
                                        parent / "m")
    finally:
        parent.chmod(0o755)


def test_a_training_run_is_not_replaced_by_make_tiny(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "trainer_state" / "step-000000001").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    before = _tree(run)
    line = _fails(["make-tiny", str(run)], capsys, run)
    assert "holds a training run" in line and _tree(run) == before


def test_convert_refuses_a_users_directory_before_reading_the_checkpoint(tmp_path, capsys,
                                                                         tiny_dir):
    user = _user_dir(tmp_path / "out")
    before = _tree(user)
    missing = tmp_path / "no-such-checkpoint.pth"  # the output is checked first, at once
    line = _fails(["convert-original", str(missing), "--out", str(user),
                   *_component_flags(tiny_dir)], capsys, user)
    assert "--force" in line and _tree(user) == before


def test_convert_force_and_replacing_a_tiny_model_touch_only_ours(tmp_path, capsys,
                                                                  checkpoint, tiny_dir):
    from m2ugen.model import M2UGen

    user = _user_dir(tmp_path / "out")
    before = _tree(user)
    flags = [str(checkpoint), *_component_flags(tiny_dir)]
    assert main(["convert-original", *flags, "--out", str(user), "--force"]) == 0
    assert {k: v for k, v in _tree(user).items() if k in before} == before
    assert sorted(os.listdir(user)) == sorted(["m2ugen.json", TRAINED_NAME, "tokenizer",
                                               MANIFEST, "holiday", "notes.txt"])

    # a tiny model directory (its components are ours) converted over: the components
    # the converted model does not use go, the user's files stay
    tiny = tmp_path / "tiny"
    shutil.copytree(tiny_dir, tiny)
    (tiny / "notes.txt").write_text("my notes")
    assert main(["convert-original", *flags, "--out", str(tiny)]) == 0
    assert sorted(os.listdir(tiny)) == sorted(["m2ugen.json", TRAINED_NAME, "tokenizer",
                                               MANIFEST, "notes.txt"])
    capsys.readouterr()
    assert M2UGen.from_pretrained(tiny).config.name == "converted-musicgen"


def test_save_pretrained_refuses_a_users_directory(tmp_path, tiny_model):
    user = _user_dir(tmp_path / "out")
    before = _tree(user)
    with pytest.raises(ConfigError, match=rf"^{user}: is not empty"):
        tiny_model.save_pretrained(user)
    assert _tree(user) == before
    tiny_model.save_pretrained(user, force=True)
    assert {k: v for k, v in _tree(user).items() if k in before} == before
    assert (user / TRAINED_NAME).is_file()
