"""The tiny-trained recipe in miniature: a short learning run that fails when the model
cannot learn to use its inputs (gates, adapters, injection) or its [AUD] states
(projector); the [AUD] positions training takes against the chat path's (a learning run
cannot see them: shifted by one position either way, stage 2 still learns — measured);
the recipe's settings against the shipped stage configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from m2ugen.data.batching import collate, tokenize_example
from m2ugen.data.example import Example
from m2ugen.data.synth import synthesize
from m2ugen.data.synth_qa import QUESTIONS, read_items, write_qa
from m2ugen.eval.synth import caption_retrieval, choice_accuracy, derangement, media_prompts
from m2ugen.model import M2UGen
from m2ugen.training.features import cache_features
from m2ugen.training.loop import train
from m2ugen.training.tiny_trained import (
    STAGE_SETTINGS,
    Recipe,
    StageNumbers,
    build_base,
    stage_config,
)

ROOT = Path(__file__).resolve().parents[2]


def test_stage_settings_are_the_shipped_configs():
    for stage, settings in STAGE_SETTINGS.items():
        shipped = yaml.safe_load((ROOT / "configs" / f"stage{stage}.yaml").read_text())
        assert {k: shipped[k] for k in settings} == settings


@pytest.fixture(scope="module")
def run(tmp_path_factory, ckpts):
    """A miniature of the recipe: 40 images (+ 8 clips for stage 2), a base LLM pretrained
    on their text, then stage 1 on questions about the images and stage 2 on captions."""
    root = tmp_path_factory.mktemp("learn")
    synthesize(root / "train", seed=0, n_audio=8, n_images=40, n_videos=1)
    write_qa(root / "train")
    records = json.loads((root / "train" / "image_qa.json").read_text())
    question = next(q for q in QUESTIONS if q.attribute == "background").asks[0]
    (root / "train" / "background.json").write_text(json.dumps(
        [r for r in records if r["conversation"][0]["value"] == question]))
    spec = root / "train" / "learn.yaml"
    spec.write_text(yaml.safe_dump({
        "stage1": [{"format": "instruct", "file": "background.json", "input_root": "images"}],
        "stage2": [{"format": "mucaps", "file": "mucaps.json", "root": "audio"}]}))
    recipe = Recipe(vocab_size=400, pretrain_steps=80, pretrain_batch=16, stages={
        1: StageNumbers(max_steps=80, batch_size=16, lr=1e-2, min_lr=3e-3, warmup_steps=5),
        2: StageNumbers(max_steps=100, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5)})
    base = build_base(root / "base", spec, recipe)
    outs = {}
    model = base
    for stage in (1, 2):
        cfg = stage_config(stage, model, spec, root / f"stage{stage}", root / "cache", recipe,
                           progress=False)
        cache_features(cfg)
        model = outs[stage] = train(cfg)
    synthesize(root / "test", seed=1, n_audio=1, n_images=24, n_videos=1)
    return {"root": root, **outs}


def test_the_base_llm_passes_a_prompt_at_its_widths_scale(run):
    """The frozen Wo·Wv that carry a modality's prompt vector into the LLM (the injected
    term before its gates) pass it at an order-one gain: the base LLaMA is drawn at
    1/sqrt(width) (`Recipe.llm_init_std`). At transformers' default 0.02 a 64-wide LLaMA
    passes it at ~0.03, and tiny-trained's answers stalled (DESIGN.md §7)."""
    model = M2UGen.from_pretrained(run["root"] / "base", decoder=False, warn_untrained=False)
    p = torch.randn(64, model.config.llm_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.llm.gates.fill_(10.0)  # tanh = 1: the frozen path alone
        for j in range(model.llm.gates.shape[0]):
            gain = model.llm.injected_term(j, p).norm(dim=-1) / p.norm(dim=-1)
            assert gain.mean() > 0.3, (j, float(gain.mean()))


def test_stage1_learns_to_answer_from_the_image(run):
    """Held-out images: the answer follows the image (true ≫ shuffled inputs). With the
    gates frozen at zero, an adapter cut off, or the injection lost, true = shuffled."""
    model = M2UGen.from_pretrained(run[1], decoder=False)
    items = read_items(run["root"] / "test")["image"]
    question = next(q for q in QUESTIONS if q.attribute == "background")
    prompts = media_prompts(model, items)
    true = choice_accuracy(model, question, items, prompts)
    shuffled = choice_accuracy(model, question, items,
                               [prompts[j] for j in derangement(len(items), 0)])
    assert true >= shuffled + 0.4, (true, shuffled)
    assert torch.tanh(model.llm.gates[1]).abs().max() > 0  # the image layer's gates opened


def test_stage2_aims_the_aud_states_at_the_caption(run):
    """Through the chat path (the [AUD] hidden states of a generated reply), the projector
    output is closer to the decoder's conditioning of its own caption than to the others'."""
    model = M2UGen.from_pretrained(run[2])
    captions = [it.caption for it in read_items(run["root"] / "train")["audio"]]
    result = caption_retrieval(model, captions, progress=False)
    assert result["aud_emitted"] >= 0.75
    assert result["retrieval_top1"] >= 3 * result["chance"], result
    assert result["cosine"] > result["cosine_other"] + 0.02, result


def test_training_takes_the_aud_states_the_chat_path_returns(tiny_model):
    """The stage-2 loss is computed on exactly the hidden states that condition music in
    chat (`audio_token_hidden`, used by ChatSession.audio_states): those at the positions
    that predict [AUD0..7], as tokenize_example records them."""
    model = tiny_model
    ex = Example(instruction="Compose a calm piece.", response="Here is a calm piece.",
                 music_caption="A calm piano arpeggio in C major at 80 BPM.")
    tok = tokenize_example(ex, model.tokenizer, model.config.prompt_template,
                           model.llm.audio_token_ids, 256)
    batch = collate([{"input_ids": tok.input_ids, "labels": tok.labels}],
                    pad_id=model.tokenizer.eos_token_id)
    shape = (1, model.config.projector_tokens, model.config.projector_dim)
    target = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], {},
                    music_rows=torch.tensor([0]),
                    music_positions=torch.tensor([tok.audio_positions]),
                    music_target=target, music_mask=torch.ones(shape, dtype=torch.bool))
        chat = model.audio_token_hidden(tok.input_ids[:-1], model.media_prompts(1))  # no EOS
        expected = ((model.project(chat[None]).float() - target) ** 2).sum()
    assert torch.allclose(out["mse_sum"], expected, rtol=1e-4)
