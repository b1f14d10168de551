"""benchmarks/gpu_suite.py: its full-size configs are the published sizes, and its
builder (components from configs, straight on the device) makes a working assistant."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def suite():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_suite.py"
    spec = importlib.util.spec_from_file_location("gpu_suite_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_full_configs_have_the_published_sizes(suite):
    """Built on `meta` (no memory): LLaMA-2-7B 6.74 B, ViT-B/16 86 M, ViViT-B 89 M,
    MERT-v1-330M, MusicGen small (~0.59 B with T5 and EnCodec) and medium (~2.0 B)."""
    from transformers import (
        HubertModel,
        LlamaForCausalLM,
        MusicgenForConditionalGeneration,
        ViTModel,
        VivitModel,
    )

    cfgs = suite.full_configs()
    with torch.device("meta"):
        sizes = {"llm": _millions(LlamaForCausalLM(cfgs["llm"])),
                 "mert": _millions(HubertModel(cfgs["mert"])),
                 "vit": _millions(ViTModel(cfgs["vit"], add_pooling_layer=False)),
                 "vivit": _millions(VivitModel(cfgs["vivit"], add_pooling_layer=False)),
                 "musicgen-small": _millions(MusicgenForConditionalGeneration(
                     cfgs["musicgen-small"])),
                 "musicgen-medium": _millions(MusicgenForConditionalGeneration(
                     cfgs["musicgen-medium"]))}
    assert sizes["llm"] == pytest.approx(6738, rel=0.002), sizes
    assert sizes["vit"] == pytest.approx(86, rel=0.01), sizes
    assert sizes["vivit"] == pytest.approx(89, rel=0.01), sizes
    assert 300 < sizes["mert"] < 340, sizes
    assert 550 < sizes["musicgen-small"] < 620, sizes
    assert 1900 < sizes["musicgen-medium"] < 2100, sizes


def test_the_small_build_is_a_working_assistant(suite, tiny_dir):
    """--small: the tiny preset's configs through the same builder; it decodes with each
    cache, the static cache giving the dynamic one's greedy tokens, and answers media."""
    from m2ugen.conversation import build_prompt_ids

    cpu = torch.device("cpu")
    model = suite.build_assistant(suite.small_configs(tiny_dir), tiny_dir, True, cpu,
                                  torch.float32)
    assert model.llm.hf_config.hidden_size == model.config.llm_dim
    assert float(model.llm.gates.abs().min()) > 0  # inputs reach the LLM
    ids, _ = build_prompt_ids(model.tokenizer, model.config.prompt_template, [],
                              "Describe this", 512)
    prompts = model.media_prompts(1)
    runs = suite.decode(model, ids, prompts, 6, 2, dynamic={}, static={"cache": "static"},
                        none={"use_cache": False})
    assert len(runs["dynamic"][0]) == 6 and runs["dynamic"][1] > 0
    assert runs["static"][0] == runs["none"][0] == runs["dynamic"][0]
    media = suite.media_inputs(model, seconds=1.0)
    assert set(media) == {"none", "music (10 s)", "image", "video"}
    assert suite.first_token(model, ids, media["image"]) > 0
    assert model.decoder.cond_shape == (model.config.projector_tokens,
                                        model.config.projector_dim)


def test_dtype_choice(suite):
    """auto measures in bf16 on a GPU and fp32 on the CPU; fp16 is there for GPUs without
    bf16 (V100), bf16 for a full-size build in a CPU's RAM."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert suite.pick_dtype("auto", cuda) == torch.bfloat16
    assert suite.pick_dtype("auto", cpu) == torch.float32
    assert suite.pick_dtype("fp16", cuda) == torch.float16
    assert suite.pick_dtype("bf16", cpu) == torch.bfloat16
