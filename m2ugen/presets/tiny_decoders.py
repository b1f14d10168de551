"""Tiny offline MusicGen and AudioLDM2: the real classes, tiny configs, random weights.

Each builder writes a directory that loads exactly like the hub weights do
(`MusicgenForConditionalGeneration.from_pretrained` + `AutoProcessor.from_pretrained`;
`AudioLDM2Pipeline.from_pretrained`). Tokenizers are trained on the spot on a caption
corpus. Everything is deterministic for a seed (same seed → byte-identical weights).

Shapes are scaled-down copies of the real ones (ORIGINAL_M2UGEN.md §1/§4) with all widths
distinct, so a shape mix-up fails loudly instead of broadcasting:

| part | real | tiny |
|---|---|---|
| MusicGen T5 states | 768 | 48 (decoder 32 → `enc_to_dec_proj` exists) |
| MusicGen codebooks K / frame rate | 4 / 50 Hz @ 32 kHz | 4 / 50 Hz @ 32 kHz (hop 640) |
| AudioLDM2 prompt_embeds (T5) | 1024 | 40 |
| AudioLDM2 generated_prompt_embeds (GPT-2) | 8 × 768 | 8 × 24 |
| AudioLDM2 mel bins / vocoder hop / rate | 64 / 160 / 16 kHz | 64 / 160 / 16 kHz |
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

MUSICGEN_CODEBOOKS = 4
MUSICGEN_CODEBOOK_SIZE = 64
MUSICGEN_TEXT_DIM = 48
MUSICGEN_HIDDEN = 32
ENCODEC_CODEWORD_STD = 10.0  # decoded audio: std ≈ 0.06, code-dependent
MUSICGEN_WINDOW_SECONDS = 1.0  # real MusicGen: 30 s; short, so long pieces cross many seams
# MusicGen-Melody: facebook/musicgen-melody's chroma settings; a short prefix (real: 235
# frames = 30 s at hop 4096), as the tiny window is short
MELODY_CHROMA = {"sampling_rate": 32000, "n_fft": 16384, "hop_length": 4096, "num_chroma": 12}
MELODY_CHROMA_LENGTH = 16
MUSICGEN_INIT = 0.2  # std of the decoder / enc_to_dec init: large enough that captions matter
AUDIOLDM2_T5_DIM = 40
AUDIOLDM2_GPT2_DIM = 24
AUDIOLDM2_CLAP_DIM = 16
AUDIOLDM2_MEL_BINS = 64
AUDIOLDM2_MAX_NEW_TOKENS = 8
T5_MAX_LENGTH = 128
CLAP_MAX_LENGTH = 77


def train_sentencepiece(corpus: list[str], model_prefix: Path, vocab_size: int,
                        **kw: Any) -> Path:
    """Train a sentencepiece model on `corpus`; return the path of `<model_prefix>.model`.

    Deterministic: one thread and a fixed random-generator seed (`seed` in `kw`, default 0);
    the pieces and scores repeat exactly, but the file also records `model_prefix`, so two
    models written to different paths differ in those bytes. `hard_vocab_limit=False` lets a
    small corpus yield fewer pieces, but `vocab_size` must still cover every character plus
    the special and (with `byte_fallback`) 256 byte pieces.
    Extra keyword arguments are sentencepiece trainer flags (they override the defaults).
    """
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(int(kw.pop("seed", 0)))
    flags: dict[str, Any] = {
        "model_type": "unigram", "character_coverage": 1.0, "num_threads": 1,
        "minloglevel": 2, "hard_vocab_limit": False, "byte_fallback": True,
    }
    flags.update(kw)
    # an iterator, not a temp file: the model's trainer spec records the input file's path
    lines = (line.replace("\n", " ") for line in corpus)
    spm.SentencePieceTrainer.train(sentence_iterator=lines, model_prefix=str(model_prefix),
                                   vocab_size=vocab_size, **flags)
    return model_prefix.with_suffix(".model")


def _t5_tokenizer(corpus: list[str], seed: int, vocab_size: int = 400) -> Any:
    """A T5 tokenizer (pad 0, eos 1, unk 2, 100 sentinels) from a freshly trained unigram model.

    Note: transformers 5's `T5Tokenizer` rebuilds its backend as `Unigram(byte_fallback=False)`
    on every load, so although the sentencepiece model has byte pieces, characters never seen
    in the corpus map to `<unk>` after `from_pretrained` — as with the real T5 tokenizer.
    """
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        train_sentencepiece(corpus, Path(tmp) / "spiece", vocab_size, seed=seed, pad_id=0,
                            eos_id=1, unk_id=2, bos_id=-1)
        # loading a folder that holds only spiece.model converts it (this needs protobuf)
        return T5Tokenizer.from_pretrained(tmp, model_max_length=T5_MAX_LENGTH)


def _roberta_tokenizer(corpus: list[str], vocab_size: int = 400) -> Any:
    """CLAP's tokenizer: a byte-level BPE trained on `corpus`, wrapped as `RobertaTokenizer`.

    `RobertaTokenizer(vocab_file=..., merges_file=...)` silently ignores the files, so the
    BPE is saved to a folder and loaded with `from_pretrained`.
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        tok = RobertaTokenizer.from_pretrained(tmp, model_max_length=CLAP_MAX_LENGTH)
    if [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id] != [0, 1, 2]:
        raise RuntimeError("the trained BPE lost Roberta's special-token ids")
    return tok


