"""The trainable blocks between frozen parts: shapes, and the math computed by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from m2ugen.modules.adapters import OutputProjector, SwiGLUBlock, UnderstandingAdapter


def _by_hand_block(block: SwiGLUBlock, x: torch.Tensor) -> torch.Tensor:
    n = block.norm
    if isinstance(n, torch.nn.LayerNorm):
        h = F.layer_norm(x, x.shape[-1:], n.weight, n.bias, n.eps)
    else:  # RMSNorm: x / sqrt(mean(x²) + eps) · w
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + n.variance_epsilon) * n.weight
    def lin(layer, t):
        return t @ layer.weight.T + (layer.bias if layer.bias is not None else 0)

    return x + lin(block.f2, F.silu(lin(block.f1, h)) * lin(block.f3, h))


def test_understanding_adapter_shape_and_math_by_hand():
    torch.manual_seed(0)
    for norm in ("rmsnorm", "layernorm"):
        adapter = UnderstandingAdapter(tokens=5, width=7, dim=6, blocks=2, norm=norm).eval()
        with torch.no_grad():
            for p in adapter.parameters():  # non-trivial norms and biases
                p.add_(0.3 * torch.randn_like(p))
        feats = torch.randn(3, 5, 7)
        got = adapter(feats)
        assert got.shape == (3, 1, 6)
        # Conv1d(k=1) over tokens = weighted sum of the token rows + bias
        w = adapter.agg.weight[0, :, 0]  # (tokens,)
        x = (feats * w[None, :, None]).sum(1, keepdim=True) + adapter.agg.bias
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        x = x @ adapter.proj.weight.T + adapter.proj.bias
        for block in adapter.blocks:
            x = _by_hand_block(block, x)
        torch.testing.assert_close(got, x, atol=1e-5, rtol=1e-5)


def test_adapter_ignores_the_scale_of_its_input():
    """The L2 normalisation after aggregation: features ×10 give the same vector."""
    torch.manual_seed(1)
    adapter = UnderstandingAdapter(tokens=4, width=8, dim=8, blocks=1)
    with torch.no_grad():
        adapter.agg.bias.zero_()
    feats = torch.randn(2, 4, 8)
    torch.testing.assert_close(adapter(feats), adapter(10 * feats), atol=1e-5, rtol=1e-5)


def test_output_projector_shape_and_math_by_hand():
    torch.manual_seed(2)
    proj = OutputProjector(in_dim=6, out_dim=5, num_output_tokens=3, width=8, heads=2,
                           layers=1, ffn=16).eval()
    hidden, embeds = torch.randn(2, 8, 6), torch.randn(2, 8, 6)
    got = proj(hidden, embeds)
    assert got.shape == (2, 3, 5)
    x = (hidden + embeds) @ proj.fc.weight.T + proj.fc.bias  # the sum, then fc
    memory = proj.tfm.encoder(x)
    queries = proj.query_embs.expand(2, -1, -1)
    want = proj.tfm.decoder(queries, memory) @ proj.out.weight.T + proj.out.bias
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the queries are learned: the output depends on them, and on every [AUD] state
    with torch.no_grad():
        other = hidden.clone()
        other[:, 7] += 1.0
    assert not torch.allclose(proj(other, embeds), got)
