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

from m2ugen.checkpoint import (
    EMPTY_FINGERPRINT,
    TRAINED_NAME,
    fingerprint,
    load_tensors,
    save_tensors,
    stored_parameters,
)
from m2ugen.config import M2UGenConfig, resolve_component
from m2ugen.errors import ConfigError, check_device, nonfinite_weights
from m2ugen.media import MediaSpec
from m2ugen.modules.decoders import MusicDecoder
from m2ugen.modules.decoders.tuning import load_music_decoder
from m2ugen.modules.encoders import load_encoders
from m2ugen.modules.encoders import read_media_spec as encoders_media_spec
from m2ugen.modules.llm import load_llm
from m2ugen.presets import resolve_model
from m2ugen.trained import load_trained, trained_parameters

log = logging.getLogger(__name__)

COMPONENT_KEYS = ("llm", "mert", "vit", "vivit", "decoder_path")  # fingerprinted when local


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_CHOICES = ("auto", *DTYPES)  # what --dtype takes on every face
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names, best first
GiB = 2**30
# auto on a CPU without native bf16 takes fp32 while the weights fill at most this share of
# the available RAM (activations, the tokenizer, Python and the OS need the rest)
FP32_SHARE = 0.8


def dtype_name(dtype: torch.dtype) -> str:
    """bf16, fp16, fp32 (as --dtype spells them), else torch's name."""
    return next((k for k, v in DTYPES.items() if v == dtype), str(dtype).removeprefix("torch."))


def cpu_bf16_feature(cpuinfo: str | None = None) -> str | None:
    """The CPU feature that computes bf16 natively (amx_bf16, avx512_bf16, as /proc/cpuinfo
    names them), or None: without one, bf16 is emulated in fp32 and only saves memory.
    (`torch.backends.cpu.get_cpu_capability()` says only "AVX512", which CPUs without
    AVX512-BF16 report too.) Where /proc/cpuinfo cannot be read: None."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    flags = set(cpuinfo.split())
    return next((f for f in _CPU_BF16_FLAGS if f in flags), None)


def _gpu_half(device: torch.device) -> tuple[torch.dtype, str]:
    name = torch.cuda.get_device_name(device)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16, f"{name} computes bf16 natively"
    return torch.float16, f"{name} has no native bf16 (pre-Ampere): fp16"


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (DESIGN.md §6): the
    library's default and training's precision=auto (the faces' --dtype auto is
    `choose_dtype`, which also takes bf16 on a CPU that computes it natively)."""
    if device.type == "cuda":
        return _gpu_half(device)[0]
    return torch.float32


