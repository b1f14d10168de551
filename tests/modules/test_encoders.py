"""Encoders: MERT chunking with layer/time averaging, native loading, feature shapes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from m2ugen.errors import ConfigError
from m2ugen.modules.encoders import MusicEncoder, feature_shape, load_mert


def test_mert_features_average_time_then_chunks(tiny_model):
    enc = tiny_model.encoders["audio"]
    sr = enc.sample_rate
    rng = np.random.default_rng(0)
    wav = rng.standard_normal(int(2.5 * sr)).astype(np.float32) * 0.1
    chunked = MusicEncoder(enc.model, enc.processor, chunk_seconds=1.0)
    got = chunked([wav])[0]  # (layers + 1, width)
    # by hand: pieces of 1 s (the last, 0.5 s, padded to 1 s), every hidden state averaged
    # over time, then the pieces averaged
    pieces = [wav[:sr], wav[sr:2 * sr], np.pad(wav[2 * sr:], (0, sr // 2))]
    per_piece = []
    for piece in pieces:
        values = enc.processor(piece, sampling_rate=sr, return_tensors="pt")["input_values"]
        with torch.no_grad():
            hidden = enc.model(values, output_hidden_states=True).hidden_states
        per_piece.append(torch.stack([h[0].mean(0) for h in hidden]))
    torch.testing.assert_close(got, torch.stack(per_piece).mean(0))
    assert got.shape == (tiny_model.config.mert_layers, tiny_model.config.mert_dim)
    # one long chunk differs from three short ones: chunking really happens
    assert not torch.allclose(enc([wav])[0], got)


def test_mert_loads_natively_unless_its_config_needs_remote_code(tiny_dir, tmp_path):
    model, how = load_mert(str(tiny_dir / "mert"), torch.float32)
    assert how == "native HubertModel" and type(model).__name__ == "HubertModel"
    # a MERT-style config (model_type "mert_model", CQT and deepnorm off) is loaded natively
    mert = tmp_path / "mert"
    shutil.copytree(tiny_dir / "mert", mert)
    cfg = json.loads((mert / "config.json").read_text())
    cfg.update(model_type="mert_model", feature_extractor_cqt=False, deepnorm=False,
               attention_relax=32.0, auto_map={"AutoModel": "modeling_MERT.MERTModel"})
    (mert / "config.json").write_text(json.dumps(cfg))
    model, how = load_mert(str(mert), torch.float32)
    assert how == "native HubertModel"
    # a config that turns CQT on needs the hub's remote code: that path is chosen and, with
    # no remote code here, fails with a clear error instead of computing the wrong thing
    cfg["feature_extractor_cqt"] = True
    (mert / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="enables feature_extractor_cqt.*remote code"):
        load_mert(str(mert), torch.float32)


def test_feature_shapes_follow_the_encoder_configs(tiny_model):
    c = tiny_model.config
    assert feature_shape(tiny_model.encoders["audio"]) == (c.mert_layers, c.mert_dim)
    assert feature_shape(tiny_model.encoders["image"]) == (c.vit_tokens, c.vit_dim)
    assert feature_shape(tiny_model.encoders["video"]) == (c.vivit_tokens, c.vivit_dim)
    feats = tiny_model.encode(2, image=[None, Image.new("RGB", (40, 30), (200, 30, 10))])
    f, present = feats["image"]
    assert f.shape == (2, c.vit_tokens, c.vit_dim) and present.tolist() == [False, True]
    assert f[0].abs().sum() == 0 and f[1].abs().sum() > 0


def test_loading_the_encoders_says_nothing_about_image_backends(tiny_dir):
    """ViViT's image processor exists for torchvision only; through AutoImageProcessor
    transformers asked for the PIL one and logged a fallback on every model load (once
    per process: hence a fresh one)."""
    code = ("import sys, torch; from m2ugen.modules.encoders import load_encoders; "
            "d = sys.argv[1]; e = load_encoders(d + '/mert', d + '/vit', d + '/vivit', "
            "torch.float32, 60.0); print(type(e['video'].processor).__name__)")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_dir)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "VivitImageProcessor"
    assert "backend is not available" not in proc.stderr, proc.stderr