def _tune_encodec(audio_encoder: torch.nn.Module, generator: torch.Generator) -> None:
    """Make a random EnCodec decode codes into zero-mean audio that depends on the codes.

    A fresh EnCodec has all-zero codebooks (buffers), so every code decodes to the same
    waveform: fill them with random codewords (std `ENCODEC_CODEWORD_STD`). Its random conv
    biases add a DC offset of about -0.6 that swamps the signal: zero the decoder's biases.
    """
    with torch.no_grad():
        for layer in audio_encoder.quantizer.layers:
            book = layer.codebook
            embed = ENCODEC_CODEWORD_STD * torch.randn(book.embed.shape, generator=generator)
            book.embed.copy_(embed)
            book.embed_avg.copy_(embed)
            book.cluster_size.fill_(1.0)
            if hasattr(book, "inited"):
                book.inited.fill_(1.0)
        for module in audio_encoder.decoder.modules():
            if isinstance(module, torch.nn.Conv1d | torch.nn.ConvTranspose1d) and \
                    module.bias is not None:
                module.bias.zero_()


def build_tiny_musicgen(out_dir: Path, corpus: list[str], seed: int = 0,
                        channels: int = 1, melody: bool = False) -> None:
    """Write a tiny random `MusicgenForConditionalGeneration` + `MusicgenProcessor` to `out_dir`.

    T5 encoder (width 48) → `enc_to_dec_proj` → decoder (width 32, K=4 codebooks of 64
    codes, pad = bos = decoder start = 64) → EnCodec at 32 kHz with hop 640 (50 frames/s).
    The codebooks are filled with random codewords so the audio depends on the codes, and
    the decoder is initialised at std 0.2 so changing the caption changes the sampled codes.
    `channels=2` is stereo as facebook/musicgen-stereo-* are: the decoder has
    `audio_channels=2` and 2K codebooks (left and right interleaved), EnCodec stays mono.
    `melody=True` is MusicGen-Melody (`MusicgenMelodyForConditionalGeneration`: a prefix of
    `MELODY_CHROMA_LENGTH` chroma states before the text states, no cross-attention) with
    the tokenizer and a chroma feature-extractor config (facebook/musicgen-melody's
    settings) instead of a processor, whose class needs torchaudio.
    """
    from transformers import (
        EncodecConfig,
        EncodecFeatureExtractor,
        GenerationConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForConditionalGeneration,
        MusicgenProcessor,
        T5Config,
    )

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = _t5_tokenizer(corpus, seed)
    text_cfg = T5Config(vocab_size=len(tokenizer), d_model=MUSICGEN_TEXT_DIM, d_kv=24, d_ff=96,
                        num_layers=2, num_heads=2, feed_forward_proj="relu", pad_token_id=0,
                        eos_token_id=1, decoder_start_token_id=0)
    bits_per_codebook = 6 * 50 / 1000  # log2(64) bits × 50 frames/s, in kbps
    audio_cfg = EncodecConfig(sampling_rate=32000, audio_channels=1, normalize=False,
                              upsampling_ratios=[8, 5, 4, 4], hidden_size=16, num_filters=4,
                              num_lstm_layers=1, codebook_size=MUSICGEN_CODEBOOK_SIZE,
                              target_bandwidths=[round(bits_per_codebook * MUSICGEN_CODEBOOKS,
                                                       3)],
                              use_causal_conv=False, use_conv_shortcut=False)
    if audio_cfg.num_quantizers != MUSICGEN_CODEBOOKS or audio_cfg.frame_rate != 50:
        raise RuntimeError(f"EnCodec config gives {audio_cfg.num_quantizers} codebooks at "
                           f"{audio_cfg.frame_rate} Hz")
    decoder_cls = MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig
    decoder_cfg = decoder_cls(
        vocab_size=MUSICGEN_CODEBOOK_SIZE, max_position_embeddings=2048, num_hidden_layers=2,
        ffn_dim=64, num_attention_heads=2, hidden_size=MUSICGEN_HIDDEN,
        num_codebooks=MUSICGEN_CODEBOOKS * channels, audio_channels=channels,
        pad_token_id=MUSICGEN_CODEBOOK_SIZE, bos_token_id=MUSICGEN_CODEBOOK_SIZE,
        initializer_factor=MUSICGEN_INIT)
    parts = {"text_encoder": text_cfg, "audio_encoder": audio_cfg, "decoder": decoder_cfg,
             "initializer_factor": MUSICGEN_INIT}
    if melody:
        config = MusicgenMelodyConfig(**parts, num_chroma=12,
                                      chroma_length=MELODY_CHROMA_LENGTH)
    else:
        config = MusicgenConfig(**parts)
    config.window_seconds = MUSICGEN_WINDOW_SECONDS  # read by MusicGenDecoder.window_seconds
    model_cls = MusicgenMelodyForConditionalGeneration if melody else \
        MusicgenForConditionalGeneration
    model = model_cls(config).eval()
    _tune_encodec(model.audio_encoder, torch.Generator().manual_seed(seed + 1))
    start = MUSICGEN_CODEBOOK_SIZE
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, pad_token_id=start, bos_token_id=start, do_sample=True,
        guidance_scale=3.0, max_length=1600)
    model.save_pretrained(out_dir)
    if melody:
        tokenizer.save_pretrained(out_dir)
        (out_dir / "preprocessor_config.json").write_text(json.dumps(
            {"feature_extractor_type": "MusicgenMelodyFeatureExtractor", **MELODY_CHROMA,
             "feature_size": 12, "chunk_length": 30, "padding_value": 0.0,
             "return_attention_mask": False, "processor_class": "MusicgenMelodyProcessor"},
            indent=2) + "\n")
        return
    features = EncodecFeatureExtractor(feature_size=1, sampling_rate=32000, padding_value=0.0)
    MusicgenProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out_dir)


