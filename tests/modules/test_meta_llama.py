"""Meta-format LLaMA → HF: a tiny two-shard Meta checkpoint (grouped-query attention) must
give the logits of an independent Meta-layout forward (complex rotary) after conversion."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from m2ugen.errors import ConfigError
from m2ugen.modules import meta_llama
from m2ugen.modules.meta_llama import permute_to_meta, resolve_llm_path

HEADS, KV_HEADS, DIM, LAYERS, FFN = 4, 2, 64, 2, 96
# model-parallel split of each Meta weight (dim), None = replicated
SPLIT = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1,
         "tok_embeddings": 1}


def _hf_to_meta(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
             "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
             "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
             "post_attention_layernorm": "ffn_norm"}
    meta = {"tok_embeddings.weight": hf["model.embed_tokens.weight"],
            "norm.weight": hf["model.norm.weight"], "output.weight": hf["lm_head.weight"]}
    for i in range(LAYERS):
        for h, m in names.items():
            w = hf[f"model.layers.{i}.{h}.weight"]
            if m == "attention.wq":
                w = permute_to_meta(w, HEADS)
            elif m == "attention.wk":
                w = permute_to_meta(w, KV_HEADS)
            meta[f"layers.{i}.{m}.weight"] = w
    return meta


def _shard(meta: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for k, v in meta.items():
        dim = SPLIT.get(k.split(".")[-2])
        parts = [v] * n if dim is None else list(v.chunk(n, dim=dim))
        for s, p in zip(shards, parts, strict=True):
            s[k] = p.clone()
    return shards


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory) -> tuple[Path, LlamaForCausalLM, dict[str, torch.Tensor]]:
    """A two-shard Meta-format LLaMA, the HF model it came from, its merged Meta weights."""
    from m2ugen.presets.tiny import tiny_corpus

    root = tmp_path_factory.mktemp("meta") / "llama-tiny"
    root.mkdir()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus(0, 300)), model_prefix=str(root / "tokenizer"),
        vocab_size=400, model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, num_threads=1, minloglevel=2)
    (root / "tokenizer.vocab").unlink()
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=400, hidden_size=DIM, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, rms_norm_eps=1e-5,
        initializer_range=0.1, tie_word_embeddings=False)).eval()
    meta = _hf_to_meta(hf.state_dict())
    for i, shard in enumerate(_shard(meta, 2)):
        torch.save(shard, root / f"consolidated.{i:02d}.pth")
    (root / "params.json").write_text(json.dumps(
        {"dim": DIM, "n_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": KV_HEADS,
         "multiple_of": 32, "norm_eps": 1e-5, "vocab_size": -1}))
    return root, hf, meta


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("M2UGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotary(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Meta's apply_rotary_emb: x (B, T, H, hd); consecutive pairs are complex numbers."""
    t, hd = x.shape[1], x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd)
    cis = torch.polar(torch.ones(t, hd // 2), torch.outer(torch.arange(t).float(), freqs))
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * cis[None, :, None]).flatten(3)


def meta_forward(w: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Meta's Transformer.forward (grouped-query attention by repeating kv heads)."""
    h = w["tok_embeddings.weight"][ids]
    b, t, _ = h.shape
    hd = DIM // HEADS
    mask = torch.full((t, t), -math.inf).triu(1)
    for i in range(LAYERS):
        p = f"layers.{i}."
        x = _rms(h, w[p + "attention_norm.weight"])
        q = (x @ w[p + "attention.wq.weight"].T).view(b, t, HEADS, hd)
        k = (x @ w[p + "attention.wk.weight"].T).view(b, t, KV_HEADS, hd)
        v = (x @ w[p + "attention.wv.weight"].T).view(b, t, KV_HEADS, hd)
        q, k = _rotary(q), _rotary(k)
        k = k.repeat_interleave(HEADS // KV_HEADS, dim=2)
        v = v.repeat_interleave(HEADS // KV_HEADS, dim=2)
        scores = q.transpose(1, 2) @ k.permute(0, 2, 3, 1) / math.sqrt(hd) + mask
        out = (scores.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2).reshape(b, t, DIM)
        h = h + out @ w[p + "attention.wo.weight"].T
        x = _rms(h, w[p + "ffn_norm.weight"])
        ff = F.silu(x @ w[p + "feed_forward.w1.weight"].T) * (x @ w[p + "feed_forward.w3.weight"].T)
        h = h + ff @ w[p + "feed_forward.w2.weight"].T
    return _rms(h, w["norm.weight"]) @ w["output.weight"].T


def test_conversion_matches_meta_forward(meta_dir, cache):
    root, hf, meta = meta_dir
    out = resolve_llm_path(str(root))
    assert Path(out).parent.parent == cache and Path(out, "config.json").is_file()
    model = LlamaForCausalLM.from_pretrained(out).eval()
    assert model.config.vocab_size == 400 and model.config.num_key_value_heads == KV_HEADS
    ids = torch.tensor([[1, 20, 30, 40, 50, 60, 70]])
    with torch.no_grad():
        got = model(ids).logits
        want = meta_forward(meta, ids)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got, hf(ids).logits, rtol=1e-5, atol=1e-6)


def test_tokenizer_is_converted(meta_dir):
    root, _, _ = meta_dir
    tok = AutoTokenizer.from_pretrained(resolve_llm_path(str(root)))
    sp = spm.SentencePieceProcessor(model_file=str(root / "tokenizer.model"))
    text = "A calm jazz song with piano at 90 BPM."
    assert tok(text, add_special_tokens=False).input_ids == sp.encode(text)
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)


def test_converted_once_and_reconverted_when_changed(meta_dir, monkeypatch):
    root, _, _ = meta_dir
    first = resolve_llm_path(str(root))

    def fail(*args, **kwargs):
        raise AssertionError("converted twice")

    with monkeypatch.context() as m:
        m.setattr(meta_llama, "convert_meta_llama", fail)
        assert resolve_llm_path(str(root)) == first
    shard = root / "consolidated.01.pth"
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert resolve_llm_path(str(root)) != first


def test_other_paths_unchanged_and_missing_tokenizer(tmp_path, meta_dir):
    assert resolve_llm_path("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert resolve_llm_path(str(tmp_path)) == str(tmp_path)
    root, _, _ = meta_dir
    bare = tmp_path / "sub" / "bare"
    bare.mkdir(parents=True)
    for f in ("params.json", "consolidated.00.pth"):
        (bare / f).symlink_to(root / f)
    with pytest.raises(ConfigError, match="tokenizer.model"):
        resolve_llm_path(str(bare))
