"""A fine-tuned music decoder: the base decoder plus only the tensors `m2ugen
train-decoder` trained (peft LoRA on its attention/projection layers, or the whole tuned
module).

A fine-tuned decoder is a folder (a model directory's `decoder_path`) holding

    decoder.json          {"format": "m2ugen-decoder", "version": 1, "kind", "base" (the
                          base decoder: path or hub id), "base_fingerprint", "tuning": "lora"
                          | "full", "lora": {"rank", "alpha", "dropout", "targets"},
                          "merge": true|false, "step"}
    decoder.safetensors   the trained tensors, named inside the tuned module (MusicGen: its
                          decoder LM `model.decoder`; AudioLDM2: the UNet), peft's adapter
                          and base-layer parts removed from the names

`load_music_decoder` loads either a plain decoder or such a folder: the base is loaded as
usual, LoRA is injected with peft (`inject_adapter_in_model`), every tensor is checked by
name and shape, and LoRA is merged into the base weights when `merge` is true (one matmul
per projection at render time) or kept beside them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from m2ugen.checkpoint import EMPTY_FINGERPRINT, fingerprint, load_tensors
from m2ugen.errors import ConfigError
from m2ugen.modules.decoders import MusicDecoder, load_decoder

log = logging.getLogger(__name__)

TUNED_CONFIG = "decoder.json"
TUNED_TENSORS = "decoder.safetensors"
TUNED_FORMAT = "m2ugen-decoder"
TUNED_VERSION = 1
TUNINGS = ("lora", "full")
_ADAPTER = "default"  # peft's adapter name, never part of our tensor names
# LoRA's default targets: the attention projections (and MusicGen's feed-forward
# projections), as audiocraft's and diffusers' LoRA recipes choose them
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "musicgen": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "audioldm2": ("to_q", "to_k", "to_v", "to_out.0"),
}


@dataclass
class Tuning:
    """How a decoder is fine-tuned: LoRA (rank, alpha, dropout, target layer names) or
    full (every parameter of the tuned module)."""

    mode: str = "lora"
    rank: int = 8
    alpha: int = 8
    dropout: float = 0.0
    targets: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "targets": list(self.targets)}


def tuned_module(decoder: MusicDecoder) -> nn.Module:
    """The module fine-tuning changes: MusicGen's decoder LM (its T5 text encoder and
    EnCodec stay frozen), AudioLDM2's UNet (its encoders, VAE and vocoder stay frozen)."""
    if decoder.kind == "musicgen":
        return decoder.model.decoder
    if decoder.kind == "audioldm2":
        return decoder.pipe.unet
    raise ConfigError(f"decoder kind {decoder.kind!r} cannot be fine-tuned; use musicgen or "
                      "audioldm2")


def clean_name(name: str) -> str:
    """A parameter name without peft's wrapper parts (`base_layer`, the adapter name)."""
    return ".".join(p for p in name.split(".") if p not in ("base_layer", _ADAPTER))


def prepare(module: nn.Module, tuning: Tuning, kind: str) -> dict[str, nn.Parameter]:
    """Make `module` trainable as `tuning` says (LoRA injected in place, or every
    parameter); returns clean name → the parameters that train (nothing else does)."""
    if tuning.mode == "lora":
        targets = list(tuning.targets or DEFAULT_TARGETS[kind])
        config = LoraConfig(r=tuning.rank, lora_alpha=tuning.alpha,
                            lora_dropout=tuning.dropout, target_modules=targets, bias="none")
        try:
            inject_adapter_in_model(config, module, adapter_name=_ADAPTER)
        except ValueError as e:  # peft: "Target modules {...} not found in the base model"
            raise ConfigError(f"lora_targets {targets}: {str(e).splitlines()[0][:200]}; name "
                              f"layers of the {kind} model (default: "
                              f"{', '.join(DEFAULT_TARGETS[kind])})") from e
        for name, p in module.named_parameters():
            p.requires_grad_(".lora_" in f".{name}")
    elif tuning.mode == "full":
        for p in module.parameters():
            p.requires_grad_(True)
    else:
        raise ConfigError(f"tuning {tuning.mode!r}: use one of {', '.join(TUNINGS)}")
    return trained_parameters(module)


