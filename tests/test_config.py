"""Config JSON round trip, validation and presets."""

from __future__ import annotations

import json

import pytest

from m2ugen.checkpoint import CONFIG_NAME
from m2ugen.config import M2UGenConfig
from m2ugen.errors import ConfigError
from m2ugen.presets import HUB_PRESETS, PRESET_NAMES, preset_config


def test_json_round_trip(tmp_path):
    cfg = M2UGenConfig(name="x", llm="some/llm", query_layers=2, lora_rank=8, lora_alpha=8,
                       extra={"note": "kept"})
    cfg.save(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["query_layers"] == 2
    assert M2UGenConfig.load(tmp_path) == cfg


@pytest.mark.parametrize("name", sorted(HUB_PRESETS))
def test_hub_presets_name_the_published_components(name):
    cfg = preset_config(name)
    assert cfg.llm == "meta-llama/Llama-2-7b-hf" and cfg.mert == "m-a-p/MERT-v1-330M"
    assert cfg.vit.startswith("google/vit-base") and cfg.vivit.startswith("google/vivit-b-16x2")
    assert (cfg.llm_dim, cfg.mert_layers, cfg.mert_dim) == (4096, 25, 1024)
    assert (cfg.vit_tokens, cfg.vivit_tokens, cfg.num_audio_tokens) == (197, 3137, 8)
    assert cfg.query_layers == 6 and cfg.injected_layers == 18 and cfg.lora_rank == 16
    if cfg.decoder == "musicgen":
        assert (cfg.projector_tokens, cfg.projector_dim) == (128, 768)
    else:
        assert cfg.decoder_path == "cvssp/audioldm2-music"
        assert (cfg.projector_tokens, cfg.projector_dim) == (1, 137216)
    assert M2UGenConfig.from_dict(cfg.to_dict()) == cfg
    assert name in PRESET_NAMES


def test_unknown_preset_and_bad_values_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*tiny"):
        preset_config("nope")
    with pytest.raises(ConfigError, match="decoder kind 'wavenet'"):
        M2UGenConfig(decoder="wavenet")
    with pytest.raises(ConfigError, match="query_layers must be positive"):
        M2UGenConfig(query_layers=0)
    with pytest.raises(ConfigError, match="placeholder"):
        M2UGenConfig(prompt_template="no slot")
    (tmp_path / CONFIG_NAME).write_text('{"name": "x", "colour": "red"}')
    with pytest.raises(ConfigError, match="unknown keys colour"):
        M2UGenConfig.load(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        M2UGenConfig.load(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        M2UGenConfig.load(tmp_path / "missing")
