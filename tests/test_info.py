"""`m2ugen info`: components, parameter counts and trained tensors, read from headers."""

from __future__ import annotations

import pytest

from m2ugen.cli import build_parser
from m2ugen.errors import ConfigError
from m2ugen.info import count_params, read_config
from m2ugen.modules.encoders import encoder_features


def _run(argv: list[str]) -> int:
    """`m2ugen ARGV` through the CLI's parser, its errors raised rather than printed."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_info_prints_components_and_trained_tensors(tiny_dir, tiny_model, capsys):
    assert _run(["info", str(tiny_dir)]) == 0
    text = capsys.readouterr().out
    for key in ("llm", "mert", "vit", "vivit", "decoder_path", "tokenizer"):
        assert f"  {key}" in text
    trained = tiny_model.trained_parameters()
    assert f"trained tensors: {len(trained)} " in text
    assert "gates" in text and "lora" in text and "projector" in text
    llm_params = sum(p.numel() for p in tiny_model.llm.model.get_base_model().parameters())
    n, _ = count_params(tiny_dir / "llm")
    assert 0 < n <= llm_params  # the base file holds no LoRA, biases or new rows


def test_feature_shapes_from_configs_match_the_encoders(tiny_dir, tiny_model):
    for kind, modality in (("mert", "audio"), ("vit", "image"), ("vivit", "video")):
        cfg = read_config(str(tiny_dir / kind), f"--{kind}")
        assert encoder_features(kind, cfg) == tiny_model.feature_shape(modality)


def test_info_on_a_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match="not a model directory"):
        _run(["info", str(tmp_path / "nope")])
