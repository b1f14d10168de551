"""Trainable blocks between frozen parts: understanding adapters and the output projector.

Math from ORIGINAL_M2UGEN.md §3 (adapters) and §4 (projector).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm


class SwiGLUBlock(nn.Module):
    """x + f2(silu(f1(n(x))) * f3(n(x))), all D→D."""

    def __init__(self, dim: int, norm: str, eps: float) -> None:
        super().__init__()
        legacy = norm == "layernorm"  # the published "legacy" variant: LayerNorm + biases
        self.norm = nn.LayerNorm(dim, eps=eps) if legacy else LlamaRMSNorm(dim, eps=eps)
        self.f1 = nn.Linear(dim, dim, bias=legacy)
        self.f2 = nn.Linear(dim, dim, bias=legacy)
        self.f3 = nn.Linear(dim, dim, bias=legacy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.f2(F.silu(self.f1(h)) * self.f3(h))


class UnderstandingAdapter(nn.Module):
    """Raw encoder features (B, tokens, width) → one LLM-space vector (B, 1, D).

    Conv1d over the token axis (kernel 1) aggregates tokens, the result is L2-normalised,
    projected to D and refined by residual SwiGLU blocks.
    """

    def __init__(self, tokens: int, width: int, dim: int, blocks: int = 3,
                 norm: str = "rmsnorm", eps: float = 1e-6) -> None:
        super().__init__()
        self.agg = nn.Conv1d(tokens, 1, kernel_size=1)
        self.proj = nn.Linear(width, dim)
        self.blocks = nn.ModuleList(SwiGLUBlock(dim, norm, eps) for _ in range(blocks))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.agg(feats)  # (B, 1, width)
        x = F.normalize(x, dim=-1)
        x = self.proj(x)  # (B, 1, D)
        for block in self.blocks:
            x = block(x)
        return x


class OutputProjector(nn.Module):
    """Hidden states at the [AUD] positions → decoder conditioning (B, N, out_dim).

    `fc(hidden + token embeddings)` → nn.Transformer(512, 4 heads, 4+4 layers, post-norm,
    no dropout) with `query_embs` as the decoder input → `out`: Linear(512 → out_dim).
    (Model directories of our first version call `out` `model`: `trained.RENAMED`.)
    """

    def __init__(self, in_dim: int, out_dim: int, num_output_tokens: int,
                 width: int = 512, heads: int = 4, layers: int = 4, ffn: int = 2048) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, width)
        self.tfm = nn.Transformer(d_model=width, nhead=heads, num_encoder_layers=layers,
                                  num_decoder_layers=layers, dim_feedforward=ffn, dropout=0.0,
                                  batch_first=True, norm_first=False)
        self.query_embs = nn.Parameter(torch.randn(1, num_output_tokens, width))
        self.out = nn.Linear(width, out_dim)

    def forward(self, hidden: torch.Tensor, token_embeds: torch.Tensor) -> torch.Tensor:
        """hidden, token_embeds: (B, 8, in_dim) → (B, N, out_dim)."""
        x = self.fc(hidden + token_embeds)  # (B, 8, width)
        queries = self.query_embs.expand(x.shape[0], -1, -1).to(x.dtype)
        return self.out(self.tfm(src=x, tgt=queries))
