"""Weight-only quantization of the LLM (modules/quantize.py, torchao): int8 runs on the
CPU, stores int8 weights, keeps the injection, and still answers; int4 is refused there
with one line (torchao's int4 kernels are CUDA-only)."""

from __future__ import annotations

import pytest
import torch

from m2ugen.chat import ChatSession, GenerationSettings
from m2ugen.errors import ConfigError
from m2ugen.model import M2UGen
from m2ugen.modules.llm import LORA_TARGETS
from m2ugen.modules.quantize import check_quantize, quantize_llm


def test_int8_quantizes_every_projection_and_the_head_and_still_answers(tiny_dir, media_arrays):
    model = M2UGen.from_pretrained(tiny_dir, decoder=False)  # its own copy: quantized in place
    tok = model.tokenizer
    ids = torch.tensor([[tok.bos_token_id, *tok("a calm piano piece").input_ids[1:]]])
    image = media_arrays["image"]
    before = model.forward_logits(ids, image=image)
    settings = GenerationSettings(max_new_tokens=24, temperature=0.0, seed=0)
    fp32_reply = ChatSession(model).send("Describe this picture", image=image, settings=settings)

    n = quantize_llm(model.llm, "int8")

    layers = model.llm.hf_config.num_hidden_layers
    assert n == layers * len(LORA_TARGETS) + 1  # every projection of every layer + LM head
    q_proj = model.llm.layers[0].self_attn.q_proj
    assert q_proj.merged  # LoRA folded in before its base weight was quantized
    weight = q_proj.get_base_layer().weight
    assert weight.qdata.dtype == torch.int8 and weight.qdata.shape == weight.shape
    after = model.forward_logits(ids, image=image)
    assert not torch.equal(after, before)
    cos = torch.nn.functional.cosine_similarity(after.flatten(), before.flatten(), dim=0)
    assert cos > 0.99, cos
    # the injection still reaches the quantized model: the picture changes its logits
    assert not torch.allclose(model.forward_logits(ids), after, atol=1e-3)
    reply = ChatSession(model).send("Describe this picture", image=image, settings=settings)
    assert len(reply.token_ids) == len(fp32_reply.token_ids) == 24
    agree = sum(a == b for a, b in zip(reply.token_ids, fp32_reply.token_ids, strict=True))
    print(f"int8 greedy tokens agreeing with fp32: {agree}/24")


def test_modes_this_machine_cannot_run_are_one_line():
    with pytest.raises(ConfigError, match="int4 runs on CUDA GPUs only.*int8"):
        check_quantize("int4", "cpu", torch.float32)
    with pytest.raises(ConfigError, match="int4 needs bf16"):
        check_quantize("int4", "cuda", torch.float32)
    with pytest.raises(ConfigError, match="use one of int8, int4"):
        check_quantize("int3", "cpu", None)
    check_quantize(None, "cpu", None)
    check_quantize("int8", "cpu", torch.float32)


def test_chat_flag_quantizes_the_loaded_model_or_refuses_in_one_line(tiny_dir, capsys,
                                                                      monkeypatch):
    """`m2ugen chat --quantize int8` answers with an int8 LLM (the weights the reply came
    from are int8); int4 on this CPU is one line before the model loads."""
    import m2ugen.modules.quantize as quantize
    from m2ugen.cli import main

    quantized = []
    real = quantize.quantize_llm

    def spy(llm, mode):
        n = real(llm, mode)
        quantized.append(llm.layers[0].mlp.up_proj.get_base_layer().weight.qdata.dtype)
        return n

    monkeypatch.setattr(quantize, "quantize_llm", spy)
    code = main(["chat", "--model", str(tiny_dir), "--quantize", "int8", "--music", "never",
                 "--max-new-tokens", "6", "--temperature", "0", "--dtype", "fp32", "Hi"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() and quantized == [torch.int8]
    code = main(["chat", "--model", str(tiny_dir / "nowhere"), "--quantize", "int4", "Hi"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "int4 runs on CUDA GPUs only" in err
