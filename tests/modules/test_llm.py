"""Injection math, gates, tokenizer: checked against straightforward computations."""

from __future__ import annotations

import math

import pytest
import torch

from m2ugen.conversation import format_prompt
from m2ugen.modules.llm import Injection


def _linear(module, x):
    """y = W x + b + B A x  (LoRA scale 1), from the raw weights."""
    base = module.get_base_layer()
    y = x @ base.weight.T
    if base.bias is not None:
        y = y + base.bias
    a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
    return y + (x @ a.T) @ b.T * module.scaling["default"]


def _rope(x, positions, theta):
    """Rotary embedding by hand (HF's half-split layout): x (B, H, T, d)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = positions[:, None].float() * inv[None]  # (T, d/2)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rotated * sin


def _attention_by_hand(attn, x, prompt, gate, theta):
    """Causal self-attention plus the published gated prompt term, written out."""
    b, t, _ = x.shape
    hd = attn.head_dim
    q = _linear(attn.q_proj, x).view(b, t, -1, hd).transpose(1, 2)
    k = _linear(attn.k_proj, x).view(b, t, -1, hd).transpose(1, 2)
    v = _linear(attn.v_proj, x).view(b, t, -1, hd).transpose(1, 2)
    pos = torch.arange(t)
    q, k = _rope(q, pos, theta), _rope(k, pos, theta)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), -math.inf)
    out = torch.softmax(scores, -1) @ v  # (B, H, T, hd)
    pv = (prompt @ attn.v_proj.get_base_layer().weight.T).view(b, -1, 1, hd)  # no LoRA, no bias
    out = out + torch.tanh(gate)[None, :, None, None] * pv
    return _linear(attn.o_proj, out.transpose(1, 2).reshape(b, t, -1))


def test_injection_equals_attention_by_hand(tiny_model, media_arrays):
    m = tiny_model
    llm = m.llm
    ids = torch.tensor([[1, 50, 60, 70, 80, 90, 100]])
    n_inj = m.config.injected_layers
    first = len(llm.layers) - n_inj
    with torch.no_grad():
        prompts = m.media_prompts(1, audio=media_arrays["audio"], image=media_arrays["image"])
    seen = {}

    def grab(j):
        def pre(module, args, kwargs):
            seen.setdefault(j, {})["x"] = kwargs["hidden_states"]

        def post(module, args, output):
            seen[j]["out"] = output[0]
        return pre, post

    handles = []
    for j in range(n_inj):
        pre, post = grab(j)
        attn = llm.layers[first + j].self_attn
        handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(attn.register_forward_hook(post))
    try:
        with torch.no_grad():
            llm(ids, injection=Injection(prompts), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    theta = llm.hf_config.rope_parameters["rope_theta"]
    for j in range(n_inj):
        attn = llm.layers[first + j].self_attn
        with torch.no_grad():
            want = _attention_by_hand(attn, seen[j]["x"], prompts[j], llm.gates[j], theta)
        torch.testing.assert_close(seen[j]["out"], want, atol=1e-5, rtol=1e-5)
        # and the injected term is really there (not a no-op that passes trivially)
        assert (llm.injected_term(j, prompts[j]).abs().max() > 1e-3)


@pytest.mark.parametrize("modality", ["audio", "image", "video"])
def test_each_modality_changes_logits(tiny_model, media_arrays, modality):
    ids = torch.tensor([[1, 50, 60, 70]])
    base = tiny_model.forward_logits(ids)
    with_media = tiny_model.forward_logits(ids, **{modality: media_arrays[modality]})
    assert (with_media - base).abs().max() > 1e-3


def test_zero_gates_ignore_every_modality(tiny_model, media_arrays):
    ids = torch.tensor([[1, 50, 60, 70]])
    gates = tiny_model.llm.gates
    saved = gates.detach().clone()
    try:
        with torch.no_grad():
            gates.zero_()
        base = tiny_model.forward_logits(ids)
        for modality, value in media_arrays.items():
            torch.testing.assert_close(tiny_model.forward_logits(ids, **{modality: value}), base,
                                       atol=0, rtol=0)
    finally:
        with torch.no_grad():
            gates.copy_(saved)


def test_mixed_batch_matches_single_samples(tiny_model, media_arrays):
    """A batch where only sample 0 has audio equals running each sample alone."""
    ids = torch.tensor([[1, 50, 60, 70], [1, 80, 90, 100]])
    both = tiny_model.forward_logits(ids, audio=[media_arrays["audio"], None])
    first = tiny_model.forward_logits(ids[:1], audio=media_arrays["audio"])
    second = tiny_model.forward_logits(ids[1:])
    torch.testing.assert_close(both[0], first[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1], second[0], atol=1e-5, rtol=1e-5)


def test_tokenizer_round_trip_with_audio_tokens(tiny_model):
    tok = tiny_model.tokenizer
    names = tiny_model.config.audio_tokens
    assert names == [f"[AUD{i}]" for i in range(8)]
    ids = tok.convert_tokens_to_ids(names)
    base_vocab = tiny_model.llm.hf_config.vocab_size - 8
    assert ids == list(range(base_vocab, base_vocab + 8))
    text = "A calm piano piece. " + "".join(names)
    enc = tok(text, add_special_tokens=False).input_ids
    assert enc[-8:] == ids  # each token is one id, never split
    assert tok.decode(enc) .replace(" [AUD0]", "[AUD0]") == text.replace(" [AUD0]", "[AUD0]")
    assert tok.decode(enc, skip_special_tokens=True).strip() == "A calm piano piece."
    emb = tiny_model.llm.model.get_input_embeddings().weight
    assert emb.shape[0] >= ids[-1] + 1


def test_prompt_template_first_turn_is_the_published_one(tiny_model):
    template = tiny_model.config.prompt_template
    assert format_prompt(template, [], "Describe this music.") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nDescribe this music.\n\n### Response:")


def test_merging_for_inference_keeps_outputs(tiny_model, media_arrays):
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    media = {"audio": media_arrays["audio"], "image": media_arrays["image"]}
    before = tiny_model.forward_logits(ids, **media)
    llm = tiny_model.llm
    try:
        llm.merge_for_inference()
        assert llm.layers[0].self_attn.q_proj.merged and not llm.layers[0].self_attn.v_proj.merged
        torch.testing.assert_close(tiny_model.forward_logits(ids, **media), before,
                                   atol=1e-4, rtol=1e-4)
    finally:
        llm.unmerge()
    assert not llm.layers[0].self_attn.q_proj.merged
    torch.testing.assert_close(tiny_model.forward_logits(ids, **media), before)
