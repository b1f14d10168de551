"""Decoders: stage-2 targets, classifier-free guidance, lengths, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2ugen.modules.decoders import PAD_FRACTION, TARGET_SCALE, conditioning_lengths


def _cond(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, w = model.decoder.cond_shape
    return torch.randn(1, n, w, generator=g)


def test_target_has_the_projector_output_shape(any_tiny_model):
    m = any_tiny_model
    captions = ["A calm piano piece.", "Energetic rock with loud drums and guitar, 140 BPM."]
    target, mask = m.decoder.target(captions)
    hidden = torch.randn(2, 8, m.config.llm_dim)
    assert target.shape == m.project(hidden).shape == (2, *m.decoder.cond_shape)
    assert mask.shape == target.shape and mask.dtype == torch.bool
    assert mask.any() and not mask.all()  # padded caption positions are masked
    assert torch.isfinite(target).all()
    # the longer caption has more unmasked positions
    assert mask[1].sum() > mask[0].sum()


def test_a_caption_longer_than_the_conditioning_is_cut_to_it(any_tiny_model):
    """A caption of many more tokens than the projector makes (128 T5 states) is truncated,
    not a target of another shape, whatever the decoder."""
    m = any_tiny_model
    long = " ".join(["a slow dreamy piano melody with soft strings"] * 60)  # ~500 tokens
    target, mask = m.decoder.target([long, "short"])
    assert target.shape == mask.shape == (2, *m.decoder.cond_shape)
    assert mask[0].all() or m.decoder.kind == "audioldm2"  # MusicGen: every position used


def test_musicgen_target_is_ten_times_text_encoder_states(tiny_model):
    dec = tiny_model.decoder
    target, mask = dec.target(["A sad violin."])
    enc = dec.processor.tokenizer(["A sad violin."], padding="max_length", max_length=128,
                                  return_tensors="pt")
    with torch.no_grad():
        states = dec.model.text_encoder(**enc).last_hidden_state
    torch.testing.assert_close(target, TARGET_SCALE * states)
    assert mask[0, :, 0].tolist() == enc["attention_mask"][0].bool().tolist()


def test_musicgen_cfg_unconditional_half_is_zeros(tiny_model):
    dec = tiny_model.decoder
    seen = []
    handle = dec.model.enc_to_dec_proj.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        dec.generate(_cond(tiny_model), seconds=0.2, guidance=3.0, seed=0)
    finally:
        handle.remove()
    states = seen[0]  # the text-encoder states MusicGen receives: (2B, N, W)
    assert states.shape == (2, *dec.cond_shape)
    assert states[0].abs().sum() > 0
    assert torch.count_nonzero(states[1]) == 0


def test_musicgen_embedding_path_reproduces_the_text_path(tiny_model):
    """Our external CFG equals what generate() does for a text prompt, same seed."""
    dec = tiny_model.decoder
    caption = "A happy jazz tune with saxophone."
    target, _ = dec.target([caption])
    enc = dec.processor.tokenizer([caption], return_tensors="pt")
    n_real = enc["input_ids"].shape[1]
    via_text = dec.generate_from_text([caption], seconds=0.5, guidance=3.0, seed=5)
    # conditioning = the unpadded states; generate() masks nothing else
    via_embedding = dec.generate(target[:, :n_real] / TARGET_SCALE, seconds=0.5, guidance=3.0,
                                 seed=5)
    np.testing.assert_allclose(via_embedding, via_text, atol=1e-4)


def test_a_decoder_hears_zero_padded_states_as_it_hears_the_caption(any_tiny_model):
    """A trained projector gives the caption's states then zeros (model.py's target). The
    decoder hears exactly the caption's positions: the same audio as its text path with
    the same seed (heard as 128 positions under an all-ones mask, the zeros took attention
    from the caption). MusicGen: two captions of different lengths in one batch, with
    guidance. AudioLDM2: each caption alone, without guidance (its text path encodes the
    negative prompt padded to the prompt's length, which GPT-2 then hears)."""
    dec = any_tiny_model.decoder
    captions = ["A sad violin.", "Energetic rock with loud drums and a guitar solo, 140 BPM."]
    target, mask = dec.target(captions)
    states = target * mask / TARGET_SCALE
    real = dec.text_states(mask)[:, :, 0].sum(dim=1)
    assert real[0] < real[1] < dec.text_states(mask).shape[1]
    assert dec.lengths(states).tolist() == real.tolist()
    kw = {"seconds": 0.3, "seed": 4, "steps": 3}
    if dec.kind == "musicgen":
        np.testing.assert_allclose(dec.generate(states, guidance=3.0, **kw),
                                   dec.generate_from_text(captions, guidance=3.0, **kw),
                                   atol=1e-4)
        return
    for i, caption in enumerate(captions):
        np.testing.assert_allclose(dec.generate(states[i:i + 1], guidance=1.0, **kw),
                                   dec.generate_from_text([caption], guidance=1.0, **kw),
                                   atol=1e-4)


def test_audioldm2_targets_do_not_depend_on_the_batch(tiny_audioldm2_model):
    """A caption's target is the same alone or batched with a longer one: the pipeline's
    GPT-2 hears the T5 padding, so encoding captions together changed the short one's."""
    dec = tiny_audioldm2_model.decoder
    short, long = "A sad violin.", "Energetic rock with loud drums and a guitar solo, 140 BPM."
    alone, _ = dec.target([short])
    batched, _ = dec.target([short, long])
    torch.testing.assert_close(batched[:1], alone)


def test_conditioning_lengths_read_the_zeros_past_the_caption():
    """The caption is the prefix up to the last state of a norm ≥ PAD_FRACTION × the row's
    largest: a quiet state inside it does not cut it; states that never learned the zeros
    (an untrained or published projector) are heard whole; a row of zeros keeps one."""
    g = torch.Generator().manual_seed(0)
    states = torch.randn(4, 16, 8, generator=g)
    states[0, 5:] = 0.01 * states[0, 5:]  # a caption of 5, padding ~0
    states[1, 2] *= PAD_FRACTION / 4  # a quiet state inside a caption of 9
    states[1, 9:] = 0
    states[3] = 0
    assert conditioning_lengths(states).tolist() == [5, 9, 16, 1]


def test_audioldm2_negative_prompt_matches_positive_shapes(tiny_audioldm2_model):
    dec = tiny_audioldm2_model.decoder
    cond = _cond(tiny_audioldm2_model)
    embeds, generated = dec._split(cond)
    neg, neg_mask, neg_generated = dec._encode(["Low quality."])
    assert neg.shape == embeds.shape and neg_generated.shape == generated.shape
    assert neg_mask.shape == embeds.shape[:2] and neg_mask.sum() < neg_mask.numel()
    seen = []
    handle = dec.pipe.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs.get("encoder_hidden_states")),
        with_kwargs=True)
    try:
        dec.generate(cond, seconds=1.0, guidance=3.0, seed=0, steps=2)
    finally:
        handle.remove()
    assert seen and seen[0].shape[0] == 2  # negative + positive in one UNet batch


