"""The embedding models load by directory (the tiny ones) through the hub-id code path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from m2ugen.errors import ConfigError
from m2ugen.eval.config import STANDARD, resolve_eval_models
from m2ugen.eval.embeddings import (
    Audio,
    AudioSetClassifier,
    ClapEmbedder,
    EncodecEmbedder,
    MertEmbedder,
)

CPU = torch.device("cpu")


def _clips() -> list[Audio]:
    rng = np.random.default_rng(0)
    return [Audio((0.1 * rng.standard_normal(16000)).astype(np.float32), 16000),
            Audio((0.1 * rng.standard_normal(32000)).astype(np.float32), 32000),
            Audio((0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)]


def test_clap_embeddings_are_unit_vectors_in_one_space(eval_models):
    clap = ClapEmbedder.load(eval_models.clap, CPU)
    audio, text = clap.audio(_clips()), clap.text(["a calm piano", "fast drums", "organ"])
    assert audio.shape == text.shape == (3, 16)
    assert torch.allclose(audio.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(clap.audio(_clips()[:1]), audio[:1], atol=1e-5)  # batch-independent


def test_frame_embedders_group_equal_lengths_without_changing_results(eval_models):
    for cls, ref in ((EncodecEmbedder, eval_models.encodec), (MertEmbedder, eval_models.mert)):
        model = cls.load(ref, CPU)
        frames = model.frames(_clips())
        assert [f.shape[1] for f in frames] == [frames[0].shape[1]] * 3
        assert frames[1].shape[0] == pytest.approx(frames[0].shape[0], abs=2)  # both 1 s
        alone = model.frames(_clips()[2:])[0]
        assert torch.allclose(alone, frames[2], atol=1e-5)


def test_audioset_classifier_gives_527_logits(eval_models):
    ast = AudioSetClassifier.load(eval_models.ast, CPU)
    logits = ast.logits(_clips())
    assert logits.shape == (3, 527) and len(ast.labels) == 527
    assert not torch.allclose(logits[0], logits[2])


def test_a_hub_id_that_cannot_be_fetched_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="could not be loaded") as err:
        ClapEmbedder.load("no-such-org/no-such-clap", CPU)
    assert "\n" not in str(err.value)


def test_model_sets_by_name_file_and_override(tmp_path, eval_models):
    assert resolve_eval_models(None) == STANDARD
    assert resolve_eval_models(None, default="tiny") == eval_models
    spec = tmp_path / "models.json"
    spec.write_text(json.dumps({"clap": "laion/clap-htsat-unfused", "mert_layer": 6}))
    models = resolve_eval_models(str(spec), {"ast": "my/ast", "encodec": None})
    assert (models.clap, models.mert_layer, models.ast, models.encodec) == (
        "laion/clap-htsat-unfused", 6, "my/ast", STANDARD.encodec)
    spec.write_text(json.dumps({"clapp": "x"}))
    with pytest.raises(ConfigError, match="unknown"):
        resolve_eval_models(str(spec))
    with pytest.raises(ConfigError, match="standard, tiny or a JSON file"):
        resolve_eval_models(str(tmp_path / "missing.json"))
