"""loading.py: explicit decoder loading, media spec before the weights, old directories."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from m2ugen.checkpoint import TRAINED_NAME
from m2ugen.errors import ConfigError
from m2ugen.loading import (
    choose_dtype,
    cpu_bf16_feature,
    decoder_parameters,
    merge_lora_for_inference,
)
from m2ugen.model import M2UGen
from m2ugen.modules.decoders import cond_shape_from_configs
from m2ugen.music import MusicSettings, render_music
from m2ugen.trained import RENAMED, current_name


def test_decoder_false_loads_no_decoder_until_asked(tiny_dir):
    model = M2UGen.from_pretrained(tiny_dir, decoder=False)
    assert not model.has_decoder
    with pytest.raises(ConfigError, match=r"load_decoder\(\)"):
        model.decoder  # noqa: B018 - reading it must not load a GB-scale model silently
    assert not model.has_decoder
    decoder = model.load_decoder()
    assert model.has_decoder and model.decoder is decoder
    assert model.load_decoder() is decoder  # loaded once
    assert decoder.cond_shape == (model.config.projector_tokens, model.config.projector_dim)


def test_music_loads_the_decoder_when_first_asked(tiny_dir, tiny_model):
    """A text-only load still renders music: render_music loads the decoder explicitly,
    and the music equals that of a model loaded with its decoder."""
    model = M2UGen.from_pretrained(tiny_dir, decoder=False)
    hidden = torch.randn(8, model.config.llm_dim, generator=torch.Generator().manual_seed(0))
    settings = MusicSettings(music="always", seconds=0.2, seed=3)
    got = render_music(model, hidden, "", settings)
    assert model.has_decoder
    want = render_music(tiny_model, hidden, "", settings)
    assert (got.waveform == want.waveform).all()


def test_media_spec_is_read_before_the_weights(tiny_dir, tiny_model, any_tiny_model):
    assert M2UGen.read_media_spec(tiny_dir) == tiny_model.media_spec
    base = any_tiny_model.base_dir
    assert M2UGen.read_media_spec(base) == any_tiny_model.media_spec


def test_media_spec_follows_the_encoder_configs(tiny_dir, tmp_path):
    """The spec comes from the encoders' own files: another frame count in the ViViT
    config is what the spec says (a constant would not follow it)."""
    cfg = json.loads((tiny_dir / "m2ugen.json").read_text())
    vivit = tmp_path / "vivit"
    vivit.mkdir()
    raw = json.loads((tiny_dir / "vivit" / "config.json").read_text())
    raw["num_frames"] = raw["num_frames"] * 2
    (vivit / "config.json").write_text(json.dumps(raw))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    cfg.update(vivit=str(vivit), mert=str(tiny_dir / cfg["mert"]))
    (model_dir / "m2ugen.json").write_text(json.dumps(cfg))
    spec = M2UGen.read_media_spec(model_dir)
    assert spec.num_frames == raw["num_frames"]


def test_cond_shape_from_configs_is_the_loaded_decoders(any_tiny_model):
    """The conditioning layout read from config files (info, convert, the tiny builder)
    equals the one the loaded decoder reports."""
    root = any_tiny_model.base_dir / any_tiny_model.config.decoder_path
    shape = cond_shape_from_configs(
        any_tiny_model.config.decoder,
        lambda sub: json.loads((root / sub / "config.json").read_text()))
    assert shape == any_tiny_model.decoder.cond_shape


def test_directories_with_the_first_versions_projector_names_load(tiny_model, tmp_path):
    """`projector.model.*` (before the rename to `projector.out`) still loads, to the same
    values; an unknown name is still refused."""
    out = tiny_model.save_pretrained(tmp_path / "old")
    tensors = load_file(out / TRAINED_NAME)
    old = {k.replace("projector.out.", "projector.model."): v for k, v in tensors.items()}
    assert set(old) != set(tensors)  # the old names are really in the file
    save_file(old, out / TRAINED_NAME)
    loaded = M2UGen.from_pretrained(out, decoder=False)
    assert torch.equal(loaded.projector.out.weight, tiny_model.projector.out.weight)
    assert torch.equal(loaded.projector.out.bias, tiny_model.projector.out.bias)
    save_file({**old, "projector.nonsense.weight": torch.zeros(1)}, out / TRAINED_NAME)
    with pytest.raises(ConfigError, match="unexpected"):
        M2UGen.from_pretrained(out, decoder=False)


def test_current_name_maps_only_the_renamed():
    assert RENAMED
    assert current_name("projector.model.weight") == "projector.out.weight"
    assert current_name("projector.model.bias") == "projector.out.bias"
    assert current_name("llm.model.lm_head.trainable_tokens_delta") == \
        "llm.model.lm_head.trainable_tokens_delta"
    assert current_name("projector.model.layers.0.weight") == "projector.model.layers.0.weight"


@pytest.mark.parametrize("kind", ["musicgen", "audioldm2"])
def test_the_decoder_loads_in_the_models_dtype(kind, tiny_dir, tiny_audioldm2_dir):
    """bf16 asked for is bf16 loaded, every part of the decoder (a pipeline's too): an
    fp32 decoder beside a bf16 model doubles its memory on a GPU."""
    base = tiny_dir if kind == "musicgen" else tiny_audioldm2_dir
    model = M2UGen.from_pretrained(base, dtype=torch.bfloat16)
    dtypes = {p.dtype for _, p in decoder_parameters(model.decoder)}
    assert dtypes == {torch.bfloat16}


def test_an_unknown_decoder_kind_is_named():
    with pytest.raises(ConfigError, match=r"decoder kind 'diffwave' is unknown; use musicgen"):
        cond_shape_from_configs("diffwave", lambda sub: {})


def _native_bf16_cpu() -> bool:
    """Read independently of the code under test: /proc/cpuinfo's flags."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def test_dtype_names_resolve_and_a_bad_one_is_one_line(tiny_dir):
    for name, want in (("bf16", torch.bfloat16), ("fp16", torch.float16),
                       ("fp32", torch.float32)):
        assert choose_dtype(name, "cpu") is want
    assert choose_dtype(None, "cpu") is torch.float32  # the library default: unchanged
    for bad in ("bf32", "float16", "", 16):
        with pytest.raises(ConfigError) as e:
            choose_dtype(bad, "cpu")
        assert "\n" not in str(e.value) and "use one of auto, bf16, fp16, fp32" in str(e.value)
    with pytest.raises(ConfigError, match="dtype 'half' is unknown"):  # before any weight
        M2UGen.from_pretrained(tiny_dir, dtype="half")


def test_auto_on_this_cpu_is_bf16_exactly_where_it_computes_bf16_natively(caplog):
    with caplog.at_level(logging.INFO, logger="m2ugen.loading"):
        got = choose_dtype("auto", "cpu")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dtype")]
    if _native_bf16_cpu():
        assert got is torch.bfloat16 and line.startswith("dtype bf16 on cpu: this CPU computes")
    else:
        assert got is torch.float32 and "no native bf16" in line


def test_cpu_bf16_feature_reads_cpuinfo_flags():
    assert cpu_bf16_feature("flags\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n") == "amx_bf16"
    assert cpu_bf16_feature("flags\t: fpu avx2 avx512f avx512_bf16\n") == "avx512_bf16"
    # AVX512 alone (get_cpu_capability's "AVX512") or AVX512-FP16 computes no bf16
    assert cpu_bf16_feature("flags\t: fpu avx2 avx512f avx512bw avx512_fp16\n") is None


def test_a_dtype_name_reaches_every_part(tiny_audioldm2_dir):
    model = M2UGen.from_pretrained(tiny_audioldm2_dir, dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.dtype for _, p in decoder_parameters(model.decoder)} == {torch.bfloat16}


def test_lora_stays_separate_on_the_cpu_and_the_log_says_so(tiny_dir, caplog):
    model = M2UGen.from_pretrained(tiny_dir, decoder=False)
    assert model.llm.mergeable()  # the tiny preset has LoRA and new-token rows
    before = {k: v.clone() for k, v in model.llm.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="m2ugen.loading"):
        assert merge_lora_for_inference(model) is False
    assert "LoRA kept beside the base weights on the CPU" in caplog.text
    after = model.llm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no weight was rewritten


def test_auto_on_a_cpu_without_native_bf16_takes_bf16_where_fp32_would_not_fit(
        tiny_dir, monkeypatch, caplog):
    """A LLaMA-2-7B-size model is 27 GB in fp32: on a 24 GB machine whose CPU lacks native
    bf16, auto used to pick fp32 and the load was killed. Now auto weighs the stored
    parameters against the available RAM: bf16 (emulated, slower) where only it fits,
    fp32 where fp32 fits or nothing does; a named dtype is taken as asked."""
    import m2ugen.loading as loading
    from m2ugen.checkpoint import stored_parameters

    monkeypatch.setattr(loading, "cpu_bf16_feature", lambda cpuinfo=None: None)
    gib = 2**30
    with caplog.at_level(logging.INFO, logger="m2ugen.loading"):
        assert choose_dtype("auto", "cpu", 6_900_000_000, 24 * gib) is torch.bfloat16
    assert "25.7 GiB in fp32, more than this machine's 24.0 GiB available" in caplog.text
    assert choose_dtype("auto", "cpu", 1_000_000_000, 24 * gib) is torch.float32
    assert choose_dtype("auto", "cpu", 20_000_000_000, 24 * gib) is torch.float32
    assert choose_dtype("fp32", "cpu", 6_900_000_000, 24 * gib) is torch.float32
    # through the loader: the model directory's own weights are counted (headers only)
    stored = stored_parameters(tiny_dir)
    monkeypatch.setattr(loading, "available_memory", lambda: 3 * stored)
    model = M2UGen.from_pretrained(tiny_dir, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    monkeypatch.setattr(loading, "available_memory", lambda: 100 * stored)
    model = M2UGen.from_pretrained(tiny_dir, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