def test_lengths_rates_and_determinism(any_tiny_model):
    dec = any_tiny_model.decoder
    cond = _cond(any_tiny_model)
    a = dec.generate(cond, seconds=1.5, guidance=3.0, seed=1, steps=3)
    b = dec.generate(cond, seconds=1.5, guidance=3.0, seed=1, steps=3)
    assert a.shape == (1, int(1.5 * dec.sample_rate)) and a.dtype == np.float32
    assert np.isfinite(a).all() and np.abs(a).max() > 1e-4
    np.testing.assert_array_equal(a, b)
    c = dec.generate(_cond(any_tiny_model, seed=9), seconds=1.5, guidance=3.0, seed=1, steps=3)
    assert np.abs(a - c).max() > 0.01 * np.abs(a).max()  # conditioning changes the audio


def test_musicgen_generates_every_frame_it_returns(tiny_model):
    """The delay pattern costs K − 1 decoding steps: with one step too few the last frame
    would be padding (exact silence) behind music of the right length."""
    dec = tiny_model.decoder
    hop = int(round(dec.sample_rate / dec.frame_rate))
    for seconds in (0.2, 0.5):
        wave = dec.generate(_cond(tiny_model), seconds=seconds, guidance=3.0, seed=2)[0]
        assert len(wave) == int(seconds * dec.sample_rate)
        assert np.abs(wave[-hop:]).max() > 0  # the last frame was generated, not padded


class _Stop(Exception):
    """Raised from a UNet hook once the timesteps of interest are seen."""


