"""The tiny MusicGen / AudioLDM2 presets load through the real `from_pretrained` and run."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from m2ugen.presets.tiny_decoders import (
    AUDIOLDM2_GPT2_DIM,
    AUDIOLDM2_T5_DIM,
    MUSICGEN_CODEBOOKS,
    build_tiny_audioldm2,
    build_tiny_musicgen,
    train_sentencepiece,
)

GENRES = ["jazz", "rock", "pop", "blues", "folk", "techno", "ambient", "funk", "metal"]
INSTRUMENTS = ["piano", "guitar", "drums", "bass", "violin", "flute", "synth", "organ"]
MOODS = ["happy", "sad", "calm", "energetic", "dark", "bright", "dreamy", "warm"]
CAPTION_A = "a happy piano tune"
CAPTION_B = "dark metal drums with a heavy bass"


def make_corpus(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        g, i, m = rng.choice(GENRES), rng.choice(INSTRUMENTS), rng.choice(MOODS)
        lines.append(rng.choice([
            f"A {m} {g} song with {i} at {rng.randrange(60, 181)} BPM.",
            f"This {g} piece features {i} and {rng.choice(INSTRUMENTS)}; it feels {m}.",
            f"a {m} {i} tune",
            f"{m.capitalize()} {g} music played on {i} with a heavy bass.",
        ]))
    return lines


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core box, OpenMP threads fighting
    other processes made one 5-step AudioLDM2 call take 5-14 s instead of 0.5 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="module")
def musicgen_dir(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "musicgen"
    build_tiny_musicgen(out, corpus, seed=0)
    return out


@pytest.fixture(scope="module")
def audioldm2_dir(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "audioldm2"
    build_tiny_audioldm2(out, corpus, seed=0)
    return out


@pytest.fixture(scope="module")
def musicgen(musicgen_dir):
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(musicgen_dir).eval()
    return model, AutoProcessor.from_pretrained(musicgen_dir)


@pytest.fixture(scope="module")
def audioldm2(audioldm2_dir):
    from diffusers import AudioLDM2Pipeline

    pipe = AudioLDM2Pipeline.from_pretrained(audioldm2_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tensors(root: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(root.rglob("*.safetensors")):
        out |= {f"{f.relative_to(root)}:{k}": v for k, v in load_file(f).items()}
    return out


def _assert_same_build(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta and ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    for f in itertools.chain(a.rglob("*.json"), a.rglob("*.txt")):
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes(), f


# --------------------------------------------------------------------------- sentencepiece


def test_train_sentencepiece_is_deterministic(tmp_path, corpus):
    a = train_sentencepiece(corpus, tmp_path / "a" / "sp", 400, pad_id=0, eos_id=1, unk_id=2,
                            bos_id=-1)
    b = train_sentencepiece(corpus, tmp_path / "b" / "sp", 400, pad_id=0, eos_id=1, unk_id=2,
                            bos_id=-1)
    import sentencepiece as spm

    sp, sp_b = (spm.SentencePieceProcessor(model_file=str(f)) for f in (a, b))
    assert a.name == "sp.model" and sp.get_piece_size() == sp_b.get_piece_size() > 259

    def pieces(p):
        return [(p.id_to_piece(i), p.get_score(i)) for i in range(p.get_piece_size())]

    assert pieces(sp) == pieces(sp_b)
    assert [sp.pad_id(), sp.eos_id(), sp.unk_id()] == [0, 1, 2]
    assert sp.piece_to_id("<0xC3>") > 2  # byte pieces exist in the model itself


# --------------------------------------------------------------------------- MusicGen


def test_musicgen_config_shapes(musicgen):
    model, _ = musicgen
    k = MUSICGEN_CODEBOOKS
    enc = model.config.audio_encoder
    assert model.text_encoder.config.d_model == 48 != model.decoder.config.hidden_size == 32
    assert model.enc_to_dec_proj.weight.shape == (32, 48)
    assert model.decoder.config.num_codebooks == enc.num_quantizers == k == 4
    assert enc.frame_rate == 50 and enc.sampling_rate / np.prod(enc.upsampling_ratios) == 50
    assert model.decoder.config.vocab_size == enc.codebook_size == 64
    gen = model.generation_config
    assert gen.decoder_start_token_id == gen.pad_token_id == gen.bos_token_id == 64
    assert gen.do_sample and gen.guidance_scale == 3.0 and gen.max_length >= 1500


def test_musicgen_codebooks_are_nonzero(musicgen):
    model, _ = musicgen
    books = [layer.codebook.embed for layer in model.audio_encoder.quantizer.layers]
    assert len(books) == MUSICGEN_CODEBOOKS
    for book in books:
        assert book.abs().min() > 0 and len(torch.unique(book, dim=0)) == book.shape[0]


def test_musicgen_processor_roundtrip(musicgen):
    _, processor = musicgen
    assert type(processor).__name__ == "MusicgenProcessor"
    tok = processor.tokenizer
    assert type(tok).__name__ == "T5Tokenizer" and tok.model_max_length == 128
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert processor.feature_extractor.sampling_rate == 32000
    enc = processor(text=[CAPTION_A, "calm"], padding=True, return_tensors="pt")
    ids = enc["input_ids"][0]
    assert ids[-1] == 1 and tok.unk_token_id not in ids.tolist()
    assert enc["attention_mask"][1].tolist()[-1] == 0  # shorter caption is padded with 0s
    assert tok.decode(ids, skip_special_tokens=True) == CAPTION_A


def _musicgen_audio(musicgen, caption: str, seed: int = 0) -> np.ndarray:
    model, processor = musicgen
    torch.manual_seed(seed)
    inputs = processor(text=[caption], padding=True, return_tensors="pt")
    with torch.no_grad():
        audio = model.generate(**inputs, max_new_tokens=50 + MUSICGEN_CODEBOOKS - 1)
    return audio.numpy()


def test_musicgen_generates_one_second(musicgen):
    audio = _musicgen_audio(musicgen, CAPTION_A)
    assert audio.shape == (1, 1, 50 * 640)  # T = max_new_tokens + 1 - K = 50 frames
    assert np.isfinite(audio).all()
    assert audio.std() > 1e-2 and abs(audio.mean()) < 0.1  # audible, no big DC offset


def test_musicgen_is_seeded_and_conditioned(musicgen):
    a1 = _musicgen_audio(musicgen, CAPTION_A, seed=0)
    a2 = _musicgen_audio(musicgen, CAPTION_A, seed=0)
    b = _musicgen_audio(musicgen, CAPTION_B, seed=0)
    np.testing.assert_array_equal(a1, a2)
    assert np.abs(a1 - b).mean() > 0.1 * a1.std()


def test_musicgen_encodec_encodes_audio(musicgen):
    model, processor = musicgen
    wave = np.sin(2 * np.pi * 220 * np.arange(32000) / 32000).astype(np.float32)
    inputs = processor(audio=wave, sampling_rate=32000, return_tensors="pt")
    with torch.no_grad():
        codes = model.audio_encoder.encode(inputs["input_values"]).audio_codes
    assert codes.shape == (1, 1, MUSICGEN_CODEBOOKS, 50)
    assert 0 <= codes.min() and codes.max() < 64 and len(torch.unique(codes)) > 1


def test_musicgen_build_is_deterministic(tmp_path, musicgen_dir, corpus):
    build_tiny_musicgen(tmp_path / "again", corpus, seed=0)
    _assert_same_build(musicgen_dir, tmp_path / "again")
    build_tiny_musicgen(tmp_path / "seed1", corpus, seed=1)
    with pytest.raises(AssertionError):
        _assert_same_build(musicgen_dir, tmp_path / "seed1")


# --------------------------------------------------------------------------- AudioLDM2


def test_audioldm2_components(audioldm2):
    pipe = audioldm2
    names = {k: type(v).__name__ for k, v in pipe.components.items()}
    assert names["language_model"] == "GPT2LMHeadModel"
    assert names["tokenizer"].startswith("RobertaTokenizer")
    assert names["tokenizer_2"].startswith("T5Tokenizer")
    assert pipe.tokenizer.model_max_length == 77 and pipe.tokenizer_2.model_max_length == 128
    assert pipe.language_model.config.max_new_tokens == 8
    assert pipe.text_encoder_2.config.d_model == AUDIOLDM2_T5_DIM == 40
    assert pipe.language_model.config.n_embd == AUDIOLDM2_GPT2_DIM == 24
    assert pipe.vocoder.config.sampling_rate == 16000
    assert pipe.vocoder.config.model_in_dim == 64  # mel bins
    assert int(np.prod(pipe.vocoder.config.upsample_rates)) == 160  # hop: 100 mel frames/s
    assert pipe.vae_scale_factor == 4


def test_audioldm2_encode_prompt_shapes(audioldm2):
    pipe = audioldm2
    prompts = [CAPTION_A, "calm"]
    with torch.no_grad():
        embeds, mask, generated = pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)
    length = pipe.tokenizer_2(prompts, padding=True, return_tensors="pt").input_ids.shape[1]
    assert embeds.shape == (2, length, AUDIOLDM2_T5_DIM)
    assert mask.shape == (2, length) and mask[1, -1] == 0
    assert generated.shape == (2, 8, AUDIOLDM2_GPT2_DIM)


def test_audioldm2_clap_runs(audioldm2):
    pipe = audioldm2
    ids = pipe.tokenizer([CAPTION_A], padding="max_length", return_tensors="pt")
    assert ids.input_ids.shape == (1, 77) and ids.input_ids[0, 0] == 0  # <s>
    wave = np.random.default_rng(0).standard_normal(48000).astype(np.float32)
    feats = pipe.feature_extractor([wave], sampling_rate=48000, return_tensors="pt")
    with torch.no_grad():
        text = pipe.text_encoder.get_text_features(**ids)
        audio = pipe.text_encoder.get_audio_features(input_features=feats.input_features)
    for out in (text, audio):
        assert getattr(out, "pooler_output", out).shape == (1, 16)


def _audioldm2_audio(pipe, caption: str, seed: int = 0) -> np.ndarray:
    return pipe(caption, num_inference_steps=5, audio_length_in_s=2.0,
                generator=torch.Generator().manual_seed(seed)).audios


def test_audioldm2_generates_two_seconds(audioldm2):
    a1 = _audioldm2_audio(audioldm2, CAPTION_A)
    # the pipeline rounds the mel length up to the VAE factor, vocodes, then cuts the
    # waveform to exactly int(seconds × sampling_rate)
    assert a1.shape == (1, 32000) and a1.dtype == np.float32
    assert np.isfinite(a1).all() and a1.std() > 1e-3
    np.testing.assert_array_equal(a1, _audioldm2_audio(audioldm2, CAPTION_A))
    b = _audioldm2_audio(audioldm2, CAPTION_B)
    assert np.abs(a1 - b).max() > 0.01 * np.abs(a1).max()
    odd = audioldm2(CAPTION_A, num_inference_steps=2, audio_length_in_s=1.03,
                    generator=torch.Generator().manual_seed(0)).audios
    assert odd.shape == (1, int(1.03 * 16000))


def test_audioldm2_build_is_deterministic(tmp_path, audioldm2_dir, corpus):
    build_tiny_audioldm2(tmp_path / "again", corpus, seed=0)
    _assert_same_build(audioldm2_dir, tmp_path / "again")