def _clap(vocab_size: int) -> Any:
    """A tiny CLAP (Roberta text tower + HTSAT audio tower), projection width 16."""
    from transformers import ClapAudioConfig, ClapConfig, ClapModel, ClapTextConfig

    text = ClapTextConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=CLAP_MAX_LENGTH + 3, type_vocab_size=1,
                          pad_token_id=1, bos_token_id=0, eos_token_id=2,
                          projection_dim=AUDIOLDM2_CLAP_DIM)
    audio = ClapAudioConfig(spec_size=256, window_size=4, num_mel_bins=64, patch_size=4,
                            patch_stride=4, patch_embeds_hidden_size=16, hidden_size=32,
                            depths=[1, 1], num_attention_heads=[2, 2], num_hidden_layers=2,
                            projection_dim=AUDIOLDM2_CLAP_DIM)
    return ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(),
                                projection_dim=AUDIOLDM2_CLAP_DIM))


def build_tiny_audioldm2(out_dir: Path, corpus: list[str], seed: int = 0) -> None:
    """Write a tiny random `AudioLDM2Pipeline` to `out_dir` (diffusers folder layout).

    CLAP (projection 16) + T5 encoder (width 40) → `AudioLDM2ProjectionModel` → GPT-2
    (width 24, 8 generated states) → UNet cross-attending to GPT-2 (24) and T5 (40) states
    → VAE (8 latent channels, ×4 down-sampling) → 64-bin mel → HiFi-GAN (hop 160, 16 kHz),
    with a DDIM scheduler. `audio_length_in_s=s` yields exactly `int(s × 16000)` samples.
    """
    from diffusers import (
        AudioLDM2Pipeline,
        AudioLDM2ProjectionModel,
        AudioLDM2UNet2DConditionModel,
        AutoencoderKL,
        DDIMScheduler,
    )
    from transformers import (
        ClapFeatureExtractor,
        GPT2Config,
        GPT2LMHeadModel,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
        T5Config,
        T5EncoderModel,
    )

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = _roberta_tokenizer(corpus)
    text_encoder = _clap(len(tokenizer))
    tokenizer_2 = _t5_tokenizer(corpus, seed)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=AUDIOLDM2_T5_DIM, d_kv=20, d_ff=80, num_layers=2,
        num_heads=2, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))
    language_model = GPT2LMHeadModel(GPT2Config(
        vocab_size=64, n_positions=256, n_embd=AUDIOLDM2_GPT2_DIM, n_layer=2, n_head=2,
        bos_token_id=63, eos_token_id=63))  # never sampled: the pipeline feeds embeddings
    language_model.config.max_new_tokens = AUDIOLDM2_MAX_NEW_TOKENS
    projection_model = AudioLDM2ProjectionModel(
        text_encoder_dim=AUDIOLDM2_CLAP_DIM, text_encoder_1_dim=AUDIOLDM2_T5_DIM,
        langauge_model_dim=AUDIOLDM2_GPT2_DIM)  # sic: diffusers spells it "langauge"
    cross = [None, AUDIOLDM2_GPT2_DIM, AUDIOLDM2_T5_DIM]  # self, GPT-2 states, T5 states
    unet = AudioLDM2UNet2DConditionModel(
        sample_size=256, in_channels=8, out_channels=8, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
        cross_attention_dim=(cross, cross), attention_head_dim=4)
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16),
        layers_per_block=1, latent_channels=8, norm_num_groups=4,
        sample_size=AUDIOLDM2_MEL_BINS)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=AUDIOLDM2_MEL_BINS, sampling_rate=16000, upsample_initial_channel=16,
        upsample_rates=[5, 4, 4, 2], upsample_kernel_sizes=[11, 8, 8, 4],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], normalize_before=False,
        initializer_range=0.2))  # the default 0.01 gives audio of ~1e-10: silence
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015,
                              beta_end=0.0195, clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1)
    # unfused CLAP takes one mel channel: "fusion" truncation would stack 4 (a shape error)
    features = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    pipe = AudioLDM2Pipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        projection_model=projection_model, language_model=language_model, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, feature_extractor=features, unet=unet,
        scheduler=scheduler, vocoder=vocoder)
    pipe.save_pretrained(out_dir)
    # GPT-2's config keeps max_new_tokens, but check it survived serialisation
    saved = json.loads((out_dir / "language_model" / "config.json").read_text())
    if saved.get("max_new_tokens") != AUDIOLDM2_MAX_NEW_TOKENS:
        raise RuntimeError("language_model config lost max_new_tokens")