def available_memory() -> int | None:
    """Bytes of RAM the kernel says a new allocation can get (MemAvailable), or None."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def choose_dtype(choice: str | torch.dtype | None, device: str | torch.device,
                 parameters: int = 0, available: int | None = None) -> torch.dtype:
    """--dtype auto|bf16|fp16|fp32 (or a torch dtype; None: `default_dtype`) on `device` →
    the dtype to load in, logged with the reason. The one resolver every face uses.

    auto: bf16 where the hardware computes it natively (a CUDA GPU with bf16; a CPU with
    AMX-BF16 or AVX512-BF16), fp16 on older GPUs, fp32 otherwise — except on a CPU where
    the model's `parameters` in fp32 would not fit the `available` RAM (default: what
    /proc/meminfo says) and in bf16 would: there bf16, emulated and slower, but it runs
    (a LLaMA-2-7B-size model: 27 GB in fp32 on a 24 GB machine).
    """
    device = torch.device(device)
    if isinstance(choice, torch.dtype) or choice is None:
        return default_dtype(device) if choice is None else choice
    if not isinstance(choice, str) or choice not in DTYPE_CHOICES:
        raise ConfigError(f"dtype {choice!r} is unknown; use one of {', '.join(DTYPE_CHOICES)}")
    if choice != "auto":
        dtype, why = DTYPES[choice], "asked for"
        if device.type == "cpu" and choice == "fp16":
            why += "; the CPU computes fp16 slowly (bf16 or fp32 are the CPU's types)"
    elif device.type == "cuda":
        dtype, why = _gpu_half(device)
    elif device.type == "cpu" and (feature := cpu_bf16_feature()):
        dtype, why = torch.bfloat16, f"this CPU computes bf16 natively ({feature})"
    elif device.type == "cpu":
        dtype, why = torch.float32, ("this CPU has no native bf16 (neither amx_bf16 nor "
                                     "avx512_bf16 in /proc/cpuinfo)")
        free = available if available is not None else available_memory()
        if free is not None and 4 * parameters > FP32_SHARE * free >= 2 * parameters:
            dtype, why = torch.bfloat16, (
                f"{parameters / 1e9:.1f} B parameters need {4 * parameters / GiB:.1f} GiB in "
                f"fp32, more than this machine's {free / GiB:.1f} GiB available; bf16 halves "
                "that (this CPU has no native bf16: emulated, slower; --dtype fp32 to insist)")
    else:
        dtype, why = torch.float32, f"no half-precision rule for {device.type} devices"
    log.info("dtype %s on %s: %s", dtype_name(dtype), device, why)
    return dtype


def merge_lora_for_inference(model) -> bool:
    """Fold LoRA (and the new-token rows) into the base weights where it pays, say so in
    the log, and return whether it merged. On a GPU it does: one kernel per projection
    instead of three at every token, an in-place add in memory the weights own. On the CPU
    it does not: generation is bound by reading the weights, which merging leaves the same
    size, while it copies every memory-mapped weight into private memory (LLaMA-2-7B size:
    56 s and the whole model resident, for no speed-up)."""
    llm = model.llm
    if not llm.mergeable():
        return False
    device = next(llm.parameters()).device
    if device.type == "cpu":
        log.info("LoRA kept beside the base weights on the CPU (merging would copy the "
                 "memory-mapped weights for no speed-up)")
        return False
    llm.merge_for_inference()
    log.info("LoRA merged into the base weights for inference on %s", device)
    return True


def load_model(model_cls: type, name_or_dir: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | str | None = None, *, warn_untrained: bool = True,
               trust_remote_code: bool = False, decoder: bool = True):
    """Load a model directory or a preset into `model_cls` (M2UGen); see `from_pretrained`."""
    config, base = resolve_model(name_or_dir, model_cls=model_cls)
    device = check_device(device)  # "tpu", "meta", a missing cuda:7: one line
    def ref(key: str) -> str:
        return resolve_component(getattr(config, key), base)

    # a name ("auto", "bf16", …) is logged with why; auto weighs the weights against RAM
    parts = ("llm", "mert", "vit", "vivit", *(("decoder_path",) if decoder else ()))
    dtype = choose_dtype(dtype, device, parameters=sum(
        stored_parameters(ref(k)) for k in parts) if dtype == "auto" else 0)

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
    """The frozen music decoder a model's config names (a fine-tuned one: its base plus the
    trained tensors, `decoders.tuning`), checked: finite weights, and the conditioning
    shape its projector makes."""
    path = resolve_component(config.decoder_path, base)
    decoder = load_music_decoder(config.decoder, path, device, dtype)
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
        if expected == EMPTY_FINGERPRINT:  # written before subfolders counted: unknown
            continue
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


def portable_config(config: M2UGenConfig, base: Path | None) -> M2UGenConfig:
    """A copy of `config` whose local components are absolute paths, fingerprinted, so a
    directory written with it loads from anywhere and notices a changed base."""
    cfg = M2UGenConfig.from_dict(config.to_dict())
    for key in COMPONENT_KEYS:
        ref = resolve_component(getattr(cfg, key), base)
        if Path(ref).exists():  # local component: keep pointing at it from anywhere
            setattr(cfg, key, str(Path(ref).resolve()))
            cfg.base_fingerprints[key] = (cfg.base_fingerprints.get(key)
                                          or fingerprint(ref) or "")
    return cfg


def write_model_files(model: nn.Module, directory: Path, metadata: dict[str, str] | None = None,
                      dtype: torch.dtype | None = None,
                      tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Config, tokenizer and trained tensors (the model's, or `tensors` when a trainer
    gathered them from shards; cast to `dtype` if given) of `model` into
    `directory`, each file atomically. Local components are referred to by absolute path
    and fingerprinted, so the directory loads from anywhere and notices a changed base."""
    cfg = portable_config(model.config, model.base_dir)
    cfg.tokenizer = "tokenizer"
    cfg.save(directory)
    model.tokenizer.save_pretrained(directory / "tokenizer")
    tensors = {k: v if dtype is None else v.to(dtype)
               for k, v in (trained_parameters(model) if tensors is None else tensors).items()}
    save_tensors(directory / TRAINED_NAME, tensors,
                 metadata={"format": "m2ugen", "version": str(cfg.format_version),
                           **(metadata or {})})
