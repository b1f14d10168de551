"""Weight-only quantization of the LLM for inference, through torchao.

int8 (per-channel weights, activations in the model's dtype) runs on CPU and GPU; int4
(grouped weights, tinygemm kernels) on CUDA GPUs in bf16 only — torchao 0.18 has no CPU
kernel for it. LoRA and the new-token rows are folded in first: a quantized weight takes
no delta afterwards, so a quantized model is for inference only (load it again to train).
`v_proj`'s LoRA stays beside its quantized base weight, which the injection reads.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from m2ugen.errors import ConfigError

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("int8", "int4")
INT4_GROUP = 128  # weights share one scale per 128 inputs (torchao's default)
TORCHAO_PIN = "torchao==0.18.0"


def _torchao():
    try:
        import torchao.quantization as tq
    except ImportError as e:
        raise ConfigError(f"--quantize needs torchao, which is not installed; "
                          f"pip install {TORCHAO_PIN}") from e
    return tq


def check_quantize(mode: str | None, device: torch.device | str, dtype: torch.dtype | None,
                   flag: str = "--quantize") -> None:
    """ConfigError for a mode this machine cannot run, before anything loads (dtype None:
    not known yet)."""
    if mode is None:
        return
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"{flag} {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")
    _torchao()
    device = torch.device(device)
    if mode == "int4" and device.type != "cuda":
        raise ConfigError(f"{flag} int4 runs on CUDA GPUs only (torchao has no int4 kernel "
                          f"for {device.type}); use {flag} int8 here")
    if mode == "int4" and dtype is not None and dtype != torch.bfloat16:
        raise ConfigError(f"{flag} int4 needs bf16 weights (the model is {dtype}); "
                          "add --dtype bf16")


def quantize_llm(llm, mode: str) -> int:
    """Quantize the LLaMA's linear layers (every projection and the LM head; LoRA's small
    A/B matrices stay as they are) in place. Returns how many layers were quantized."""
    weight = llm.prefix_query.weight
    check_quantize(mode, weight.device, weight.dtype)
    tq = _torchao()
    llm.merge_for_inference()
    base = llm.model.get_base_model()

    def chosen(module: nn.Module, name: str) -> bool:
        if not isinstance(module, nn.Linear) or "lora_" in name:
            return False
        return mode == "int8" or module.in_features % INT4_GROUP == 0

    names = [n for n, m in base.named_modules() if chosen(m, n)]
    config = (tq.Int8WeightOnlyConfig() if mode == "int8" else
              tq.Int4WeightOnlyConfig(group_size=INT4_GROUP,
                                      int4_packing_format="tile_packed_to_4d"))
    with warnings.catch_warnings():  # torchao's notes on its own tensor subclasses
        warnings.simplefilter("ignore", UserWarning)
        tq.quantize_(base, config, filter_fn=chosen)
    # compiling the quantized step: torch notes once that torchao's tensors lack a hash for
    # its compile cache (they compile all the same); not the user's to fix
    warnings.filterwarnings("ignore", message=r".*_stable_hash_for_caching", category=UserWarning)
    log.info("LLM quantized to %s weights (torchao; LoRA and new-token rows folded in "
             "first): %d linear layers", mode, len(names))
    return len(names)
