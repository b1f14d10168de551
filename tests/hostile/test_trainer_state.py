"""trainer_state/: crash-safe commits, runs of the earlier layout, exact RNG restore, and
damaged or malicious state files refused in one line through `m2ugen train --resume`."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from m2ugen.checkpoint import TRAINED_NAME
from m2ugen.cli import main
from m2ugen.data.synth import write_synthetic_dataset
from m2ugen.errors import ConfigError
from m2ugen.model import M2UGen
from m2ugen.training.config import TrainConfig, load_train_config
from m2ugen.training.loop import train
from m2ugen.training.state import load_trainer_state, save_checkpoint

STEP2 = "step-000000002"


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_audio=4,
                                   n_images=2, n_videos=1)


def _config(spec: Path, tiny_dir: Path, out: Path) -> Path:
    """A stage YAML for a 4-step run; the same file starts and resumes it."""
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(dict(
        stage=1, model=str(tiny_dir), init_trained="standard", data=str(spec), out=str(out),
        max_steps=4, batch_size=2, lr=3e-3, min_lr=1e-4, warmup_steps=1, max_len=256,
        save_every=100, progress=False, tensorboard=False, group_by_length=False)))
    return path


@pytest.fixture(scope="module")
def run(spec, tiny_dir, tmp_path_factory) -> Path:
    """A real run stopped after step 2 of 4 (its state: trainer_state/step-000000002)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = load_train_config(_config(spec, tiny_dir, out), ["stop_after=2"])
    train(cfg, resume=False)
    assert (_state_dir(out) / "state.pt").is_file()
    return out


def _state_dir(out: Path) -> Path:
    """Where a run's newest state is (the earlier layout: trainer_state/ itself)."""
    root = out / "trainer_state"
    return max(root.glob("step-*"), default=root)


def _copy(run: Path, dest: Path, spec: Path, tiny_dir: Path) -> tuple[Path, Path]:
    out = dest / "run"
    shutil.copytree(run, out)
    return out, _config(spec, tiny_dir, out)


def _resume(config: Path, capsys) -> tuple[int, str]:
    rc = main(["train", "--config", str(config), "--resume"])
    return rc, capsys.readouterr().err


# ---- damaged and malicious state: one line naming the file, exit 2 ---------------------
class _Payload:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_tensors(path: Path, edit) -> str:
    tensors = load_file(str(path))
    name = edit(tensors)
    save_file(tensors, str(path))
    return name


def _reshape(tensors):
    name = "llm.gates"
    tensors[name] = torch.zeros(tensors[name].numel() + 1)
    return name


