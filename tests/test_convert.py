"""convert-original: a random published-layout checkpoint built from the tiny preset's base
components is converted, and our model must match an independent implementation of the
published math (ORIGINAL_M2UGEN.md §3, §4) written out here with Meta-layout weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from m2ugen.cli import build_parser
from m2ugen.convert import convert
from m2ugen.errors import ConfigError
from m2ugen.modules.meta_llama import permute_to_meta

EXTRA_EMBED_ROWS = [5, 17]  # base rows the fake training moved
EXTRA_OUTPUT_ROWS = [33]


def _rand(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=g)


def published_state(tiny_dir: Path, seed: int = 0, legacy: bool = False,
                    zero_gates: bool = False) -> dict[str, torch.Tensor]:
    """The whole-model state dict of the published release, tiny: frozen LLaMA weights in
    Meta layout (from the tiny preset's LLM) plus random, non-zero trained tensors."""
    g = torch.Generator().manual_seed(seed)
    cfg = json.loads((tiny_dir / "llm" / "config.json").read_text())
    base = load_file(str(tiny_dir / "llm" / "model.safetensors"))
    m2u = json.loads((tiny_dir / "m2ugen.json").read_text())
    d, heads, n_layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    r, q = m2u["lora_rank"], m2u["query_layers"]
    sd: dict[str, torch.Tensor] = {}
    emb = torch.cat([base["model.embed_tokens.weight"], _rand(g, 8, d, scale=0.05)])
    emb[EXTRA_EMBED_ROWS] += 0.1
    out = torch.cat([base["lm_head.weight"], _rand(g, 8, d, scale=0.05)])
    out[EXTRA_OUTPUT_ROWS] += 0.1
    sd["llama.tok_embeddings.weight"], sd["llama.output.weight"] = emb, out
    sd["llama.norm.weight"] = 1 + _rand(g, d, scale=0.1)
    hf = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
          "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
          "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
          "feed_forward.w3": "mlp.up_proj"}
    for i in range(n_layers):
        pre = f"llama.layers.{i}."
        for meta, name in hf.items():
            w = base[f"model.layers.{i}.{name}.weight"]
            if meta in ("attention.wq", "attention.wk"):
                w = permute_to_meta(w, heads)
            sd[f"{pre}{meta}.weight"] = w
            out_f, in_f = w.shape
            part, short = meta.rsplit(".", 1)
            sd[f"{pre}{part}.lora_{short}_l1.weight"] = _rand(g, r, in_f, scale=in_f ** -0.5)
            sd[f"{pre}{part}.lora_{short}_l2.weight"] = _rand(g, out_f, r, scale=0.5 * r ** -0.5)
            if meta not in ("attention.wk", "attention.wv"):
                sd[f"{pre}{meta}.bias"] = _rand(g, out_f, scale=0.1)
        sd[f"{pre}attention_norm.weight"] = 1 + _rand(g, d, scale=0.1)
        sd[f"{pre}ffn_norm.weight"] = 1 + _rand(g, d, scale=0.1)
        gate = _rand(g, 1, heads, 1, 1)
        sd[f"{pre}attention.gate"] = torch.zeros_like(gate) if zero_gates else gate.sign() + gate
    sd["prefix_query.weight"] = _rand(g, 3 * q, d)
    for pfx, tokens, width in (("mu_mert", m2u["mert_layers"], m2u["mert_dim"]),
                               ("iu_vit", m2u["vit_tokens"], m2u["vit_dim"]),
                               ("iu_vivit", m2u["vivit_tokens"], m2u["vivit_dim"])):
        sd[f"{pfx}_agg.weight"] = _rand(g, 1, tokens, 1, scale=tokens ** -0.5)
        sd[f"{pfx}_agg.bias"] = _rand(g, 1, scale=0.1)
        sd[f"{pfx}_proj.weight"] = _rand(g, d, width, scale=8 * width ** -0.5)
        sd[f"{pfx}_proj.bias"] = _rand(g, d, scale=0.1)
        for k in (1, 2, 3):
            sd[f"{pfx}_norm_{k}.weight"] = 1 + _rand(g, d, scale=0.1)
            for f in ("f1", "f2", "f3"):
                sd[f"{pfx}_{f}_{k}.weight"] = _rand(g, d, d, scale=d ** -0.5)
            if legacy:
                for part in ("norm", "f1", "f2", "f3"):
                    sd[f"{pfx}_{part}_{k}.bias"] = _rand(g, d, scale=0.1)
    proj = ProjectionLayer(d, m2u["projector_dim"], m2u["projector_tokens"],
                           m2u["projector_width"], m2u["projector_layers"], m2u["projector_ffn"])
    for name, p in proj.state_dict().items():
        sd[f"output_projector.{name}"] = _rand(g, *p.shape, scale=p.shape[-1] ** -0.5)
    # frozen parts of the whole-model pickle (ignored by the converter)
    sd["mert_model.feature_projection.projection.weight"] = torch.zeros(2, 2)
    sd["vit_model.embeddings.cls_token"] = torch.zeros(1, 1, 2)
    sd["vivit_model.embeddings.cls_token"] = torch.zeros(1, 1, 2)
    sd["generation_model.text_encoder.shared.weight"] = torch.zeros(2, 2)
    return sd


