"""`m2ugen train --dry-run`: how much memory one GPU needs for a config, without loading a
weight. Parameter counts are exact: the LLM, its LoRA / bias / norm / new-token tensors,
the adapters and the projector are built on the `meta` device from their configs (the
trainable set from `STAGE_GROUPS`, as training computes it), and local encoder / decoder
weights are counted from their safetensors headers. Hub components that are not on this
machine fall back to their published architecture (`PUBLISHED`), said in the report.

Per GPU, in bytes (N ranks, s = bytes of the frozen dtype, 2 for bf16/fp16, 4 for fp32):
    frozen weights     LLM base × s (/N under fsdp) + encoders and decoder × s (whole)
    trained tensors    every trained tensor in fp32 (/N under fsdp)
    gradients          the stage's trainable tensors in fp32 (/N; + DDP's bucket copy)
    optimizer state    AdamW 8 bytes per trainable value (AdamW8bit 2; /N; 0 offloaded)
    activations        what autograd keeps for backward, per token (batch × max_len):
                       per layer 12·D (fp32 RMSNorm copies) + s·(9·D + 4·I), or s·D with
                       gradient checkpointing (+ one layer recomputed); logits (2s+12)·V;
                       encoder features
    fsdp buffers       two layers unsharded at a time (all-gather + prefetch)
plus a fixed CUDA context / allocator allowance (`CUDA_OVERHEAD`) when fitting a card.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from m2ugen.checkpoint import stored_parameters
from m2ugen.config import MODALITIES, M2UGenConfig, resolve_component
from m2ugen.errors import ConfigError
from m2ugen.modules.adapters import OutputProjector, UnderstandingAdapter
from m2ugen.trained import stage_groups, trained_parameters
from m2ugen.training.config import TrainConfig

GiB = 1024 ** 3
CUDA_OVERHEAD = GiB  # CUDA context, cuBLAS workspaces, allocator slack (not on the CPU)
# published architectures, for hub components not on this machine (ORIGINAL_M2UGEN.md §1)
PUBLISHED_LLM = {
    "meta-llama/Llama-2-7b-hf": dict(hidden_size=4096, intermediate_size=11008,
                                     num_hidden_layers=32, num_attention_heads=32,
                                     num_key_value_heads=32, vocab_size=32000,
                                     max_position_embeddings=4096),
}
# parameter counts of the frozen encoders and decoders (every hub preset's), the decoders
# counted on `meta` from transformers' and diffusers' classes at the checkpoints' layouts
# (MusicGen: with its T5-base encoder and 32 kHz EnCodec; stereo: 8 codebooks)
PUBLISHED_PARAMS = {
    "m-a-p/MERT-v1-330M": 315_000_000,
    "google/vit-base-patch16-224": 86_600_000,
    "google/vivit-b-16x2-kinetics400": 88_600_000,
    "facebook/musicgen-small": 587_600_000,
    "facebook/musicgen-medium": 2_006_000_000,
    "facebook/musicgen-large": 3_424_200_000,
    "facebook/musicgen-stereo-small": 604_400_000,
    "facebook/musicgen-stereo-medium": 2_031_100_000,
    "facebook/musicgen-stereo-large": 3_457_700_000,
    "facebook/musicgen-melody": 1_552_800_000,
    "cvssp/audioldm2-music": 1_078_000_000,
}


@dataclass
class Architecture:
    """What the planner needs of a model, counted without loading a weight."""

    llm_dim: int
    llm_ffn: int
    llm_layers: int
    vocab: int
    frozen_llm: int  # LLM base parameters (the frozen part)
    trained: int  # every trained tensor (fp32 in training)
    trainable: int  # the stage's trainable ones
    frozen_other: dict[str, int]  # encoders, decoder: parameters each
    feature_values: int  # encoder feature values per sample (all modalities)
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    parts: dict[str, int]  # bytes per GPU
    gpus: int
    settings: dict[str, object]
    card: int | None = None
    overhead: int = 0

    @property
    def total(self) -> int:
        return sum(self.parts.values()) + self.overhead

    @property
    def fits(self) -> bool | None:
        return None if self.card is None else self.total <= self.card


def parse_card(text: str) -> int:
    """'24GB', '24G', '80GiB', '16' (GiB: what GPU makers call GB) → bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(gib|gb|g)?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--card {text!r}: write the GPU's memory like 24GB or 80GB")
    return int(float(m.group(1)) * GiB)


