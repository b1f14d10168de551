"""Feature-cache keys name what a cached value depends on, weights included: a component
folder overwritten with other weights must not hand back the old features or targets."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from m2ugen.checkpoint import EMPTY_FINGERPRINT, fingerprint
from m2ugen.data.dataset import TrainDataset
from m2ugen.data.example import Example
from m2ugen.model import M2UGen
from m2ugen.presets.tiny import build_tiny


def _keys(model_dir, example) -> tuple[str, str]:
    model = M2UGen.from_pretrained(model_dir, decoder=False)
    data = TrainDataset([example], model, max_len=256)
    return data.feature_key(example, "audio"), data.target_key(example)


def test_keys_follow_the_weights_not_only_the_path(tmp_path):
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(8000, dtype=np.float32), 16000)
    example = Example("Compose.", "Here it is.", audio=clip, music_caption="A calm piano.")
    build_tiny(tmp_path / "m", seed=5, model_cls=M2UGen)
    first = _keys(tmp_path / "m", example)
    assert _keys(tmp_path / "m", example) == first  # stable while nothing changes
    build_tiny(tmp_path / "m", seed=6, model_cls=M2UGen)  # same paths, other weights
    again = _keys(tmp_path / "m", example)
    assert again[0] != first[0] and again[1] != first[1]


def test_a_pipeline_folder_is_fingerprinted_by_its_subfolders(tmp_path):
    """A diffusers pipeline keeps its weights in subfolders: they count (before, every
    such folder had the same, empty, fingerprint)."""
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text("{}")
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 100)
    first = fingerprint(pipe)
    assert first != EMPTY_FINGERPRINT
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\1" * 100)
    assert fingerprint(pipe) != first


def test_a_fingerprint_recorded_before_subfolders_counted_warns_of_nothing(tiny_audioldm2_dir,
                                                                          tmp_path, caplog):
    """Model directories written by the first version hold the empty fingerprint for an
    AudioLDM2 folder: it means "not recorded", not "changed"."""
    saved = M2UGen.from_pretrained(tiny_audioldm2_dir, decoder=False).save_pretrained(
        tmp_path / "run")
    cfg = json.loads((saved / "m2ugen.json").read_text())
    assert cfg["base_fingerprints"]["decoder_path"] not in ("", EMPTY_FINGERPRINT)
    cfg["base_fingerprints"]["decoder_path"] = EMPTY_FINGERPRINT
    (saved / "m2ugen.json").write_text(json.dumps(cfg))
    caplog.clear()
    M2UGen.from_pretrained(saved, decoder=False)
    assert "trained on" not in caplog.text
    cfg["base_fingerprints"]["decoder_path"] = "0" * 20  # a real mismatch still warns
    (saved / "m2ugen.json").write_text(json.dumps(cfg))
    M2UGen.from_pretrained(saved, decoder=False)
    assert "is not the decoder_path this model was trained on" in caplog.text