class ProjectionLayer(nn.Module):
    """The published output projector, as published (§4): fc → nn.Transformer → model."""

    def __init__(self, in_dim: int, out_dim: int, n_out: int, width: int, layers: int,
                 ffn: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, width)
        self.tfm = nn.Transformer(batch_first=True, norm_first=False, d_model=width,
                                  num_encoder_layers=layers, num_decoder_layers=layers,
                                  dim_feedforward=ffn, dropout=0.0, nhead=4)
        self.model = nn.Linear(width, out_dim)
        self.query_embs = nn.Parameter(torch.randn(1, n_out, width))

    def forward(self, hidden: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.fc(hidden + emb)
        return self.model(self.tfm(x, self.query_embs.repeat(x.shape[0], 1, 1)))


# ---- the published forward, written out (Meta layout, complex rotary) -----------------
def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _lin(sd: dict, x: torch.Tensor, pre: str, lora: str | None = None) -> torch.Tensor:
    y = x @ sd[pre + ".weight"].T
    if pre + ".bias" in sd:
        y = y + sd[pre + ".bias"]
    if lora is not None:  # published LoRA: l2(l1(x)), scale 1
        y = y + (x @ sd[lora + "_l1.weight"].T) @ sd[lora + "_l2.weight"].T
    return y


def _rotary(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Meta's apply_rotary_emb: x (B, T, H, hd), consecutive pairs as complex numbers."""
    t, hd = x.shape[1], x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd)
    cis = torch.polar(torch.ones(t, hd // 2), torch.outer(torch.arange(t).float(), freqs))
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * cis[None, :, None]).flatten(3)


def _adapter(sd: dict, pfx: str, feats: torch.Tensor, legacy: bool) -> torch.Tensor:
    """(B, tokens, width) → (B, D), ORIGINAL_M2UGEN.md §3."""
    x = torch.einsum("btw,t->bw", feats, sd[f"{pfx}_agg.weight"][0, :, 0]) + sd[f"{pfx}_agg.bias"]
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x = _lin(sd, x, f"{pfx}_proj")
    for k in (1, 2, 3):
        w = sd[f"{pfx}_norm_{k}.weight"]
        n = (F.layer_norm(x, w.shape, w, sd[f"{pfx}_norm_{k}.bias"], 1e-5) if legacy
             else _rms(x, w, 1e-6))
        x = x + _lin(sd, F.silu(_lin(sd, n, f"{pfx}_f1_{k}")) * _lin(sd, n, f"{pfx}_f3_{k}"),
                     f"{pfx}_f2_{k}")
    return x


def published_prompts(sd: dict, feats: dict, q: int, legacy: bool = False) -> torch.Tensor:
    """(3Q, B, D): prefix_query[j] (+ the modality vector of layer j's group when present)."""
    pq = sd["prefix_query.weight"]
    b = next(iter(feats.values())).shape[0] if feats else 1
    out = pq[:, None, :].repeat(1, b, 1)
    for k, (m, pfx) in enumerate((("audio", "mu_mert"), ("image", "iu_vit"),
                                  ("video", "iu_vivit"))):
        if m in feats:
            out[k * q:(k + 1) * q] += _adapter(sd, pfx, feats[m], legacy)[None]
    return out


def published_forward(sd: dict, ids: torch.Tensor, prompts: torch.Tensor, heads: int,
                      eps: float, theta: float) -> tuple[torch.Tensor, torch.Tensor, list]:
    """→ logits (B, T, V), last hidden before the final norm (B, T, D), injected terms."""
    h = sd["llama.tok_embeddings.weight"][ids]
    b, t, d = h.shape
    hd = d // heads
    n_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("llama.layers."))
    first = n_layers - prompts.shape[0]
    mask = torch.full((t, t), -math.inf).triu(1)
    terms = []
    for i in range(n_layers):
        a = f"llama.layers.{i}.attention"
        x = _rms(h, sd[f"llama.layers.{i}.attention_norm.weight"], eps)
        xq, xk, xv = (_lin(sd, x, f"{a}.{w}", f"{a}.lora_{w}").view(b, t, heads, hd)
                      for w in ("wq", "wk", "wv"))
        xq, xk = _rotary(xq, theta), _rotary(xk, theta)
        scores = xq.transpose(1, 2) @ xk.permute(0, 2, 3, 1) / math.sqrt(hd) + mask
        out = scores.softmax(-1) @ xv.transpose(1, 2)  # (B, H, T, hd)
        if i >= first:
            pv = (prompts[i - first] @ sd[f"{a}.wv.weight"].T).view(b, heads, 1, hd)
            gated = sd[f"{a}.gate"].tanh() * pv  # (B, H, 1, hd)
            out = out + gated
            flat = gated.reshape(b, d)
            terms.append(flat @ sd[f"{a}.wo.weight"].T
                         + (flat @ sd[f"{a}.lora_wo_l1.weight"].T) @ sd[f"{a}.lora_wo_l2.weight"].T)
        h = h + _lin(sd, out.transpose(1, 2).reshape(b, t, d), f"{a}.wo", f"{a}.lora_wo")
        f = f"llama.layers.{i}.feed_forward"
        x = _rms(h, sd[f"llama.layers.{i}.ffn_norm.weight"], eps)
        gate_up = F.silu(_lin(sd, x, f"{f}.w1", f"{f}.lora_w1")) * _lin(sd, x, f"{f}.w3",
                                                                         f"{f}.lora_w3")
        h = h + _lin(sd, gate_up, f"{f}.w2", f"{f}.lora_w2")
    logits = _rms(h, sd["llama.norm.weight"], eps) @ sd["llama.output.weight"].T
    return logits, h, terms


def assert_rel(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-4) -> None:
    rel = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    assert rel < tol, f"relative error {rel:.2e}"


# ---- fixtures --------------------------------------------------------------------------
def _component_flags(tiny_dir: Path) -> list[str]:
    return ["--llm", str(tiny_dir / "llm"), "--tokenizer", str(tiny_dir / "tokenizer"),
            "--mert", str(tiny_dir / "mert"), "--vit", str(tiny_dir / "vit"),
            "--vivit", str(tiny_dir / "vivit"), "--decoder-path", str(tiny_dir / "musicgen")]


def _components(tiny_dir: Path) -> dict[str, str]:
    f = _component_flags(tiny_dir)
    return {f[i].removeprefix("--").replace("-", "_"): f[i + 1] for i in range(0, len(f), 2)}


def _run_cli(argv: list[str]) -> int:
    """`m2ugen ARGV` through the CLI's parser, its errors raised rather than printed."""
    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def converted(tiny_dir, tmp_path_factory):
    """(published state dict, converted model, CLI summary text)."""
    import contextlib
    import io

    from m2ugen.model import M2UGen

    tmp = tmp_path_factory.mktemp("convert")
    sd = published_state(tiny_dir)
    ckpt = tmp / "checkpoint.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, ckpt)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = _run_cli(["convert-original", str(ckpt), "--out", str(tmp / "m"),
                       *_component_flags(tiny_dir)])
    assert rc == 0
    return sd, M2UGen.from_pretrained(tmp / "m"), out.getvalue()


