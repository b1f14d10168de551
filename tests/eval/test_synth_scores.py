"""`m2ugen eval synth`: the retrieval score (cosines over each caption's own positions) and
the command end to end."""

from __future__ import annotations

import json

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


def test_eval_synth_command_writes_every_condition(tiny_dir, tmp_path, capsys):
    """`m2ugen eval synth` end to end on the random tiny preset (2 items of each kind):
    the table and results.json hold every asked attribute under the three conditions,
    the music retrieval and the dtype it ran in."""
    from m2ugen.cli import main

    out = tmp_path / "synth"
    code = main(["eval", "synth", "--model", "tiny", "--n", "2", "--seed", "5", "--out",
                 str(out), "--dtype", "fp32"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    results = json.loads((out / "results.json").read_text())
    assert results["dtype"] == "float32" and results["seed"] == 5
    assert {"audio/instrument", "image/colour", "video/direction"} <= set(results["attributes"])
    for row in results["attributes"].values():
        assert row["items"] == 2 and {"true", "none", "shuffled"} <= set(row)
    assert results["music"]["requests"] == 2 and 0 <= results["music"]["retrieval_top1"] <= 1
    assert len(results["replies"]) == 2 * sum(1 for _ in results["attributes"]) - 2  # bpm ±10
    table = (out / "table.md").read_text()
    assert "held-out seed 5 · float32" in table and table.strip() in stdout


def test_eval_synth_out_must_be_a_directory(tmp_path, capsys):
    from m2ugen.cli import main

    bad = tmp_path / "file"
    bad.write_text("x")
    assert main(["eval", "synth", "--model", "tiny", "--out", str(bad)]) == 2
    assert "is a file; --out takes a directory" in capsys.readouterr().err