def trained_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """Clean name → every parameter of `module` that trains."""
    return {clean_name(n): p for n, p in module.named_parameters() if p.requires_grad}


def load_trained(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy trained tensors into `module`'s trained parameters: the names must be exactly
    those, and each shape must match (a one-line ConfigError naming the tensor)."""
    params = trained_parameters(module)
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ConfigError(f"{source}: does not fit this decoder (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); it was trained on another base "
                          "decoder or with other LoRA settings")
    with torch.no_grad():
        for name, p in params.items():
            t = tensors[name]
            if t.shape != p.shape:
                raise ConfigError(f"{source}: tensor {name} has shape {tuple(t.shape)}, the "
                                  f"decoder's has {tuple(p.shape)}")
            p.copy_(t.to(p.device, p.dtype))


def merge_lora(module: nn.Module) -> int:
    """Fold every LoRA layer of `module` into its base weight (peft's merge); returns how
    many were merged."""
    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.merge()
    return len(layers)


def read_tuned_config(directory: Path) -> dict[str, Any]:
    """decoder.json of a fine-tuned decoder folder, checked."""
    path = directory / TUNED_CONFIG
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not readable JSON ({e}); train it again with "
                          "`m2ugen train-decoder`") from e
    if not isinstance(info, dict) or info.get("format") != TUNED_FORMAT:
        raise ConfigError(f"{path}: not a fine-tuned decoder (format {TUNED_FORMAT!r} "
                          "expected)")
    if int(info.get("version", 0)) > TUNED_VERSION:
        raise ConfigError(f"{path}: version {info['version']} is newer than this m2ugen "
                          f"understands ({TUNED_VERSION}); upgrade m2ugen")
    if info.get("tuning") not in TUNINGS or not isinstance(info.get("base"), str):
        raise ConfigError(f"{path}: needs 'tuning' ({', '.join(TUNINGS)}) and 'base'")
    return info


def is_tuned(path: str | Path) -> bool:
    return (Path(path) / TUNED_CONFIG).is_file()


def tuning_of(info: dict[str, Any]) -> Tuning:
    lora = info.get("lora") or {}
    return Tuning(mode=info["tuning"], rank=int(lora.get("rank", 8)),
                  alpha=int(lora.get("alpha", 8)), dropout=float(lora.get("dropout", 0.0)),
                  targets=list(lora.get("targets", [])))


def load_music_decoder(kind: str, path: str, device: torch.device,
                       dtype: torch.dtype) -> MusicDecoder:
    """A plain decoder (hub id or folder), or a fine-tuned decoder folder: its base with
    the trained tensors applied (LoRA merged or kept beside, as decoder.json says)."""
    if not is_tuned(path):
        return load_decoder(kind, path, device, dtype)
    directory = Path(path)
    info = read_tuned_config(directory)
    if info.get("kind") != kind:
        raise ConfigError(f"{directory}: a fine-tuned {info.get('kind')} decoder, but the "
                          f"model's config says decoder {kind!r}; point decoder_path at a "
                          f"{kind} decoder")
    base = info["base"]
    expected = info.get("base_fingerprint")
    if expected and expected != EMPTY_FINGERPRINT and Path(base).exists() \
            and fingerprint(base) != expected:  # EMPTY: written before subfolders counted
        log.warning("%s is not the decoder %s was fine-tuned on (its weights changed): the "
                    "trained tensors will not fit it", base, directory)
    decoder = load_decoder(kind, base, device, dtype)
    module = tuned_module(decoder)
    tuning = tuning_of(info)
    prepare(module, tuning, kind)
    weights = directory / TUNED_TENSORS
    load_trained(module, load_tensors(weights), str(weights))
    module.requires_grad_(False)
    module.eval()
    if tuning.mode == "lora" and info.get("merge", True):
        n = merge_lora(module)
        log.info("decoder LoRA (%d layers, step %s) merged into %s", n, info.get("step"), base)
    elif tuning.mode == "lora":
        log.info("decoder LoRA (step %s) kept beside the base weights of %s",
                 info.get("step"), base)
    else:
        log.info("fine-tuned decoder weights (step %s) loaded over %s", info.get("step"), base)
    return decoder
