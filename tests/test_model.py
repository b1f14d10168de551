"""Model directory: trained tensors only, round trip, stage sets, determinism, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from m2ugen.checkpoint import TRAINED_NAME
from m2ugen.errors import ConfigError
from m2ugen.model import M2UGen
from m2ugen.presets import resolve_model
from m2ugen.presets.tiny import build_tiny
from m2ugen.trained import STAGE_GROUPS, tensor_group


def test_model_directory_holds_only_trained_tensors(tiny_dir, tiny_model):
    tensors = load_file(str(tiny_dir / TRAINED_NAME))
    groups = {tensor_group(k) for k in tensors}
    assert groups == {"adapters", "prefix_query", "gates", "lora", "bias", "norm",
                      "new_tokens", "projector"}
    assert None not in groups
    assert not any(k.startswith("encoders.") or "base_layer.weight" in k for k in tensors)
    n_trained = sum(t.numel() for t in tensors.values())
    n_all = sum(p.numel() for p in tiny_model.parameters())
    assert n_trained < n_all
    # the tiny preset stands for a trained model: gates, LoRA B and new rows are non-zero
    assert tensors["llm.gates"].abs().min() > 0
    assert all(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)


def test_save_and_reload_round_trip(tiny_model, tmp_path, media_arrays):
    out = tiny_model.save_pretrained(tmp_path / "copy")
    assert sorted(p.name for p in out.iterdir()) == [".m2ugen-files", "adapter.safetensors",
                                                     "m2ugen.json", "tokenizer"]
    again = M2UGen.from_pretrained(out)
    ids = torch.tensor([[1, 50, 60, 70]])
    torch.testing.assert_close(again.forward_logits(ids, audio=media_arrays["audio"]),
                               tiny_model.forward_logits(ids, audio=media_arrays["audio"]))


def test_stage_trainable_sets(tiny_model):
    try:
        counts = {}
        for stage in STAGE_GROUPS:
            counts[stage] = tiny_model.set_stage(stage)
            trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
            assert trainable, stage
            assert not any(n.startswith("encoders.") for n in trainable)
            assert ("llm.gates" in trainable) == (stage in (1, 3))  # gates train (§5.1 fix)
            assert any(n.startswith("adapters.") for n in trainable) == (stage == 1)
            assert any(n.startswith("projector.") for n in trainable) == (stage in (1, 2))
            assert counts[stage] == sum(p.numel() for n, p in tiny_model.named_parameters()
                                        if p.requires_grad)
        with pytest.raises(ConfigError, match="stage 4"):
            tiny_model.set_stage(4)
    finally:
        tiny_model.requires_grad_(False)


def test_tiny_build_is_deterministic(tmp_path):
    a = build_tiny(tmp_path / "a", seed=3, model_cls=M2UGen)
    b = build_tiny(tmp_path / "b", seed=3, model_cls=M2UGen)
    ta, tb = load_file(str(a / TRAINED_NAME)), load_file(str(b / TRAINED_NAME))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    la = load_file(str(a / "llm" / "model.safetensors"))
    lb = load_file(str(b / "llm" / "model.safetensors"))
    assert all(torch.equal(la[k], lb[k]) for k in la)
    assert (a / "tokenizer" / "tokenizer.json").read_bytes() == \
        (b / "tokenizer" / "tokenizer.json").read_bytes()
    c = load_file(str(build_tiny(tmp_path / "c", seed=4, model_cls=M2UGen) / TRAINED_NAME))
    assert not torch.equal(c["llm.gates"], ta["llm.gates"])


def test_tiny_without_a_decoder_chats_but_has_no_decoder(tmp_path, media_arrays):
    """`build_tiny(with_decoder=False)` (the dataset pipelines' captioner kit): no decoder
    directory, the stand-in conditioning shape, and the model answers about its inputs."""
    out = build_tiny(tmp_path / "kit", seed=0, model_cls=M2UGen, with_decoder=False)
    assert not (out / "musicgen").exists() and (out / "mert").is_dir()
    model = M2UGen.from_pretrained(out, decoder=False)
    cfg = json.loads((out / "m2ugen.json").read_text())
    assert (cfg["projector_tokens"], cfg["projector_dim"]) == (4, 16)
    hidden = torch.zeros(1, 8, model.config.llm_dim)
    assert model.project(hidden).shape == (1, 4, 16)
    with torch.no_grad():
        seen = model.media_prompts(1, audio=media_arrays["audio"])
        unseen = model.media_prompts(1)
    assert not torch.equal(seen, unseen)


def test_mismatched_trained_tensors_are_named(tiny_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    tensors = load_file(str(bad / TRAINED_NAME))
    tensors["llm.gates"] = torch.zeros(5, 5)
    from safetensors.torch import save_file
    save_file(tensors, str(bad / TRAINED_NAME))
    with pytest.raises(ConfigError, match=r"llm\.gates has shape \(5, 5\)"):
        M2UGen.from_pretrained(bad)
    del tensors["llm.gates"]
    save_file(tensors, str(bad / TRAINED_NAME))
    with pytest.raises(ConfigError, match=r"1 missing, e\.g\. \['llm\.gates'\]"):
        M2UGen.from_pretrained(bad)
    (bad / TRAINED_NAME).write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        M2UGen.from_pretrained(bad)


def test_resolve_model_names(tiny_dir, tmp_path):
    cfg, base = resolve_model("tiny", model_cls=M2UGen)
    assert base == tiny_dir and cfg.name == "tiny-musicgen"
    cfg, base = resolve_model("musicgen-medium", model_cls=M2UGen)
    assert base is None and cfg.decoder_path == "facebook/musicgen-medium"
    with pytest.raises(ConfigError, match="no such model directory or preset"):
        resolve_model(tmp_path / "nothing", model_cls=M2UGen)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        resolve_model(tmp_path / "file.txt", model_cls=M2UGen)


def test_changed_base_component_is_reported(tmp_path, caplog):
    base = build_tiny(tmp_path / "base", seed=5, model_cls=M2UGen)
    saved = M2UGen.from_pretrained(base).save_pretrained(tmp_path / "run")
    cfg = json.loads((saved / "m2ugen.json").read_text())
    assert set(cfg["base_fingerprints"]) == {"llm", "mert", "vit", "vivit", "decoder_path"}
    caplog.clear()
    M2UGen.from_pretrained(saved)
    assert "trained on" not in caplog.text  # unchanged base: silent
    build_tiny(tmp_path / "base", seed=6, model_cls=M2UGen)  # same shapes, other weights
    M2UGen.from_pretrained(saved)
    assert "is not the llm this model was trained on" in caplog.text


def test_trained_tensor_names_carry_no_peft_wrapper_parts(tiny_model):
    """`adapter.safetensors` names are ours, stable across peft versions: no
    `base_model.model.`, `.default`, `.base_layer.` or `.token_adapter.` in any of them."""
    names = list(tiny_model.trained_parameters())
    assert any(n.startswith("llm.model.model.layers.") for n in names)  # peft's LLM inside
    for part in ("base_model.model.", ".default", ".base_layer.", ".token_adapter."):
        assert not [n for n in names if part in n], part
