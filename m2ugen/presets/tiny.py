"""The tiny offline preset: every component is the real class, tiny and randomly initialised.

It stands for a *trained* model (DESIGN.md §4): its trained tensors are random and
non-zero so every input visibly changes the output and every code path runs, with no
network. Tokenizers are trained on the spot on a generated corpus.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from transformers import (
    HubertConfig,
    HubertModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    ViTConfig,
    ViTImageProcessorPil,
    ViTModel,
    VivitConfig,
    VivitImageProcessor,
    VivitModel,
    Wav2Vec2FeatureExtractor,
)

from m2ugen.checkpoint import TRAINED_NAME, model_directory, save_tensors
from m2ugen.config import M2UGenConfig
from m2ugen.errors import ConfigError
from m2ugen.modules.decoders import cond_shape_from_configs
from m2ugen.presets.tiny_decoders import build_tiny_audioldm2, build_tiny_musicgen

log = logging.getLogger(__name__)

TINY_VERSION = 2  # bump when the tiny recipe changes: stale ckpts/tiny dirs get rebuilt
# MusicGen variants of the tiny preset (`tiny-stereo`, `tiny-melody`): build_tiny_musicgen's
# keyword arguments for each
TINY_VARIANTS: dict[str, dict[str, Any]] = {"mono": {}, "stereo": {"channels": 2},
                                            "melody": {"melody": True}}

_GENRES = ["jazz", "rock", "pop", "classical", "blues", "folk", "techno", "ambient", "funk",
           "reggae", "metal", "hip hop", "country", "soul", "disco", "lofi"]
_INSTRUMENTS = ["piano", "guitar", "drums", "bass", "violin", "cello", "flute", "trumpet",
                "saxophone", "synth", "organ", "harp", "choir", "strings", "clarinet"]
_MOODS = ["happy", "sad", "calm", "energetic", "dark", "bright", "dreamy", "tense", "warm",
          "melancholic", "uplifting", "peaceful", "aggressive", "romantic"]
_KEYS = ["C major", "A minor", "G major", "E minor", "D major", "F major", "B flat major"]
_SCENES = ["a red circle", "a blue square", "a sunset over the sea", "a city at night",
           "a forest", "people dancing", "a rainy street", "mountains", "a green triangle"]


def tiny_corpus(seed: int = 0, n: int = 1500) -> list[str]:
    """Captions, questions and answers about music, plus the chat template's own text."""
    rng = random.Random(seed)
    lines = [
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.",
        "### Instruction:", "### Response:", "Describe this music.", "Describe the music.",
        "Compose music for this picture.", "Generate music for this video.",
        "Make it jazzier and add drums.", "What instruments are playing?",
        "What is the tempo of this song?", "What genre is this?",
    ]
    for _ in range(n):
        g, i, m = rng.choice(_GENRES), rng.choice(_INSTRUMENTS), rng.choice(_MOODS)
        bpm, key, scene = rng.randrange(60, 181), rng.choice(_KEYS), rng.choice(_SCENES)
        lines.append(rng.choice([
            f"A {m} {g} song with {i} at {bpm} BPM in {key}.",
            f"This is a {g} piece featuring {i} and {rng.choice(_INSTRUMENTS)}; it feels {m}.",
            f"Generate a {m} {g} track for {scene}.",
            f"The music is {m}, played on {i}, tempo {bpm} beats per minute.",
            f"Replace the {i} with {rng.choice(_INSTRUMENTS)} and make it more {m}.",
            f"Q: What mood does it have? A: It sounds {m}, like {scene}.",
        ]))
    return lines


def _train_tokenizer(corpus: list[str], out: Path, vocab_size: int = 600) -> Path:
    """A LLaMA-style sentencepiece BPE (unk 0, bos 1, eos 2, byte fallback) as HF tokenizer."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_prefix=str(src / "tokenizer"),
            vocab_size=vocab_size, model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1,
            eos_id=2, pad_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2,
            normalization_rule_name="identity", remove_extra_whitespaces=False)
        tokenizer = LlamaTokenizer.from_pretrained(src)
        tokenizer.save_pretrained(out)
    return out


def _save_encoders(root: Path) -> dict[str, int]:
    """MERT stand-in (HuBERT, 24 kHz), ViT and ViViT, tiny; returns their feature sizes."""
    mert = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                        num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                        do_stable_layer_norm=False, conv_bias=True)
    HubertModel(mert).save_pretrained(root / "mert")
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0,
                             do_normalize=True, return_attention_mask=True
                             ).save_pretrained(root / "mert")
    vit = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64)
    ViTModel(vit, add_pooling_layer=False).save_pretrained(root / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    vivit = VivitConfig(image_size=32, num_frames=8, tubelet_size=[2, 8, 8], hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    VivitModel(vivit, add_pooling_layer=False).save_pretrained(root / "vivit")
    VivitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                        ).save_pretrained(root / "vivit")
    return {"mert_layers": 3, "mert_dim": 32, "vit_tokens": 17, "vit_dim": 32,
            "vivit_tokens": 65, "vivit_dim": 32, "video_frames": 8}


def _save_decoder(root: Path, decoder: str, corpus: list[str], seed: int,
                  variant: str = "mono") -> dict[str, int]:
    if decoder == "musicgen":
        build_tiny_musicgen(root / decoder, corpus, seed, **TINY_VARIANTS[variant])
    else:
        build_tiny_audioldm2(root / decoder, corpus, seed)
    tokens, dim = cond_shape_from_configs(
        decoder, lambda sub: json.loads((root / decoder / sub / "config.json").read_text()))
    return {"projector_tokens": tokens, "projector_dim": dim}


def _randomize_trained(model, seed: int) -> None:
    """Non-zero trained tensors at scales where every input visibly moves the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.trained_parameters().items():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(".weight") and "norm" in name.rsplit(".", 2)[-2]:
                p.copy_(1.0 + 0.1 * noise)
            elif name == "llm.gates":
                p.copy_(noise.sign() * (0.5 + noise.abs()))
            elif "trainable_tokens" in name:  # new-token rows at the base rows' scale
                p.copy_(0.02 * noise)
            elif name.startswith("adapters.") and name.endswith(".proj.weight"):
                # large modality vectors: the frozen random Wv/Wo shrink the injected term
                p.copy_(8.0 * noise / p.shape[-1] ** 0.5)
            elif p.dim() >= 2:
                p.copy_(noise / p.shape[-1] ** 0.5)
            else:
                p.copy_(0.5 * noise)


