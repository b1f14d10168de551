"""Name or directory → model, and model → directory.

`load_model` is what `M2UGen.from_pretrained` runs: resolve the name (presets, the tiny
preset built on first use), load every component straight onto its device in the target
dtype, allocate the trained parts on `meta` and fill them from `adapter.safetensors`,
check the base fingerprints, and load the music decoder when asked (`decoder=True`; else
`model.load_decoder()` loads it later, explicitly). Like `presets`, this module receives
the model class instead of importing it: the model's own methods delegate here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from m2ugen.checkpoint import TRAINED_NAME, fingerprint, load_tensors, save_tensors
from m2ugen.config import M2UGenConfig, resolve_component
from m2ugen.errors import ConfigError, check_device, nonfinite_weights
from m2ugen.media import MediaSpec
from m2ugen.modules.decoders import MusicDecoder, load_decoder
from m2ugen.modules.encoders import load_encoders
from m2ugen.modules.encoders import read_media_spec as encoders_media_spec
from m2ugen.modules.llm import load_llm
from m2ugen.presets import resolve_model
from m2ugen.trained import load_trained, trained_parameters

log = logging.getLogger(__name__)

COMPONENT_KEYS = ("llm", "mert", "vit", "vivit", "decoder_path")  # fingerprinted when local


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (DESIGN.md §6). The one
    place this choice is made: loading, training's precision=auto and every face use it."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(model_cls: type, name_or_dir: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, *, warn_untrained: bool = True,
               trust_remote_code: bool = False, decoder: bool = True):
    """Load a model directory or a preset into `model_cls` (M2UGen); see `from_pretrained`."""
    config, base = resolve_model(name_or_dir, model_cls=model_cls)
    device = check_device(device)  # "tpu", "meta", a missing cuda:7: one line
    if dtype is None:
        dtype = default_dtype(device)

    def ref(key: str) -> str:
        return resolve_component(getattr(config, key), base)

    encoders = load_encoders(ref("mert"), ref("vit"), ref("vivit"), dtype,
                             config.mert_chunk_seconds, device, trust_remote_code)
    llm = load_llm(ref("llm"), ref("tokenizer"), config, dtype, device)
    # NaN-filled weight files load fine and fail much later (NaN logits); name them now
    for key, module in (("mert", encoders["audio"]), ("vit", encoders["image"]),
                        ("vivit", encoders["video"]), ("llm", llm)):
        nonfinite_weights(ref(key), module.named_parameters())
    trained = base / TRAINED_NAME if base is not None else None
    has_trained = trained is not None and trained.is_file()
    model = model_cls(config, encoders, llm, base_dir=base, empty=has_trained)
    if has_trained:  # allocate the meta parts directly in the target dtype and device
        for part in (model.adapters, model.projector):
            part.to(dtype=dtype).to_empty(device=device)
    model.to(device=device, dtype=dtype)
    if has_trained:
        load_trained(model, load_tensors(trained), str(trained))
        check_fingerprints(config, base)
    elif warn_untrained:
        log.warning("%s has no %s: the model is UNTRAINED (zero gates ignore audio, image "
                    "and video)", name_or_dir, TRAINED_NAME)
    if decoder:
        model.load_decoder()
    return model.eval()


def load_model_decoder(config: M2UGenConfig, base: Path | None, device: torch.device,
                       dtype: torch.dtype) -> MusicDecoder:
    """The frozen music decoder a model's config names, checked: finite weights, and the
    conditioning shape its projector makes."""
    path = resolve_component(config.decoder_path, base)
    decoder = load_decoder(config.decoder, path, device, dtype)
    nonfinite_weights(path, decoder_parameters(decoder))
    want = (config.projector_tokens, config.projector_dim)
    if decoder.cond_shape != want:
        raise ConfigError(
            f"{path}: the decoder takes conditioning {decoder.cond_shape[0]}×"
            f"{decoder.cond_shape[1]} but the projector makes {want[0]}×{want[1]}; "
            "name the decoder this model was trained with")
    return decoder


def read_media_spec(name_or_dir: str | Path, *, model_cls: type) -> MediaSpec:
    """How media must be loaded for a model, read from its encoders' small config files
    before any weight loads (a face decodes attachments first, so a bad file costs a
    second, not a model load). Equals the loaded model's `media_spec`."""
    config, base = resolve_model(name_or_dir, model_cls=model_cls)
    return encoders_media_spec(resolve_component(config.mert, base),
                               resolve_component(config.vivit, base))


def check_fingerprints(config: M2UGenConfig, base: Path | None) -> None:
    """Warn loudly when a local base component changed since the model was written."""
    for key, expected in config.base_fingerprints.items():
        ref = resolve_component(getattr(config, key), base)
        found = fingerprint(ref)
        if expected and found is not None and found != expected:
            log.warning("%s (%s) is not the %s this model was trained on: its weights changed "
                        "since the model directory was written, so the trained tensors will "
                        "not fit them; point the config at the original", ref, key, key)


def decoder_parameters(decoder: MusicDecoder) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every module a decoder holds (a pipeline's components too)."""
    parts = dict(vars(decoder))
    pipe = parts.get("pipe")
    if pipe is not None:
        parts.update(getattr(pipe, "components", {}))
    for key, part in parts.items():
        if isinstance(part, nn.Module):
            for name, p in part.named_parameters():
                yield f"{key}.{name}", p


def write_model_files(model: nn.Module, directory: Path, metadata: dict[str, str] | None = None,
                      dtype: torch.dtype | None = None) -> None:
    """Config, tokenizer and trained tensors (cast to `dtype` if given) of `model` into
    `directory`, each file atomically. Local components are referred to by absolute path
    and fingerprinted, so the directory loads from anywhere and notices a changed base."""
    cfg = M2UGenConfig.from_dict(model.config.to_dict())
    for key in COMPONENT_KEYS:
        ref = resolve_component(getattr(cfg, key), model.base_dir)
        if Path(ref).exists():  # local component: keep pointing at it from anywhere
            setattr(cfg, key, str(Path(ref).resolve()))
            cfg.base_fingerprints[key] = (cfg.base_fingerprints.get(key)
                                          or fingerprint(ref) or "")
    cfg.tokenizer = "tokenizer"
    cfg.save(directory)
    model.tokenizer.save_pretrained(directory / "tokenizer")
    tensors = {k: v if dtype is None else v.to(dtype)
               for k, v in trained_parameters(model).items()}
    save_tensors(directory / TRAINED_NAME, tensors,
                 metadata={"format": "m2ugen", "version": str(cfg.format_version),
                           **(metadata or {})})