def _first_timesteps(dec, n: int, **kwargs) -> list[int]:
    """The timesteps the UNet is called at, first `n` (the run is stopped there)."""
    seen: list[int] = []

    def hook(module, args, kwargs_):
        t = args[1] if len(args) > 1 else kwargs_["timestep"]
        seen.append(int(torch.as_tensor(t).flatten()[0]))
        if len(seen) == n:
            raise _Stop

    handle = dec.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        dec.generate(_cond_for(dec), seconds=0.3, guidance=3.0, seed=0, **kwargs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen


def _cond_for(dec, seed=0):
    n, w = dec.cond_shape
    return torch.randn(1, n, w, generator=torch.Generator().manual_seed(seed))


def _schedule(dec, cls, steps, **kw):
    sched = cls.from_config(dec.pipe.scheduler.config, **kw)
    sched.set_timesteps(steps)
    return [int(t) for t in sched.timesteps]


def _pipeline_run(dec, scheduler, text, steps, seed=0):
    """The pipeline's own call with `scheduler`, as a diffusers user writes it."""
    from diffusers import AudioLDM2Pipeline

    pipe = AudioLDM2Pipeline(**{**dec.pipe.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=[text], negative_prompt=["Low quality."], num_inference_steps=steps,
               guidance_scale=3.0, generator=torch.Generator().manual_seed(seed),
               audio_length_in_s=0.3, num_waveforms_per_prompt=1, output_type="np")
    return dec.fit_length(np.asarray(out.audios).reshape(1, -1), 0.3)


def test_audioldm2_samples_with_dpm_solver_pp_at_20_steps_by_default(tiny_audioldm2_model):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    dec = tiny_audioldm2_model.decoder
    dpm20 = _schedule(dec, DPMSolverMultistepScheduler, 20, algorithm_type="dpmsolver++")
    assert _first_timesteps(dec, 3) == dpm20[:3]
    assert _first_timesteps(dec, 3, steps=7) == _schedule(
        dec, DPMSolverMultistepScheduler, 7, algorithm_type="dpmsolver++")[:3]
    # the sampler used is DPM-Solver++ itself: the same audio as the pipeline run with one
    # built here, and not DDIM's at the same steps
    text = "A calm piano piece."
    got = dec.generate_from_text([text], 0.3, 3.0, 0, steps=3)
    dpm = DPMSolverMultistepScheduler.from_config(dec.pipe.scheduler.config,
                                                  algorithm_type="dpmsolver++")
    np.testing.assert_array_equal(got, _pipeline_run(dec, dpm, text, 3))
    ddim = _pipeline_run(dec, DDIMScheduler.from_config(dec.pipe.scheduler.config), text, 3)
    assert np.abs(got - ddim).max() > 1e-3 * np.abs(ddim).max()
    assert got.shape[0] == 1  # one waveform per prompt


def test_audioldm2_ddim_is_the_published_sampler(tiny_audioldm2_model):
    """`scheduler="ddim"` is the checkpoint's own DDIM at the published 200 steps."""
    from diffusers import DDIMScheduler

    dec = tiny_audioldm2_model.decoder
    assert type(dec.pipe.scheduler) is DDIMScheduler  # the checkpoint's, left as loaded
    assert _first_timesteps(dec, 3, scheduler="ddim") == _schedule(dec, DDIMScheduler, 200)[:3]
    pipe, steps = dec.sampler("ddim")
    assert type(pipe.scheduler) is DDIMScheduler and steps == 200
    assert dict(pipe.scheduler.config) == dict(dec.pipe.scheduler.config)
    assert pipe.scheduler is not dec.pipe.scheduler  # each call has its own state
    text = "A calm piano piece."
    got = dec.generate_from_text([text], 0.3, 3.0, 0, steps=3, scheduler="ddim")
    np.testing.assert_array_equal(got, _pipeline_run(dec, dec.pipe.scheduler, text, 3))


def test_an_unknown_scheduler_is_one_line(tiny_audioldm2_model):
    import pytest

    from m2ugen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"scheduler 'pndm' is unknown; use one of dpm\+\+, ddim"):
        tiny_audioldm2_model.decoder.make_scheduler("pndm")


def test_musicgen_guidance_is_one_batched_forward_per_step(tiny_model):
    """Classifier-free guidance runs the conditional and unconditional halves in ONE
    decoder forward of batch 2B per step (transformers' MusicGen), not two forwards."""
    dec = tiny_model.decoder
    cond = torch.cat([_cond(tiny_model, 0), _cond(tiny_model, 1)])  # B = 2
    k = dec.num_codebooks  # the decoder takes its codes as (batch × K, length)
    calls = {}
    for guidance, batch in ((3.0, 4), (1.0, 2)):
        batches: list[int] = []

        def hook(module, args, kwargs, batches=batches):
            batches.append(kwargs["input_ids"].shape[0] // k)

        handle = dec.model.decoder.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            dec.generate(cond, seconds=0.2, guidance=guidance, seed=0)
        finally:
            handle.remove()
        assert set(batches) == {batch}
        calls[guidance] = len(batches)
    assert calls[3.0] == calls[1.0] >= dec._max_new_tokens(0.2)  # guidance adds no forward


@pytest.mark.parametrize("kind", ["musicgen", "audioldm2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decoders_render_in_half_precision(kind, dtype, tiny_model, tiny_audioldm2_model):
    from m2ugen.config import resolve_component
    from m2ugen.modules.decoders import load_decoder

    model = tiny_model if kind == "musicgen" else tiny_audioldm2_model
    path = resolve_component(model.config.decoder_path, model.base_dir)
    dec = load_decoder(kind, path, torch.device("cpu"), dtype)
    wave = dec.generate(_cond(model).to(dtype), seconds=0.1, guidance=3.0, seed=0, steps=2)
    assert wave.dtype == np.float32 and wave.shape == (1, int(0.1 * dec.sample_rate))
    assert np.isfinite(wave).all() and np.abs(wave).max() > 1e-4


def test_audioldm2_concurrent_renders_share_no_sampler_state(tiny_audioldm2_model):
    """Two requests at once (the app's --concurrency) with different samplers and steps
    render exactly what each renders alone: no scheduler state is shared between calls."""
    from concurrent.futures import ThreadPoolExecutor

    dec = tiny_audioldm2_model.decoder
    jobs = [("dpm++", 4), ("ddim", 3), ("dpm++", 2), ("ddim", 5)]

    def render(job):
        scheduler, steps = job
        return dec.generate_from_text(["A calm piano piece."], 0.2, 3.0, 1, steps=steps,
                                      scheduler=scheduler)

    alone = [render(j) for j in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(render, jobs))
    # Concurrent threads may split the CPU kernels' reductions differently, so the
    # renders agree to float rounding (seen: 2e-7), not bit for bit. A shared scheduler
    # would run another job's timesteps: an error as large as the gap between two jobs'
    # renders (the smallest gap here is about 4e-4), so the tolerance is 1 % of it.
    gaps = [np.abs(alone[i] - alone[j]).max()
            for i in range(len(alone)) for j in range(i + 1, len(alone))]
    tolerance = 0.01 * float(min(gaps))
    assert tolerance > 0
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=tolerance)


def test_audioldm2_hears_each_rows_own_caption_positions_in_a_batch(tiny_audioldm2_model):
    """Two zero-padded captions of different lengths in one batch: AudioLDM2's UNet masks
    each row past its own caption (not the longest's, nor the first row's)."""
    dec = tiny_audioldm2_model.decoder
    captions = ["Energetic rock with loud drums and a guitar solo, 140 BPM.", "A sad violin."]
    target, mask = dec.target(captions)
    states = target * mask / TARGET_SCALE
    real = dec.text_states(mask)[:, :, 0]  # (2, 128) the captions' positions
    assert real[0].sum() > real[1].sum()
    seen = []
    handle = dec.pipe.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["encoder_attention_mask_1"].clone()),
        with_kwargs=True)
    try:
        dec.generate(states, seconds=0.3, guidance=1.0, seed=0, steps=1)
    finally:
        handle.remove()
    assert torch.equal(seen[0].long(), real.long())


def test_conditioning_lengths_measure_each_row_by_its_own_largest_state():
    """A row is read against its own largest state, not the batch's: a quiet caption batched
    with a loud one keeps its length, and a loud row does not lose its tail to it."""
    g = torch.Generator().manual_seed(1)
    quiet = torch.randn(16, 8, generator=g)
    quiet[11:] = 0  # a caption of 11
    loud = 100 * torch.randn(16, 8, generator=g)
    loud[6:] = 0.01 * loud[6:]  # a caption of 6, then its ~0 padding
    states = torch.stack([quiet, loud])
    assert conditioning_lengths(states).tolist() == [11, 6]
    assert conditioning_lengths(states[:1]).tolist() == [11]


def test_a_state_a_fifth_of_the_largest_is_padding_a_third_is_caption():
    """PAD_FRACTION (a quarter) in use: a projector that learned the zeros only roughly
    (its padding at a fifth of its largest state) is still cut at the caption, while a
    caption whose last state is a third of its largest keeps that state."""
    g = torch.Generator().manual_seed(2)
    states = torch.randn(2, 12, 8, generator=g)
    states = states / states.norm(dim=-1, keepdim=True)  # unit norms
    states[:, 6:] *= 0.2  # row 0: padding at a fifth of the largest
    states[1, 6] *= 0.3 / 0.2  # row 1: its 7th state at a third, then the fifths
    assert conditioning_lengths(states).tolist() == [6, 7]