class _Vocab:
    """A tokenizer's size and the [AUD] ids, for building the LLM on meta when the real
    tokenizer is not on this machine: the tokens are appended after the vocabulary."""

    def __init__(self, size: int, added: list[str]) -> None:
        self.ids = {t: size + i for i, t in enumerate(added)}
        self.size = size + len(added)

    def __len__(self) -> int:
        return self.size

    def convert_tokens_to_ids(self, tokens):
        return [self.ids[t] for t in tokens] if isinstance(tokens, list) else self.ids[tokens]


def _local(ref: str, base: Path | None) -> Path | None:
    path = Path(resolve_component(ref, base))
    return path if path.exists() else None


def _safetensors_params(path: Path) -> int:
    """Parameters in a component directory, from its safetensors headers (no weights)."""
    total = stored_parameters(path)
    if total == 0:
        raise ConfigError(f"{path}: no safetensors weights to count; the planner reads only "
                          "safetensors headers")
    return total


def _component(ref: str, base: Path | None, notes: list[str]) -> int:
    path = _local(ref, base)
    if path is not None:
        return _safetensors_params(path)
    if ref in PUBLISHED_PARAMS:
        notes.append(f"{ref}: not on this machine, counted as published "
                     f"({PUBLISHED_PARAMS[ref] / 1e6:.0f} M parameters)")
        return PUBLISHED_PARAMS[ref]
    raise ConfigError(f"{ref}: not on this machine and not a published component the planner "
                      "knows; download it (or name a local directory) first")