# the projector's conditioning shape in a tiny directory written without a decoder
NO_DECODER_SHAPE = {"projector_tokens": 4, "projector_dim": 16}


def build_tiny(out: str | Path, decoder: str = "musicgen", seed: int = 0,
               force: bool = False, *, model_cls: type, variant: str = "mono",
               with_decoder: bool = True) -> Path:
    """Write the tiny preset's model directory to `out`. Deterministic per seed;
    `variant` (TINY_VARIANTS) "stereo": a stereo MusicGen (`tiny-stereo`), "melody":
    MusicGen-Melody (`tiny-melody`). `with_decoder=False` writes no decoder directory (the
    model then loads only with `decoder=False`; the projector gets a small stand-in
    conditioning shape): for tools that use the LLM and encoders only, e.g. the dataset
    pipelines' tiny captioner.

    `out` may be new, empty or a model directory (only our files in it are replaced); any
    other non-empty directory needs `force` (checkpoint.model_directory).
    """
    if variant not in TINY_VARIANTS or (variant != "mono" and decoder != "musicgen"):
        raise ConfigError(f"tiny variant {variant!r} with decoder {decoder}: the variants are "
                          f"{', '.join(TINY_VARIANTS)}, of MusicGen only")
    out = Path(out)
    start = time.perf_counter()
    torch.manual_seed(seed)
    corpus = tiny_corpus(seed)
    with model_directory(out, force=force) as root:
        tok_dir = _train_tokenizer(corpus, root / "tokenizer")
        vocab = len(LlamaTokenizer.from_pretrained(tok_dir))
        llm_cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=176,
                              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                              max_position_embeddings=2048, rms_norm_eps=1e-5,
                              tie_word_embeddings=False, initializer_range=0.08,
                              bos_token_id=1, eos_token_id=2)
        LlamaForCausalLM(llm_cfg).save_pretrained(root / "llm")
        dims = _save_encoders(root)
        dims |= (_save_decoder(root, decoder, corpus, seed, variant) if with_decoder
                 else NO_DECODER_SHAPE)
        extra = {"tiny_version": TINY_VERSION, "seed": seed}
        if variant != "mono":  # mono directories built before this field stay current
            extra["variant"] = variant
        config = M2UGenConfig(name=f"tiny-{decoder if variant == 'mono' else variant}",
                              llm="llm", tokenizer="tokenizer",
                              mert="mert", vit="vit", vivit="vivit", decoder=decoder,
                              decoder_path=decoder, llm_dim=64, query_layers=1, lora_rank=4,
                              lora_alpha=4, projector_width=64, projector_layers=2,
                              projector_ffn=128, extra=extra, **dims)
        config.save(root)
        model = model_cls.from_pretrained(root, dtype=torch.float32, warn_untrained=False,
                                          decoder=False)  # only its trained tensors are drawn
        _randomize_trained(model, seed)
        save_tensors(root / TRAINED_NAME, model.trained_parameters(),
                     metadata={"format": "m2ugen", "version": str(config.format_version)})
        model.tokenizer.save_pretrained(root / "tokenizer")
    log.info("built tiny preset (%s) in %s in %.1f s", decoder, out,
             time.perf_counter() - start)
    return out


def is_current_tiny(path: Path, variant: str = "mono") -> bool:
    try:
        cfg = json.loads((path / "m2ugen.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    extra = cfg.get("extra", {})
    return extra.get("tiny_version") == TINY_VERSION and \
        extra.get("variant", "mono") == variant and (path / TRAINED_NAME).is_file()


def ensure_tiny(path: Path, decoder: str = "musicgen", seed: int = 0, *,
                model_cls: type, variant: str = "mono") -> Path:
    """Return `path`, building the tiny preset there first if it is missing or stale.

    `model_cls` (M2UGen) assembles the components to draw the trained tensors; it is passed
    in because the model's loader calls this module, which must not import the model back.
    """
    if not is_current_tiny(path, variant):
        if path.exists():
            log.info("%s is an outdated tiny preset; rebuilding", path)
        log.warning("building the tiny preset into %s (first use, offline, ~10 s)", path)
        build_tiny(path, decoder=decoder, seed=seed, model_cls=model_cls, variant=variant)
    return path

