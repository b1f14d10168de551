"""Malicious pickles wherever m2ugen reads .pt/.pth/.bin: refused in one line, nothing runs;
and the published `checkpoint.pth` container (LLaMA-Adapter `misc.save_model`) converts.

Every payload here creates a marker file when unpickled by plain `pickle`; the first test
proves that, the others that m2ugen never lets it happen.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_convert import _component_flags, published_state

from m2ugen.checkpoint import TRAINED_NAME
from m2ugen.cli import main


class RunsPython:
    """Unpickling calls exec(): the payload of most malicious checkpoints."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pickle ran')",)


class RunsShell(RunsPython):
    """Unpickling calls os.system()."""

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class Unlisted:
    """A harmless class that is still not one the published container needs."""


def _torch_zip(obj, path: Path) -> None:
    torch.save(obj, path)


def _torch_legacy(obj, path: Path) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _raw(protocol: int):
    def write(obj, path: Path) -> None:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
    return write


WRITERS = {"torch-zip": _torch_zip, "torch-legacy": _torch_legacy,
           "pickle-2": _raw(2), "pickle-4": _raw(4)}
PAYLOADS = {"exec": RunsPython, "os.system": RunsShell}


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "pickle-ran"


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def refused(err: str, path: Path) -> bool:
    """One line naming the file, saying it was refused; no traceback."""
    return (err.count("\n") == 1 and err.startswith(f"m2ugen: error: {path}: refused")
            and "Traceback" not in err)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_payloads_really_run_under_plain_pickle(tmp_path, marker, payload):
    pickle.loads(pickle.dumps({"w": PAYLOADS[payload](marker)}))
    assert marker.exists()  # so a missing marker below means "not executed", not "broken"


# ---- convert-original's checkpoint ------------------------------------------------------
@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_convert_refuses_a_malicious_checkpoint(tiny_dir, tmp_path, marker, capsys, writer,
                                                payload):
    ckpt = tmp_path / "checkpoint.pth"
    WRITERS[writer]({"model": {"w": torch.zeros(2)}, "epoch": PAYLOADS[payload](marker)}, ckpt)
    code, err = run(capsys, "convert-original", str(ckpt), "--out", str(tmp_path / "m"),
                    *_component_flags(tiny_dir))
    assert code == 2 and refused(err, ckpt), err
    assert not marker.exists() and not (tmp_path / "m").exists()


# ---- Meta-format LLaMA shards -----------------------------------------------------------
@pytest.mark.parametrize("bad_shard", [0, 1])
def test_meta_llama_shard_is_refused(tiny_dir, tmp_path, marker, capsys, monkeypatch,
                                     bad_shard):
    monkeypatch.setenv("M2UGEN_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    llm = model / "llm"
    shutil.rmtree(llm)
    llm.mkdir()
    (llm / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "n_heads": 4}))
    (llm / "tokenizer.model").write_bytes(b"not read before the shards")
    for i in range(2):
        tensors = {"norm.weight": torch.ones(64)}
        _torch_zip({**tensors, "x": RunsPython(marker)} if i == bad_shard else tensors,
                   llm / f"consolidated.{i:02d}.pth")
    code, err = run(capsys, "chat", "--model", str(model), "--music", "never", "hi")
    assert code == 2 and refused(err, llm / f"consolidated.{bad_shard:02d}.pth"), err
    assert not marker.exists()


# ---- a component's pytorch_model.bin (transformers and diffusers load .bin files) --------
def _plant_bin(component: Path, marker: Path, safetensors: str, name: str) -> Path:
    (component / safetensors).unlink()
    path = component / name
    _torch_zip({"weight": torch.zeros(2), "x": RunsShell(marker)}, path)
    return path


@pytest.mark.parametrize("component", ["mert", "vit", "vivit", "llm", "musicgen"])
def test_component_pytorch_model_bin_is_refused(tiny_dir, tmp_path, marker, capsys,
                                                component):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    path = _plant_bin(model / component, marker, "model.safetensors", "pytorch_model.bin")
    code, err = run(capsys, "chat", "--model", str(model), "--music", "always",
                    "--seconds", "0.2", "--max-new-tokens", "2", "--out",
                    str(tmp_path / "out.wav"), "hi")
    assert code == 2 and refused(err, path), err
    assert not marker.exists()