def architecture(cfg: TrainConfig, music: bool) -> Architecture:
    """Counts for `cfg.model` and its stage; `music`: the decoder is loaded (some answer is
    music). Local configs are read; nothing is downloaded and no weight is loaded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from m2ugen.model import M2UGen
    from m2ugen.modules.llm import load_tokenizer, wrap_llm
    from m2ugen.presets import resolve_model

    config, base = resolve_model(cfg.model, model_cls=M2UGen)
    notes: list[str] = []
    llm_path = _local(config.llm, base)
    if llm_path is not None:
        hf = LlamaConfig.from_pretrained(llm_path)
    elif config.llm in PUBLISHED_LLM:
        hf = LlamaConfig(**PUBLISHED_LLM[config.llm])
        notes.append(f"{config.llm}: not on this machine, its published architecture")
    else:
        raise ConfigError(f"{config.llm}: LLM not on this machine and not one the planner "
                          "knows; download it (or name a local directory) first")
    hf.attention_bias = hf.mlp_bias = True  # M2UGen's trained projection biases
    tok_path = _local(config.tokenizer, base)
    tokenizer = (load_tokenizer(str(tok_path), config.audio_tokens) if tok_path is not None
                 else _Vocab(hf.vocab_size, config.audio_tokens))
    with torch.device("meta"):
        llm = wrap_llm(LlamaForCausalLM(hf), tokenizer, config)
        shell = _Shell(config, llm)
    trained = trained_parameters(shell)
    trainable = trained_parameters(
        shell, stage_groups(cfg.stage, cfg.extra_groups, cfg.frozen_groups))
    trained_ids = {id(p) for p in trained.values()}
    frozen_llm = sum(p.numel() for p in llm.parameters() if id(p) not in trained_ids)
    other = {m: _component(getattr(config, key), base, notes)
             for m, key in (("audio encoder", "mert"), ("image encoder", "vit"),
                            ("video encoder", "vivit"))}
    if music:
        other["decoder"] = _component(config.decoder_path, base, notes)
    feats = sum(math.prod(shell.feature_shape(m)) for m in MODALITIES)
    return Architecture(llm_dim=hf.hidden_size, llm_ffn=hf.intermediate_size,
                        llm_layers=hf.num_hidden_layers, vocab=len(tokenizer),
                        frozen_llm=frozen_llm, trained=sum(p.numel() for p in trained.values()),
                        trainable=sum(p.numel() for p in trainable.values()),
                        frozen_other=other, feature_values=feats, notes=notes)


class _Shell(nn.Module):
    """M2UGen's trained parts (adapters, projector, LLM) without encoders or decoder: the
    attribute layout `trained.trained_parameters` reads."""

    def __init__(self, config: M2UGenConfig, llm: nn.Module) -> None:
        super().__init__()
        self.config = config
        kw = {"blocks": config.adapter_blocks, "norm": config.adapter_norm,
              "eps": config.adapter_norm_eps}
        self.adapters = nn.ModuleDict({m: UnderstandingAdapter(*self.feature_shape(m),
                                                               config.llm_dim, **kw)
                                       for m in MODALITIES})
        self.projector = OutputProjector(
            config.llm_dim, config.projector_dim, config.projector_tokens,
            width=config.projector_width, heads=config.projector_heads,
            layers=config.projector_layers, ffn=config.projector_ffn)
        self.llm = llm

    def feature_shape(self, m: str) -> tuple[int, int]:
        c = self.config
        return {"audio": (c.mert_layers, c.mert_dim), "image": (c.vit_tokens, c.vit_dim),
                "video": (c.vivit_tokens, c.vivit_dim)}[m]


def frozen_bytes(cfg: TrainConfig, gpu: bool = True) -> int:
    """Bytes per frozen weight: the autocast dtype's (precision auto: a GPU's half type)."""
    if cfg.precision == "fp32" or (cfg.precision == "auto" and not gpu):
        return 4
    return 2


def estimate(arch: Architecture, cfg: TrainConfig, gpus: int = 1, card: int | None = None,
             gpu: bool = True) -> Plan:
    """Per-GPU bytes for `cfg` on `gpus` ranks (`gpu=False`: the CPU run, no CUDA
    allowance, precision auto = fp32)."""
    s = frozen_bytes(cfg, gpu)
    shard = gpus if cfg.strategy == "fsdp" and gpus > 1 else 1
    offload = cfg.cpu_offload and shard > 1
    b, t, d, i = cfg.batch_size, cfg.max_len, arch.llm_dim, arch.llm_ffn
    tokens = b * t
    if cfg.gradient_checkpointing:  # layer inputs kept, one layer's activations recomputed
        per_token = arch.llm_layers * s * d + 12 * d + s * (9 * d + 4 * i)
    else:
        per_token = arch.llm_layers * (12 * d + s * (9 * d + 4 * i))
    acts = tokens * (per_token + (2 * s + 12) * arch.vocab) + b * arch.feature_values * 4
    opt_bytes = 2 if cfg.optimizer == "adamw8bit" else 8
    parts = {
        "frozen weights": arch.frozen_llm * s // shard + sum(arch.frozen_other.values()) * s,
        "trained tensors": 0 if offload else arch.trained * 4 // shard,
        "gradients": 0 if offload else arch.trainable * 4 // shard * (
            2 if cfg.strategy == "ddp" and gpus > 1 else 1),
        "optimizer state": 0 if offload else arch.trainable * opt_bytes // shard,
        "activations": acts,
    }
    if shard > 1:
        layer = arch.frozen_llm // max(1, arch.llm_layers) * s + arch.trained * 4 // max(
            1, arch.llm_layers)
        parts["fsdp buffers"] = 2 * layer
    return Plan(parts, gpus, _settings(cfg), card, CUDA_OVERHEAD if gpu else 0)


def _settings(cfg: TrainConfig) -> dict[str, object]:
    return {k: getattr(cfg, k) for k in ("batch_size", "grad_accum", "gradient_checkpointing",
                                         "optimizer", "strategy", "cpu_offload", "precision")}


def suggest(arch: Architecture, cfg: TrainConfig, gpus: int, card: int) -> TrainConfig | None:
    """The first setting that fits the card, cheapest first: gradient checkpointing (one
    more forward), FSDP (communication), the 8-bit optimizer (an approximation of Adam),
    FSDP's CPU offload (slow; not with the 8-bit optimizer, which steps on the GPU), each
    alone, then together; failing all, the batch halved (grad_accum doubled: the same
    global batch) with the last of them."""
    ckpt, fsdp = dict(gradient_checkpointing=True), dict(strategy="fsdp")
    eight, offload = dict(optimizer="adamw8bit"), dict(strategy="fsdp", cpu_offload=True)
    combos = [ckpt, eight, {**ckpt, **eight}]
    if gpus > 1:
        combos = [ckpt, fsdp, {**ckpt, **fsdp}, eight, {**ckpt, **eight}, {**fsdp, **eight},
                  {**ckpt, **fsdp, **eight}, {**ckpt, **offload}]
    trial = cfg
    for change in combos:
        trial = dataclasses.replace(cfg, **change)
        if estimate(arch, trial, gpus, card).fits:
            return trial
    while trial.batch_size > 1:
        trial = dataclasses.replace(trial, batch_size=trial.batch_size // 2,
                                    grad_accum=trial.grad_accum * 2)
        if estimate(arch, trial, gpus, card).fits:
            return trial
    return None


def report(cfg: TrainConfig, gpus: int = 1, card: int | None = None) -> tuple[str, bool]:
    """The dry run's text and whether it fits (True when no card is given)."""
    from m2ugen.data.spec import collect, load_spec
    from m2ugen.training.features import needs_decoder

    if Path(cfg.data).is_file():
        music = needs_decoder(collect(load_spec(cfg.data), f"stage{cfg.stage}",
                                      skip_bad=True))
    else:
        music = cfg.stage != 1  # stages 2 and 3 answer with music
    arch = architecture(cfg, music)
    plan = estimate(arch, cfg, gpus, card)
    unit, size = ("GiB", GiB) if sum(plan.parts.values()) >= GiB / 2 else ("MiB", 2 ** 20)
    g = lambda n: f"{n / size:8.2f} {unit}"  # noqa: E731
    lines = [f"stage {cfg.stage}, model {cfg.model}: {arch.trainable / 1e6:.1f} M trainable "
             f"of {arch.trained / 1e6:.1f} M trained tensors, LLM {arch.frozen_llm / 1e6:.1f} M "
             f"frozen; batch {cfg.batch_size} × max_len {cfg.max_len}; {gpus} GPU(s), "
             f"strategy {cfg.strategy}",
             *(f"  note: {n}" for n in arch.notes),
             "estimated memory per GPU:"]
    lines += [f"  {name:<17}{g(v)}" for name, v in plan.parts.items()]
    lines.append(f"  {'CUDA overhead':<17}{g(plan.overhead)}")
    lines.append(f"  {'total':<17}{g(plan.total)}")
    if card is None:
        return "\n".join(lines), True
    if plan.fits:
        lines.append(f"fits a {card / GiB:.0f} GB card ({(card - plan.total) / GiB:.1f} GiB "
                     "spare)")
        return "\n".join(lines), True
    lines.append(f"does not fit a {card / GiB:.0f} GB card (short by "
                 f"{(plan.total - card) / GiB:.1f} GiB)")
    better = suggest(arch, cfg, gpus, card)
    if better is None:
        lines.append(f"no setting fits on {gpus} GPU(s): use more GPUs (--gpus) or a "
                     "larger card")
    else:
        changed = [f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                   for k, v in _settings(better).items() if v != getattr(cfg, k)]
        total = estimate(arch, better, gpus, card).total
        lines.append(f"suggested: {' '.join(changed)} (estimated {total / GiB:.1f} GiB)")
    return "\n".join(lines), False