@pytest.fixture(scope="module")
def media(converted):
    model = converted[1]
    rng = np.random.default_rng(0)
    sr = model.encoders["audio"].sample_rate
    frames = model.encoders["video"].num_frames
    return {"audio": (0.5 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)).astype(np.float32),
            "image": Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)),
            "video": rng.integers(0, 256, (frames, 40, 50, 3), dtype=np.uint8)}


# ---- tests -----------------------------------------------------------------------------
@pytest.mark.parametrize("present", [(), ("audio",), ("image",), ("video",),
                                     ("audio", "image", "video")])
def test_logits_and_injection_equal_published_math(converted, media, present):
    sd, model, _ = converted
    hf = model.llm.hf_config
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    given = {m: media[m] for m in present}
    feats = model.encode(1, **given)
    raw = {m: f for m, (f, _) in feats.items()}
    want_prompts = published_prompts(sd, raw, model.config.query_layers)
    with torch.no_grad():
        prompts = model.layer_prompts(feats, 1)
    assert_rel(prompts, want_prompts)
    want, _, terms = published_forward(sd, ids, want_prompts, hf.num_attention_heads,
                                       hf.rms_norm_eps, hf.rope_parameters["rope_theta"])
    assert_rel(model.forward_logits(ids, **given), want)
    with torch.no_grad():
        for j, term in enumerate(terms):
            assert_rel(model.llm.injected_term(j, prompts[j]), term)
            assert term.abs().max() > 1e-3  # the gates are live: the term is not a no-op