def test_audioldm2_component_bin_is_refused(tiny_audioldm2_dir, tmp_path, marker):
    from m2ugen.errors import ConfigError
    from m2ugen.modules.decoders import load_decoder

    pipe = tmp_path / "audioldm2"
    shutil.copytree(tiny_audioldm2_dir / "audioldm2", pipe)
    path = _plant_bin(pipe / "unet", marker, "diffusion_pytorch_model.safetensors",
                      "diffusion_pytorch_model.bin")
    with pytest.raises(ConfigError) as e:
        load_decoder("audioldm2", str(pipe), torch.device("cpu"), torch.float32)
    assert "\n" not in str(e.value) and str(path) in str(e.value)  # diffusers names the file
    assert not marker.exists()


# ---- the published checkpoint.pth container ---------------------------------------------
def published_args(**extra) -> argparse.Namespace:
    """The Namespace of the published main_train.py (after init_distributed_mode)."""
    return argparse.Namespace(
        batch_size=4, epochs=400, accum_iter=1, llama_type="7B", llama_path="/path/to/llama",
        mert_path="m-a-p/MERT-v1-330M", vit_path="google/vit-base-patch16-224-in21k",
        vivit_path="google/vivit-b-16x2-kinetics400", music_decoder="musicgen",
        music_decoder_path="facebook/musicgen-medium", max_words=1024, weight_decay=0.05,
        lr=1e-4, blr=0.01, min_lr=0.01, warmup_epochs=40, stage=3, load_same_stage=False,
        data_config="configs/data/pretrain/EN.yaml", num_workers=5, pin_mem=True,
        output_dir="./output", log_dir="./output", device="cuda", seed=420, start_epoch=0,
        world_size=1, local_rank=-1, dist_on_itp=False, dist_url="env://", split_epoch=50,
        distributed=False, **extra)


def save_published_container(tiny_dir: Path, path: Path, args: argparse.Namespace) -> dict:
    """{"model", "optimizer", "epoch", "scaler", "args"} as misc.save_model writes it."""
    sd = published_state(tiny_dir)
    model = OrderedDict((f"module.{k}", v) for k, v in sd.items())  # DDP-wrapped names
    model._metadata = OrderedDict({"": {"version": 1}})  # as nn.Module.state_dict sets it
    params = [torch.nn.Parameter(v.clone()) for k, v in sd.items() if k.startswith("mu_mert")]
    optim = torch.optim.AdamW([{"params": params[:2], "weight_decay": 0.0},
                               {"params": params[2:], "weight_decay": 0.05}],
                              lr=1e-4, betas=(0.9, 0.95))
    sum((p * p).sum() for p in params).backward()
    optim.step()  # exp_avg / exp_avg_sq / step tensors in the state
    scaler = torch.amp.GradScaler("cpu")  # the published NativeScaler wraps a GradScaler
    torch.save({"model": model, "optimizer": optim.state_dict(), "epoch": 4,
                "scaler": scaler.state_dict(), "args": args}, path)
    return sd


def test_published_container_converts(tiny_dir, tmp_path, capsys):
    ckpt = tmp_path / "checkpoint.pth"
    sd = save_published_container(tiny_dir, ckpt, published_args())
    code, err = run(capsys, "convert-original", str(ckpt), "--out", str(tmp_path / "m"),
                    *_component_flags(tiny_dir))
    assert code == 0, err
    torch.save({"model": sd}, tmp_path / "bare.pth")  # the same tensors, no container
    code, err = run(capsys, "convert-original", str(tmp_path / "bare.pth"), "--out",
                    str(tmp_path / "bare"), *_component_flags(tiny_dir))
    assert code == 0, err
    got = load_file(tmp_path / "m" / TRAINED_NAME)
    want = load_file(tmp_path / "bare" / TRAINED_NAME)
    assert got.keys() == want.keys() and len(got) > 10
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


@pytest.mark.parametrize("extra, what", [
    (lambda m: {"evil": RunsPython(m)}, "rebuild exec"),
    (lambda m: {"shell": RunsShell(m)}, "system"),
    (lambda m: {"outdir": Unlisted()}, "Unlisted"),
], ids=["exec-in-args", "os.system-in-args", "unlisted-class-in-args"])
def test_published_container_still_refuses_anything_else(tiny_dir, tmp_path, marker, capsys,
                                                         extra, what):
    ckpt = tmp_path / "checkpoint.pth"
    save_published_container(tiny_dir, ckpt, published_args(**extra(marker)))
    code, err = run(capsys, "convert-original", str(ckpt), "--out", str(tmp_path / "m"),
                    *_component_flags(tiny_dir))
    assert code == 2 and refused(err, ckpt) and what in err, err
    assert not marker.exists()
