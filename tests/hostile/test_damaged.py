"""Damaged model directories: truncated, garbage or NaN-filled weight files in the trained
tensors (adapter.safetensors) or in a component (llm/, vit/, mert/, vivit/, the decoder),
tensors or configs of the wrong shape. Each is one line naming the file (and the tensor
where there is one) and the fix, exit 2, no traceback — at load time, not as NaN logits or
a sampling crash later.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from m2ugen.cli import main
from m2ugen.errors import ConfigError
from m2ugen.model import M2UGen

WEIGHTS = "model.safetensors"


@pytest.fixture
def model_copy(tiny_dir, tmp_path) -> Path:
    """A private copy of the tiny preset to damage."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "model"))


def chat_error(capsys, model: Path, *extra: str) -> str:
    """`m2ugen chat` on `model` (music rendered, so the decoder loads too) → the one
    error line; every other stderr line is our own log, never a traceback."""
    code = main(["chat", "--model", str(model), "--music", "always", "--seconds", "0.5",
                 "--max-new-tokens", "2", "--out", str(model.parent / "out.wav"), *extra, "hi"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and all(line.startswith("m2ugen: ") for line in
                                          err.splitlines()), err
    [line] = [line for line in err.splitlines() if line.startswith("m2ugen: error: ")]
    return line


def rewrite(path: Path, change: Callable[[dict[str, torch.Tensor]], str]) -> str:
    """Apply `change` to the tensors of a safetensors file (metadata kept); returns the
    name of the tensor it changed."""
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    name = change(tensors)
    save_file(tensors, str(path), metadata=metadata)
    return name


def fill_nan(tensors: dict[str, torch.Tensor]) -> str:
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[len(tensors) // 2]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    return name


def one_inf(tensors: dict[str, torch.Tensor]) -> str:
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[-1] = float("-inf")
    return name


def truncate(path: Path, size: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2 if size is None else size])


COMPONENTS = ["llm", "vit", "mert", "vivit", "musicgen"]


@pytest.mark.parametrize("component", COMPONENTS)
def test_truncated_component_weights(model_copy, capsys, component):
    weights = model_copy / component / WEIGHTS
    truncate(weights)
    line = chat_error(capsys, model_copy)
    assert f"{weights}: damaged safetensors file" in line and "make-tiny" in line


@pytest.mark.parametrize("damage", ["empty", "eight bytes", "garbage"])
def test_component_weights_that_are_not_safetensors(model_copy, capsys, damage):
    weights = model_copy / "llm" / WEIGHTS
    if damage == "garbage":
        weights.write_bytes(bytes(range(256)) * 20)
    else:
        truncate(weights, 0 if damage == "empty" else 8)
    assert f"{weights}: damaged safetensors file" in chat_error(capsys, model_copy)


@pytest.mark.parametrize("component", COMPONENTS)
def test_nan_filled_component_weights(model_copy, capsys, component):
    weights = model_copy / component / WEIGHTS
    name = rewrite(weights, fill_nan)
    line = chat_error(capsys, model_copy)
    assert f"{weights}: tensor {name} holds NaN or infinite values" in line


def test_one_infinite_value_in_a_component(model_copy, capsys):
    weights = model_copy / "vivit" / WEIGHTS
    name = rewrite(weights, one_inf)
    assert f"{weights}: tensor {name} holds NaN" in chat_error(capsys, model_copy)


@pytest.mark.parametrize("change", [fill_nan, one_inf], ids=["nan", "inf"])
def test_non_finite_trained_tensors(model_copy, capsys, change):
    adapter = model_copy / "adapter.safetensors"
    name = rewrite(adapter, change)
    line = chat_error(capsys, model_copy)
    assert f"{adapter}: tensor {name} holds NaN or infinite values" in line


@pytest.mark.parametrize("kind", ["lora_A", "lora_B", "adapters.audio", "projector",
                                  "gates"])
def test_wrong_shape_trained_tensor(model_copy, capsys, kind):
    adapter = model_copy / "adapter.safetensors"

    def grow(tensors: dict[str, torch.Tensor]) -> str:
        name = sorted(k for k in tensors if kind in k)[0]
        tensors[name] = torch.zeros(*(d + 1 for d in tensors[name].shape))
        return name

    name = rewrite(adapter, grow)
    line = chat_error(capsys, model_copy)
    assert f"{adapter}: {name} has shape" in line


def test_missing_trained_tensor(model_copy, capsys):
    adapter = model_copy / "adapter.safetensors"

    def drop(tensors: dict[str, torch.Tensor]) -> str:
        name = sorted(k for k in tensors if "lora_B" in k)[0]
        del tensors[name]
        return name

    name = rewrite(adapter, drop)
    line = chat_error(capsys, model_copy)
    assert str(adapter) in line and name in line


def test_truncated_trained_tensors(model_copy, capsys):
    adapter = model_copy / "adapter.safetensors"
    truncate(adapter)
    assert str(adapter) in chat_error(capsys, model_copy)


@pytest.mark.parametrize("component", ["llm", "vit"])
def test_component_weights_of_another_shape(model_copy, capsys, component):
    """Weights that load but contradict the component's config.json."""
    weights = model_copy / component / WEIGHTS

    def grow(tensors: dict[str, torch.Tensor]) -> str:
        name = sorted(k for k in tensors if k.endswith(".weight") and tensors[k].dim() == 2)[0]
        tensors[name] = torch.zeros(*(d + 1 for d in tensors[name].shape))
        return name

    rewrite(weights, grow)
    line = chat_error(capsys, model_copy)
    assert str(model_copy / component) in line and "do not match its config.json" in line


def test_component_config_not_json(model_copy, capsys):
    (model_copy / "vit" / "config.json").write_text("{broken")
    line = chat_error(capsys, model_copy)
    # a local directory: no hub login or download advice, the fix for a damaged copy
    assert str(model_copy / "vit") in line and "damaged or incomplete" in line
    assert "huggingface-cli login" not in line


def test_component_without_weights(model_copy, capsys):
    (model_copy / "mert" / WEIGHTS).unlink()
    line = chat_error(capsys, model_copy)
    assert str(model_copy / "mert") in line and "damaged or incomplete" in line


@pytest.mark.parametrize("part", ["unet/diffusion_pytorch_model", "language_model/model",
                                  "text_encoder_2/model"])
def test_truncated_audioldm2_part(tiny_audioldm2_dir, tmp_path, capsys, part):
    model = Path(shutil.copytree(tiny_audioldm2_dir, tmp_path / "model"))
    weights = model / "audioldm2" / f"{part}.safetensors"
    truncate(weights)
    assert str(weights) in chat_error(capsys, model)


def test_nan_in_audioldm2_unet(tiny_audioldm2_dir, tmp_path, capsys):
    model = Path(shutil.copytree(tiny_audioldm2_dir, tmp_path / "model"))
    weights = model / "audioldm2" / "unet" / "diffusion_pytorch_model.safetensors"
    name = rewrite(weights, fill_nan)
    assert f"{weights}: tensor {name} holds NaN" in chat_error(capsys, model)


def test_python_api_raises_config_error(model_copy):
    name = rewrite(model_copy / "llm" / WEIGHTS, fill_nan)
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        M2UGen.from_pretrained(model_copy)


# ---- m2ugen info reads headers only: damaged ones are one line too ---------------------
@pytest.mark.parametrize("target, damage", [
    ("adapter.safetensors", "half"), ("adapter.safetensors", "three bytes"),
    ("llm/model.safetensors", "garbage"), ("vit/model.safetensors", "header not json"),
    ("vivit/model.safetensors", "header only"),
])
def test_info_on_damaged_files(model_copy, capsys, target, damage):
    path = model_copy / target
    data = path.read_bytes()
    if damage == "half":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "three bytes":
        path.write_bytes(data[:3])
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 64)
    elif damage == "header not json":
        n = int.from_bytes(data[:8], "little")
        path.write_bytes(data[:8] + b"x" * n + data[8 + n:])
    else:
        n = int.from_bytes(data[:8], "little")
        path.write_bytes(data[:8 + n])  # the tensors' bytes are gone
    code = main(["info", str(model_copy)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"m2ugen: error: {path}: damaged safetensors file")
