"""The trained tensors: which parameters of an assembled model are trained, by name.

Names are ours (peft's wrapper parts stripped by `clean_name`), so `adapter.safetensors`
survives peft upgrades. The trainable set of each training stage is declared once, in
`STAGE_GROUPS`. Everything here works on any module with M2UGen's attribute layout
(`adapters`, `projector`, `llm`) and never imports the model class.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from m2ugen.errors import ConfigError, nonfinite_weights

# Trained-tensor groups, matched against clean parameter names (see `clean_name`).
GROUP_PATTERNS: dict[str, re.Pattern[str]] = {
    "adapters": re.compile(r"^adapters\."),
    "prefix_query": re.compile(r"^llm\.prefix_query\."),
    "gates": re.compile(r"^llm\.gates$"),
    "lora": re.compile(r"\.lora_[AB]\.weight$"),
    # published biases: wq, wo, w1, w2, w3 (wk and wv have none)
    "bias": re.compile(r"\.(q_proj|o_proj|gate_proj|up_proj|down_proj)\.bias$"),
    "norm": re.compile(r"^llm\..*(layernorm|\.norm)\.weight$"),
    "new_tokens": re.compile(r"\.trainable_tokens_delta$"),
    "projector": re.compile(r"^projector\."),
}
_LLM_TUNING = {"lora", "bias", "norm", "new_tokens", "prefix_query"}
# ORIGINAL_M2UGEN.md §4 trainable sets, plus the injection gates in stages 1 and 3 (§5.1).
STAGE_GROUPS: dict[int, frozenset[str]] = {
    1: frozenset(_LLM_TUNING | {"adapters", "gates", "projector"}),
    2: frozenset(_LLM_TUNING | {"projector"}),
    3: frozenset(_LLM_TUNING | {"gates"}),
}
# names written by earlier versions → today's (the projector's last Linear was `.model`)
RENAMED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^projector\.model\.(weight|bias)$"), r"projector.out.\1"),
)


def clean_name(name: str) -> str:
    """Parameter name without peft's wrapper parts, stable across peft versions."""
    return (name.replace("base_model.model.", "", 1).replace(".default", "")
            .replace(".base_layer.", ".").replace(".token_adapter.", "."))


def current_name(name: str) -> str:
    """A trained-tensor name as written by any earlier version → today's name."""
    for pattern, new in RENAMED:
        if pattern.match(name):
            return pattern.sub(new, name)
    return name


def tensor_group(name: str) -> str | None:
    """The trained-tensor group of a clean parameter name, or None for frozen weights."""
    for group, pattern in GROUP_PATTERNS.items():
        if pattern.search(name):
            return group
    return None


def trained_parameters(model: nn.Module,
                       groups: Sequence[str] | None = None) -> dict[str, nn.Parameter]:
    """Clean name → parameter for the trained tensors (all groups, or those given)."""
    out = {}
    for name, p in model.named_parameters():
        if name.startswith("encoders."):
            continue
        clean = clean_name(name)
        group = tensor_group(clean)
        if group is not None and (groups is None or group in groups):
            out[clean] = p
    return out


def stage_groups(stage: int, extra: Sequence[str] = (),
                 frozen: Sequence[str] = ()) -> frozenset[str]:
    """The groups a stage trains: its declared set plus `extra` (TrainConfig.extra_groups),
    less `frozen` (TrainConfig.frozen_groups)."""
    if stage not in STAGE_GROUPS:
        raise ConfigError(f"stage {stage} is unknown; stages are 1, 2, 3")
    unknown = sorted((set(extra) | set(frozen)) - set(GROUP_PATTERNS))
    if unknown:
        raise ConfigError(f"trained-tensor groups {', '.join(unknown)} are unknown; groups "
                          f"are {', '.join(GROUP_PATTERNS)}")
    return (STAGE_GROUPS[stage] | frozenset(extra)) - frozenset(frozen)


def set_stage(model: nn.Module, stage: int, extra: Sequence[str] = (),
              frozen: Sequence[str] = ()) -> int:
    """Make exactly the stage's declared groups (and `extra`, less `frozen`) trainable;
    returns the count."""
    groups = stage_groups(stage, extra, frozen)
    model.llm.unmerge()  # training needs the deltas separate from the base weights
    model.requires_grad_(False)
    params = trained_parameters(model, groups)
    for p in params.values():
        p.requires_grad_(True)
    return sum(p.numel() for p in params.values())


@torch.no_grad()
def reset_trained(model: nn.Module, seed: int = 0) -> None:
    """Standard initial values for every trained tensor, as training from a base model
    starts: zero gates (inputs unseen), zero LoRA B and biases, unit norms, default
    initialisation of adapters, projector and prefix queries."""
    torch.manual_seed(seed)
    for module in (*model.adapters.modules(), *model.projector.modules()):
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    for p in model.projector.tfm.parameters():  # nn.Transformer's own init
        if p.dim() > 1:
            torch.nn.init.xavier_uniform_(p)
    torch.nn.init.normal_(model.projector.query_embs)
    model.llm.prefix_query.reset_parameters()
    for name, p in trained_parameters(model).items():
        group = tensor_group(name)
        if group == "gates" or group == "bias" or name.endswith("lora_B.weight"):
            p.zero_()
        elif name.endswith("lora_A.weight"):
            torch.nn.init.kaiming_uniform_(p, a=5 ** 0.5)  # peft's default for A
        elif group == "norm":
            p.fill_(1.0)


def load_trained(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy trained tensors in; every expected name must be present with its shape.
    Names written by earlier versions (`RENAMED`) are accepted."""
    tensors = {current_name(k): v for k, v in tensors.items()}
    nonfinite_weights(source, iter(tensors.items()),
                      fix="copy the file again, or re-train or re-convert the model")
    params = trained_parameters(model)
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ConfigError(
            f"{source}: trained tensors do not match this model ({len(missing)} missing, "
            f"e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}); "
            "was it saved for another config?")
    with torch.no_grad():
        for name, p in params.items():
            t = tensors[name]
            if t.shape != p.shape:
                raise ConfigError(f"{source}: {name} has shape {tuple(t.shape)}, the model "
                                  f"needs {tuple(p.shape)}; the config does not match")
            p.copy_(t.to(p.dtype))
