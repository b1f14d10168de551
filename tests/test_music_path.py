"""The music path's numeric contracts, each checked against a by-hand computation: where
training reads the [AUD] states, the ×10 / ÷10 scale between projector and decoder, the
AudioLDM2 negative prompt, the reply text under `--music always`, and the rate training
audio is decoded at.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from m2ugen.chat import ChatSession, GenerationSettings
from m2ugen.conversation import build_prompt_ids
from m2ugen.data.batching import collate, tokenize_example
from m2ugen.data.dataset import TrainDataset
from m2ugen.data.example import Example
from m2ugen.media import load_audio
from m2ugen.modules.decoders import AUDIOLDM2_T5_TOKENS as T5_TOKENS
from m2ugen.modules.decoders import TARGET_SCALE
from m2ugen.modules.llm import Injection
from m2ugen.music import MusicSettings, render_music


def _hidden(model, seed: int = 0) -> torch.Tensor:
    """Stand-in [AUD] hidden states (8, D)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, model.config.llm_dim, generator=g)


def _pipeline_encoding(dec, text: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AudioLDM2's own encoding of `text` (the diffusers pipeline, not our wrapper): T5
    states and mask zero-padded by hand to the published 128, and the 8 GPT-2 states."""
    with torch.no_grad():
        t5, mask, gpt2 = dec.pipe.encode_prompt([text], torch.device("cpu"),
                                                num_waveforms_per_prompt=1,
                                                do_classifier_free_guidance=False)
    n = t5.shape[1]
    assert n < T5_TOKENS  # the padding below is exercised
    t5_padded = torch.zeros(1, T5_TOKENS, t5.shape[2])
    t5_padded[:, :n] = t5
    mask_padded = torch.zeros(1, T5_TOKENS, dtype=mask.dtype)
    mask_padded[:, :n] = mask
    return t5_padded, mask_padded, gpt2


def _unet_inputs(dec, run) -> dict[str, torch.Tensor]:
    """The conditioning AudioLDM2's UNet receives on its first call during `run()`:
    rows [negative, positive] under classifier-free guidance."""
    seen: dict[str, torch.Tensor] = {}

    def grab(module, args, kwargs):
        for key in ("encoder_hidden_states", "encoder_hidden_states_1",
                    "encoder_attention_mask_1"):
            seen.setdefault(key, kwargs[key].detach().clone())

    handle = dec.pipe.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_training_reads_the_aud_states_inference_reads(tiny_model, media_arrays):
    """A music row whose target is the projector of the inference-time [AUD] states has
    MSE ≈ 0: training takes the hidden states at the same positions as generation."""
    model, tok = tiny_model, tiny_model.tokenizer
    aud, template = model.llm.audio_token_ids, model.config.prompt_template
    instruction, response = "Compose music for this picture.", "A calm piano piece."
    examples = [Example("Describe the music.", "Loud rock with drums and a long guitar solo."),
                Example(instruction, response, music_caption="A calm piano piece.")]
    rows = [tokenize_example(ex, tok, template, aud, max_len=256) for ex in examples]
    batch = collate([{"input_ids": r.input_ids, "labels": r.labels} for r in rows],
                    pad_id=tok.pad_token_id or 0)
    # inference (`--music always`): the chat prompt, the reply text, then the [AUD] tokens
    prompt_ids, _ = build_prompt_ids(tok, template, [], instruction, 10_000)
    infer_ids = [*prompt_ids, *tok(response, add_special_tokens=False).input_ids, *aud]
    assert rows[1].input_ids[:len(infer_ids)] == infer_ids  # same sequence, EOS after
    image = media_arrays["image"]
    with torch.no_grad():
        hidden = model.audio_token_hidden(infer_ids, model.media_prompts(1, image=image))
        target = model.project(hidden[None]).float()
        out = model(batch["input_ids"], batch["attention_mask"], batch["labels"],
                    model.encode(2, image=[None, image]), music_rows=torch.tensor([1]),
                    music_positions=torch.tensor([rows[1].audio_positions]),
                    music_target=target,
                    music_mask=torch.ones_like(target, dtype=torch.bool))
    assert out["mse_count"] == target.numel()
    mse = float(out["mse_sum"] / out["mse_count"])
    assert mse < 1e-9 * float(target.pow(2).mean()), mse


def test_the_loss_trains_the_projector_towards_zero_past_the_caption(tiny_model):
    """Stage 2's MSE is against the decoder's view of the caption — its states, zero at
    padding (what the decoder hears, decoders/__init__) — over every position, normalised
    by the caption's: a projector output at padding costs its square; a target value
    there costs nothing. (Masking padding out of the loss left those outputs untrained,
    and the decoder heard them.)"""
    model, tok = tiny_model, tiny_model.tokenizer
    ex = Example("Compose a calm piece.", "Here is a calm piece.",
                 music_caption="A calm piano arpeggio.")
    row = tokenize_example(ex, tok, model.config.prompt_template, model.llm.audio_token_ids,
                           256)
    batch = collate([{"input_ids": row.input_ids, "labels": row.labels}],
                    pad_id=tok.pad_token_id or 0)
    shape = (1, *model.decoder.cond_shape)
    g = torch.Generator().manual_seed(0)
    target = torch.randn(shape, generator=g)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[:, :5] = True  # a caption of 5 positions

    def loss(target):
        with torch.no_grad():
            return model(batch["input_ids"], batch["attention_mask"], batch["labels"], {},
                         music_rows=torch.tensor([0]),
                         music_positions=torch.tensor([row.audio_positions]),
                         music_target=target, music_mask=mask)

    out = loss(target)
    with torch.no_grad():
        hidden = model.audio_token_hidden(row.input_ids[:-1], model.media_prompts(1))
        pred = model.project(hidden[None]).float()
    torch.testing.assert_close(out["mse_sum"], ((pred - target * mask) ** 2).sum(), rtol=1e-4,
                               atol=0)
    assert out["mse_count"] == mask.sum()
    padding = (pred[~mask] ** 2).sum()
    assert padding > 0.5 * out["mse_sum"]  # most of it: 123 untrained positions
    other = loss(torch.where(mask, target, torch.randn(shape, generator=g)))
    torch.testing.assert_close(other["mse_sum"], out["mse_sum"])


def test_decoder_receives_projector_output_divided_by_ten(any_tiny_model):
    """What the decoder is conditioned on at generation is projector(hidden) / 10."""
    model = any_tiny_model
    dec = model.decoder
    hidden = _hidden(model)
    settings = MusicSettings(seconds=0.5, steps=1, seed=0)

    def run():
        render_music(model, hidden, "", settings)

    if dec.kind == "musicgen":
        seen = []
        handle = dec.model.enc_to_dec_proj.register_forward_pre_hook(
            lambda module, args: seen.append(args[0].detach().clone()))
        try:
            run()
        finally:
            handle.remove()
        received = seen[0][:1]  # [conditional; unconditional]
    else:
        got = _unet_inputs(dec, run)
        t5, gpt2 = got["encoder_hidden_states_1"][1:], got["encoder_hidden_states"][1:]
        received = torch.cat([t5.reshape(1, -1), gpt2.reshape(1, -1)], dim=1)[:, None]
    with torch.no_grad():
        want = model.project(hidden[None]) / 10
    assert received.shape == want.shape
    torch.testing.assert_close(received, want)


def test_audioldm2_target_is_ten_times_t5_then_gpt2_states(tiny_audioldm2_model):
    """The AudioLDM2 twin of the MusicGen ×10 test: the stage-2 target is 10 × [the T5
    states padded to 128, then the GPT-2 states], flattened into one token."""
    dec = tiny_audioldm2_model.decoder
    target, mask = dec.target(["A sad violin."])
    t5, t5_mask, gpt2 = _pipeline_encoding(dec, "A sad violin.")
    want = torch.cat([t5.reshape(1, -1), gpt2.reshape(1, -1)], dim=1)[:, None]
    torch.testing.assert_close(target, TARGET_SCALE * want)
    want_mask = torch.cat([t5_mask.bool()[:, :, None].expand_as(t5).reshape(1, -1),
                           torch.ones(1, gpt2.numel(), dtype=torch.bool)], dim=1)[:, None]
    assert torch.equal(mask, want_mask)


def test_audioldm2_negative_embeddings_are_low_quality(tiny_audioldm2_model):
    """The unconditional half of AudioLDM2's guidance is the encoding of "Low quality."."""
    model = tiny_audioldm2_model
    dec = model.decoder
    cond = torch.randn(1, *dec.cond_shape, generator=torch.Generator().manual_seed(1))
    got = _unet_inputs(dec, lambda: dec.generate(cond, seconds=0.5, guidance=3.0, seed=0,
                                                 steps=1))
    t5, mask, gpt2 = _pipeline_encoding(dec, "Low quality.")
    torch.testing.assert_close(got["encoder_hidden_states_1"][:1], t5)
    torch.testing.assert_close(got["encoder_hidden_states"][:1], gpt2)
    assert torch.equal(got["encoder_attention_mask_1"][:1].long(), mask.long())
    # discriminating: another negative prompt (e.g. "") encodes differently
    empty, _, _ = _pipeline_encoding(dec, "")
    assert not torch.allclose(empty, t5)


def test_music_always_states_follow_the_reply_text(tiny_model):
    """`--music always` runs [AUD] after the reply text: two texts give two different
    states, each equal to a by-hand forward of prompt + text + [AUD0..7]."""
    session = ChatSession(tiny_model)
    first = session.send("Describe this.", settings=GenerationSettings(
        max_new_tokens=6, temperature=0.0, seed=0))
    assert first.text and not first.has_audio_tokens
    other = dataclasses.replace(first, text="Drums and a loud guitar.", audio_hidden=None)
    settings = MusicSettings(music="always", seconds=0.2, seed=0)
    for result in (first, other):
        session.render(result, settings)
    assert not torch.allclose(first.audio_hidden, other.audio_hidden)
    tok, llm = tiny_model.tokenizer, tiny_model.llm
    norm = llm.model.get_base_model().model.norm
    # by hand: the prompt of a first turn, and the prompts of a message without media
    prompt_ids, _ = build_prompt_ids(tok, tiny_model.config.prompt_template, [],
                                     "Describe this.", 10_000)
    with torch.no_grad():
        prompts = tiny_model.media_prompts(1)
    for result in (first, other):
        ids = [*prompt_ids, *tok(result.text, add_special_tokens=False).input_ids,
               *llm.audio_token_ids]
        with torch.no_grad():
            out = llm(torch.tensor([ids]), injection=Injection(prompts),
                      output_hidden_states=True, use_cache=False)
        # HF's last hidden state is after the final norm; ours is before it
        predicting = out.hidden_states[-1][0, len(ids) - 9:len(ids) - 1]
        torch.testing.assert_close(norm(result.audio_hidden), predicting, atol=1e-5, rtol=1e-5)


def test_training_audio_is_decoded_at_the_music_encoder_rate(tiny_model, tmp_path):
    """A training item's audio is `load_audio(path, sr=<music encoder rate>)`."""
    rate = tiny_model.encoders["audio"].sample_rate
    file_rate = 44100
    assert rate not in (file_rate, tiny_model.decoder.sample_rate)
    t = np.arange(file_rate // 2) / file_rate
    path = tmp_path / "tone.wav"
    sf.write(path, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), file_rate)
    ds = TrainDataset([Example("", "A steady tone.", audio=path)], tiny_model, max_len=256)
    item = ds[0]
    assert item["audio_feat"] is None
    assert len(item["audio"]) == rate // 2  # half a second at the encoder's rate
    np.testing.assert_array_equal(item["audio"], load_audio(path, sr=rate))


@pytest.mark.parametrize("steps", [2, 5])
def test_requested_steps_reach_audioldm2(tiny_audioldm2_model, steps):
    """`steps` (--steps) is the number of denoising steps the UNet runs (a mutation audit
    found that dropping it went unnoticed: AudioLDM2 would silently run 100)."""
    model = tiny_audioldm2_model
    hidden = torch.randn(8, model.config.llm_dim)
    calls = []
    handle = model.decoder.pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        render_music(model, hidden, "", MusicSettings(seconds=0.5, steps=steps, seed=0))
    finally:
        handle.remove()
    assert len(calls) == steps


def test_the_music_loss_of_a_batch_sums_every_music_row(tiny_model):
    """Two music rows in one batch (captions of 5 and 9 positions): the summed MSE and its
    count are the sums of each row's own, so the trainer's global mean weighs every row."""
    model, tok = tiny_model, tiny_model.tokenizer
    examples = [Example("Compose a calm piece.", "Here is a calm piece.",
                        music_caption="A calm piano arpeggio."),
                Example("Compose loud rock.", "Loud rock with drums.",
                        music_caption="Loud rock.")]
    rows = [tokenize_example(ex, tok, model.config.prompt_template, model.llm.audio_token_ids,
                             256) for ex in examples]
    batch = collate([{"input_ids": r.input_ids, "labels": r.labels} for r in rows],
                    pad_id=tok.pad_token_id or 0)
    shape = (2, *model.decoder.cond_shape)
    target = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[0, :5], mask[1, :9] = True, True

    def loss(which):
        with torch.no_grad():
            return model(batch["input_ids"], batch["attention_mask"], batch["labels"], {},
                         music_rows=torch.tensor(which),
                         music_positions=torch.tensor([rows[i].audio_positions
                                                       for i in which]),
                         music_target=target[which], music_mask=mask[which])

    both, first, second = loss([0, 1]), loss([0]), loss([1])
    torch.testing.assert_close(both["mse_sum"], first["mse_sum"] + second["mse_sum"],
                               rtol=1e-5, atol=0)
    assert both["mse_count"] == first["mse_count"] + second["mse_count"] == mask.sum()
    assert second["mse_sum"] > 0.1 * both["mse_sum"]  # the second row weighs in
