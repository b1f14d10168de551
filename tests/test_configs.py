"""Every YAML the repo ships is loaded and validated (STYLE.md §19)."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2ugen.data.spec import load_spec
from m2ugen.training.config import load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGES = sorted(CONFIGS.glob("stage*.yaml"))


def test_the_repo_ships_the_three_stage_configs_and_a_data_spec():
    assert [p.name for p in STAGES] == ["stage1.yaml", "stage2.yaml", "stage3.yaml"]
    assert (CONFIGS / "data_synth.yaml").is_file()
    shipped = {p.name for p in CONFIGS.glob("*.yaml")}
    assert shipped == {"stage1.yaml", "stage2.yaml", "stage3.yaml", "data_synth.yaml",
                       "decoder_musicgen.yaml", "decoder_audioldm2.yaml"}, \
        "a new config needs a test here"


@pytest.mark.parametrize("path", STAGES, ids=lambda p: p.name)
def test_stage_config_loads_validates_and_names_its_stage(path):
    cfg = load_train_config(path)
    assert cfg.stage == int(path.stem[-1])
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"m2ugen train --config configs/{path.name}" in line for line in header)
    # each stage starts from the previous stage's output (README: one command per stage)
    if cfg.stage > 1:
        assert str(cfg.model).rstrip("/").endswith(f"stage{cfg.stage - 1}")


@pytest.mark.parametrize("kind", ["musicgen", "audioldm2"])
def test_decoder_config_loads_validates_and_names_its_launch(kind):
    from m2ugen.training.decoder_config import DecoderTrainConfig

    path = CONFIGS / f"decoder_{kind}.yaml"
    cfg = load_train_config(path, cls=DecoderTrainConfig)
    assert isinstance(cfg, DecoderTrainConfig) and cfg.tuning == "lora"
    assert cfg.model == ("tiny" if kind == "musicgen" else "tiny-audioldm2")
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"m2ugen train-decoder --config configs/{path.name}" in line for line in header)


def test_data_spec_loads_with_every_stage():
    spec = load_spec(CONFIGS / "data_synth.yaml")
    for stage in (1, 2, 3):
        entries = spec.entries(stage)
        assert entries, f"stage{stage} has no entries"
        assert all(e.weight >= 1 and e.file.is_absolute() for e in entries)
