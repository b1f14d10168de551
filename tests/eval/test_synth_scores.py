"""`m2ugen eval synth`'s retrieval score: cosines over each caption's own positions."""

from __future__ import annotations

import torch

from m2ugen.eval.synth import masked_cosines


def _targets() -> tuple[torch.Tensor, torch.Tensor]:
    """Three captions' conditioning (C, N, W) with lengths 3, 5, 2 and large nonzero values
    at their padding, as a text encoder gives for pad tokens."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 6, 4, generator=g)
    mask = torch.zeros(3, 6, 4)
    for c, n in enumerate((3, 5, 2)):
        mask[c, :n] = 1
        target[c, n:] = 50 + torch.randn(6 - n, 4, generator=g)
    return target, mask


def test_a_prediction_equal_on_the_caption_positions_scores_one():
    target, mask = _targets()
    pred = target * mask + 7.0 * (1 - mask)  # anything at padding
    cos = masked_cosines(pred, target, mask)
    assert torch.allclose(cos.diagonal(), torch.ones(3), atol=1e-6)
    assert (cos.argmax(1) == torch.arange(3)).all()


def test_cosine_is_scale_free_and_signed():
    target, mask = _targets()
    cos = masked_cosines(torch.cat([3 * target, -target]), target, mask)
    assert torch.allclose(cos[:3].diagonal(), torch.ones(3), atol=1e-6)
    assert torch.allclose(cos[3:].diagonal(), -torch.ones(3), atol=1e-6)


def test_each_pair_uses_the_candidates_positions():
    target, mask = _targets()
    pred = target[1:2] * mask[1:2]  # caption 1 (5 positions), zero at its padding
    cos = masked_cosines(pred, target, mask)[0]
    by_hand = [float((pred[0, :n] * target[c, :n]).sum()
                     / (pred[0, :n].norm() * target[c, :n].norm()))
               for c, n in enumerate((3, 5, 2))]
    assert torch.allclose(cos, torch.tensor(by_hand), atol=1e-6)