def _nan(tensors):
    name = sorted(n for n in tensors if n.startswith("projector."))[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    return name


def _drop(tensors):
    name = sorted(n for n in tensors if "lora_A" in n)[0]
    del tensors[name]
    return name


def _foreign_optimizer(state: Path) -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([{"params": [p]}])
    saved = torch.load(state, weights_only=True)
    saved["optimizer"] = opt.state_dict()  # one group of one tensor: another model's
    torch.save(saved, state)


DAMAGE = {
    # case: (file in the step directory, what to do to it, text the error must carry)
    "state.pt truncated": ("state.pt", _truncate, "cannot be read"),
    # fixed garbage (random bytes made this test flaky): each makes torch's unpickler raise
    # another class of error — IndexError, struct.error, KeyError, UnicodeDecodeError, EOF
    **{f"state.pt garbage {b}": ("state.pt", lambda p, b=b: p.write_bytes(bytes.fromhex(b)),
                                 "state.pt")
       for b in ("4b", "4d", "68de", "55107edc43f1d34d", "29", "14")},
    "state.pt empty": ("state.pt", lambda p: p.write_bytes(b""), "state.pt"),
    "state.pt missing": ("state.pt", Path.unlink, "not found"),
    "state.pt not a trainer state": (
        "state.pt", lambda p: torch.save({"weights": torch.ones(2)}, p), "not a trainer state"),
    "state.pt of another model": ("state.pt", _foreign_optimizer, "does not fit this run"),
    "state.json truncated": ("state.json", _truncate, "not readable JSON"),
    "state.json not an object": ("state.json", lambda p: p.write_text("[1, 2]"), "needs"),
    "state.json step not a number": (
        "state.json", lambda p: p.write_text(json.dumps(
            json.loads(p.read_text()) | {"step": "2"})), "non-negative integers"),
    "state.json missing": ("state.json", Path.unlink, "not found"),
    "state.json not UTF-8": ("state.json", lambda p: p.write_bytes(b"\xff\xfe{"), "JSON"),
    "adapter truncated": (TRAINED_NAME, _truncate, "not a readable safetensors file"),
    "adapter wrong shape": (TRAINED_NAME, lambda p: _edit_tensors(p, _reshape),
                            "llm.gates has shape"),
    "adapter NaN": (TRAINED_NAME, lambda p: _edit_tensors(p, _nan), "NaN or infinite"),
    "adapter tensor missing": (TRAINED_NAME, lambda p: _edit_tensors(p, _drop), "1 missing"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_state_is_one_line_naming_the_file(run, spec, tiny_dir, tmp_path, capsys,
                                                   case):
    out, config = _copy(run, tmp_path, spec, tiny_dir)
    name, damage, expected = DAMAGE[case]
    target = _state_dir(out) / name
    tensor = damage(target)
    rc, err = _resume(config, capsys)
    lines = [line for line in err.splitlines() if line.startswith("m2ugen: error:")]
    assert rc == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"m2ugen: error: {target}: "), err
    assert expected in lines[0], lines[0]
    if isinstance(tensor, str):
        assert tensor in lines[0]  # the tensor is named too


def test_malicious_pickle_in_state_is_refused_and_runs_nothing(run, spec, tiny_dir, tmp_path,
                                                               capsys):
    out, config = _copy(run, tmp_path, spec, tiny_dir)
    pt = _state_dir(out) / "state.pt"
    marker = tmp_path / "pwned"
    saved = torch.load(pt, weights_only=True)
    torch.save(saved | {"optimizer": _Payload(marker)}, pt)
    # the payload is live: an unrestricted load runs it
    torch.load(pt, weights_only=False)
    assert marker.exists()
    marker.unlink()
    rc, err = _resume(config, capsys)
    assert rc == 2 and not marker.exists()
    lines = [line for line in err.splitlines() if line.startswith("m2ugen: error:")]
    assert len(lines) == 1 and lines[0].startswith(f"m2ugen: error: {pt}: refused"), err
    assert "exec" in lines[0] and "Traceback" not in err


# ---- crash safety -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tiny_dir) -> M2UGen:
    return M2UGen.from_pretrained(tiny_dir)  # our own copy: loading state changes it


def _cfg(out: Path, tiny_dir: Path) -> TrainConfig:
    return TrainConfig(model=str(tiny_dir), out=str(out), tensorboard=False, progress=False)


def _parts(model):
    params = [p for p in model.trained_parameters().values()]
    optim = torch.optim.AdamW(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 1.0)
    return optim, sched, torch.amp.GradScaler("cuda", enabled=False)


def _save(model, out: Path, step: int, tiny_dir: Path) -> None:
    """A checkpoint whose gates hold `step`, so a load shows which step it restored."""
    with torch.no_grad():
        model.llm.gates.fill_(float(step))
    optim, sched, scaler = _parts(model)
    save_checkpoint(model, out, optim, sched, scaler, step, 0, step, 0, 1, _cfg(out, tiny_dir))


def _load(model, out: Path) -> int:
    with torch.no_grad():
        model.llm.gates.fill_(-1.0)
    optim, sched, scaler = _parts(model)
    step, _, batch = load_trainer_state(out, optim, sched, scaler, 0, torch.device("cpu"),
                                        model)
    assert batch == step and torch.all(model.llm.gates == float(step))  # that step's weights
    return step


def _clean(out: Path, step: int) -> None:
    """Exactly one state, the given one, and no temporary in or beside trainer_state/."""
    assert os.listdir(out / "trainer_state") == [f"step-{step:09d}"]
    assert not [n for n in os.listdir(out) if n.startswith(".")], os.listdir(out)


def test_a_crash_at_any_point_of_a_save_resumes_the_old_or_the_new_step(model, tiny_dir,
                                                                        tmp_path, monkeypatch):
    """Copies of the run taken around every rename and delete of a save are what a crash
    there leaves; each resumes at step 1 or step 2 with that step's weights, and the next
    save leaves one state and no temporary."""
    out = tmp_path / "run"
    _save(model, out, 1, tiny_dir)
    snaps: list[Path] = []

    def snapshot():
        snaps.append(tmp_path / f"crash{len(snaps)}")
        shutil.copytree(out, snaps[-1], symlinks=True)

    def spy(real):
        def call(*args, **kw):
            snapshot()
            result = real(*args, **kw)
            snapshot()
            return result
        return call

    for module, name in ((os, "rename"), (os, "replace"), (shutil, "rmtree")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    _save(model, out, 2, tiny_dir)
    monkeypatch.undo()
    steps = [_load(model, snap) for snap in snaps]
    assert steps[0] == 1 and steps[-1] == 2 and steps == sorted(steps), steps
    assert len(snaps) >= 12
    for snap in snaps:
        _save(model, snap, 3, tiny_dir)
        assert _load(model, snap) == 3
        _clean(snap, 3)


def test_a_failing_commit_keeps_the_previous_state(model, tiny_dir, tmp_path, monkeypatch):
    """The previous state is deleted only after the new one is committed."""
    out = tmp_path / "run"
    _save(model, out, 1, tiny_dir)
    real = os.rename

    def rename(src, dst):
        if Path(dst).name.startswith("step-"):
            raise OSError(28, "No space left on device", str(src))
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        _save(model, out, 2, tiny_dir)
    monkeypatch.undo()
    assert _load(model, out) == 1
    _clean(out, 1)


def _legacy(out: Path) -> Path:
    """Turn a run into the layout of earlier versions: the files in trainer_state/."""
    root = out / "trainer_state"
    for state in sorted(root.glob("step-*"))[-1:]:
        for f in os.listdir(state):
            os.rename(state / f, root / f)
        state.rmdir()
    return root


def test_runs_of_the_earlier_layout_resume_and_are_converted(model, tiny_dir, tmp_path):
    out = tmp_path / "run"
    _save(model, out, 5, tiny_dir)
    _legacy(out)
    assert _load(model, out) == 5
    _save(model, out, 6, tiny_dir)
    _clean(out, 6)  # the earlier layout's files are gone with the first new save


@pytest.mark.parametrize("crash", ["between the renames", "before the first rename"])
def test_earlier_versions_crashed_swap_is_recovered(model, tiny_dir, tmp_path, crash):
    """Earlier versions swapped trainer_state/ with two renames: old → .trainer_state.old-PID,
    then the build .trainer_state.XXXXXXXX.tmp → trainer_state. A crash between them left
    no trainer_state/ and resume said there was nothing to resume."""
    out = tmp_path / "run"
    _save(model, out, 7, tiny_dir)
    legacy = _legacy(out)
    build = out / ".trainer_state.k2x9q0ab.tmp"
    shutil.copytree(legacy, build)
    (build / "state.json").write_text("{")  # the newer build: not to be trusted
    if crash == "between the renames":
        os.rename(legacy, out / ".trainer_state.old-4242")
    assert _load(model, out) == 7
    _save(model, out, 8, tiny_dir)
    _clean(out, 8)


def test_earlier_versions_crashed_run_resumes_through_the_cli(run, spec, tiny_dir, tmp_path,
                                                              capsys):
    out, config = _copy(run, tmp_path, spec, tiny_dir)
    os.rename(_legacy(out), out / ".trainer_state.old-4242")
    rc, err = _resume(config, capsys)
    assert rc == 0, err
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]  # continued at step 3, not from scratch
    _clean(out, 4)


def test_resume_restores_the_torch_and_python_random_states(model, tiny_dir, tmp_path):
    """Losses cannot show it while dropout is 0, so compare the generator states."""
    out = tmp_path / "run"
    torch.manual_seed(123)
    random.seed(456)
    torch.rand(7)
    random.random()
    saved_torch, saved_python = torch.get_rng_state(), random.getstate()
    _save(model, out, 1, tiny_dir)
    torch.rand(100)
    random.random()
    assert not torch.equal(torch.get_rng_state(), saved_torch)
    assert random.getstate() != saved_python
    _load(model, out)
    assert torch.equal(torch.get_rng_state(), saved_torch)
    assert random.getstate() == saved_python


def test_resume_with_nothing_saved_says_what_to_do(tmp_path, model):
    optim, sched, scaler = _parts(model)
    with pytest.raises(ConfigError, match="no trainer_state/ to resume from; drop --resume"):
        load_trainer_state(tmp_path, optim, sched, scaler, 0, torch.device("cpu"), model)
    (tmp_path / "trainer_state").mkdir()
    (tmp_path / ".trainer_state.step-000000001.1-x.tmp").mkdir()  # crashed first save
    with pytest.raises(ConfigError, match="holds no saved state .*remove that directory"):
        load_trainer_state(tmp_path, optim, sched, scaler, 0, torch.device("cpu"), model)