def test_projector_equals_published(converted, media):
    sd, model, _ = converted
    hf = model.llm.hf_config
    aud = model.llm.audio_token_ids
    ids = [1, 50, 60, 70, *aud]
    feats = model.encode(1, audio=media["audio"])
    with torch.no_grad():
        prompts = model.layer_prompts(feats, 1)
        hidden = model.audio_token_hidden(ids, prompts)  # (8, D)
        got = model.project(hidden[None])
    _, h, _ = published_forward(sd, torch.tensor([ids]), prompts, hf.num_attention_heads,
                                hf.rms_norm_eps, hf.rope_parameters["rope_theta"])
    want_hidden = h[0, -9:-1]
    assert_rel(hidden, want_hidden)
    c = model.config
    proj = ProjectionLayer(c.llm_dim, c.projector_dim, c.projector_tokens, c.projector_width,
                           c.projector_layers, c.projector_ffn).eval()
    proj.load_state_dict({k.removeprefix("output_projector."): v for k, v in sd.items()
                          if k.startswith("output_projector.")})
    with torch.no_grad():
        want = proj(want_hidden[None], sd["llama.tok_embeddings.weight"][aud][None])
    assert got.shape == (1, c.projector_tokens, c.projector_dim)
    assert_rel(got, want)


def test_config_and_summary(converted, tiny_dir):
    sd, model, text = converted
    c = model.config
    tiny = json.loads((tiny_dir / "m2ugen.json").read_text())
    for key in ("llm_dim", "query_layers", "lora_rank", "mert_layers", "mert_dim", "vit_tokens",
                "vit_dim", "vivit_tokens", "vivit_dim", "projector_tokens", "projector_dim",
                "projector_width", "projector_layers", "projector_ffn", "video_frames"):
        assert getattr(c, key) == tiny[key], key
    assert c.decoder == "musicgen" and c.adapter_norm == "rmsnorm" and c.lora_alpha == c.lora_rank
    assert c.extra_token_rows == sorted(EXTRA_EMBED_ROWS + EXTRA_OUTPUT_ROWS)
    emb = model.llm.embed_tokens(torch.tensor(EXTRA_EMBED_ROWS))
    torch.testing.assert_close(emb, sd["llama.tok_embeddings.weight"][EXTRA_EMBED_ROWS])
    assert "ignored" in text and "frozen music encoder" in text and "frozen LLM weights" in text
    assert "lora" in text and "projector" in text and "3 base-vocabulary" in text
    assert "WARNING" not in text  # no unknown keys, live gates


def test_zero_gates_and_unknown_keys_are_reported(tiny_dir, tmp_path):
    sd = published_state(tiny_dir, seed=1, zero_gates=True)
    sd["llama.layers.0.attention.wk.bias"] = torch.zeros(4)
    torch.save(sd, tmp_path / "c.pth")  # a bare state dict is accepted too
    report = convert(tmp_path / "c.pth", tmp_path / "m", **_components(tiny_dir))
    text = report.format()
    assert report.all_gates_zero and "IGNORES audio, image and video" in text
    assert report.unknown == ["llama.layers.0.attention.wk.bias"]
    assert "1 unknown tensors were NOT converted: llama.layers.0.attention.wk.bias" in text


def test_legacy_layernorm_adapters(tiny_dir, tmp_path, media):
    from m2ugen.model import M2UGen

    sd = published_state(tiny_dir, seed=2, legacy=True)
    torch.save({"model": sd}, tmp_path / "c.pth")
    convert(tmp_path / "c.pth", tmp_path / "m", **_components(tiny_dir))
    model = M2UGen.from_pretrained(tmp_path / "m")
    assert model.config.adapter_norm == "layernorm" and model.config.adapter_norm_eps == 1e-5
    feats = model.encode(1, audio=media["audio"], image=media["image"], video=media["video"])
    with torch.no_grad():
        got = model.layer_prompts(feats, 1)
    want = published_prompts(sd, {m: f for m, (f, _) in feats.items()},
                             model.config.query_layers, legacy=True)
    assert_rel(got, want)


def test_component_mismatch_is_a_clear_error(tiny_dir, tmp_path):
    from transformers import ViTConfig

    wide = tmp_path / "vit-wide"
    ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=1,
              num_attention_heads=2, intermediate_size=64).save_pretrained(wide)
    torch.save({"model": published_state(tiny_dir, seed=3)}, tmp_path / "c.pth")
    flags = _components(tiny_dir) | {"vit": str(wide)}
    with pytest.raises(ConfigError, match=r"checkpoint adapters expect ViT features 32 wide but "
                                          r".*vit-wide gives 48 wide"):
        convert(tmp_path / "c.pth", tmp_path / "m", **flags)
    with pytest.raises(ConfigError, match="--decoder audioldm2"):
        convert(tmp_path / "c.pth", tmp_path / "m", decoder="audioldm2", **_components(tiny_dir))
    assert not (tmp_path / "m").exists()  # nothing half-written
