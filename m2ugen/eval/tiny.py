"""Tiny offline embedding models for `m2ugen eval`: the real classes, tiny random weights.

The evaluation's embedding and classifier models (CLAP, EnCodec, AST, MERT, the BERTScore
encoder) are named by hub id in real use (`config.STANDARD`). Offline — tests, CI and
`m2ugen eval … --model tiny` — the same classes are built from small configs with random
weights, saved with `save_pretrained` and loaded back through exactly the code that loads
the hub weights (`embeddings.py`). Their numbers measure nothing about music: they prove
the pipeline runs. Built on first use into `<ckpts>/eval-tiny` (a few seconds).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTForAudioClassification,
    ClapFeatureExtractor,
    ClapProcessor,
    EncodecConfig,
    EncodecFeatureExtractor,
    EncodecModel,
    HubertConfig,
    HubertModel,
    RobertaConfig,
    RobertaModel,
    Wav2Vec2FeatureExtractor,
)

from m2ugen.checkpoint import model_directory
from m2ugen.presets import ckpts_dir
from m2ugen.presets.tiny import tiny_corpus
from m2ugen.presets.tiny_decoders import CLAP_MAX_LENGTH, _clap, _roberta_tokenizer

log = logging.getLogger(__name__)

TINY_EVAL_VERSION = 1  # bump when the recipe changes: stale directories are rebuilt
MANIFEST = "eval-models.json"  # role -> sub-directory; written last (the commit file)
AUDIOSET_LABELS = 527  # AST's AudioSet head
ROLES = ("clap", "encodec", "ast", "mert", "bertscore")


def tiny_eval_dir() -> Path:
    return ckpts_dir() / "eval-tiny"


def _save_clap(out: Path, corpus: list[str]) -> None:
    tokenizer = _roberta_tokenizer(corpus)
    model = _clap(len(tokenizer))
    model.save_pretrained(out)
    # unfused CLAP (one mel channel); audio is cut to its 10 s window before this runs,
    # so "rand_trunc" never draws a random crop
    features = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    ClapProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)


def _save_encodec(out: Path) -> None:
    cfg = EncodecConfig(sampling_rate=24000, audio_channels=1, normalize=False,
                        upsampling_ratios=[8, 5, 4, 2], hidden_size=24, num_filters=4,
                        num_lstm_layers=1, codebook_size=64, target_bandwidths=[1.5],
                        use_causal_conv=True)
    EncodecModel(cfg).save_pretrained(out)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=24000).save_pretrained(out)


def _save_ast(out: Path) -> None:
    labels = {i: f"label_{i}" for i in range(AUDIOSET_LABELS)}
    cfg = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, num_mel_bins=32, max_length=200, patch_size=16,
                    frequency_stride=16, time_stride=16, id2label=labels,
                    label2id={v: k for k, v in labels.items()}, initializer_range=0.5)
    ASTForAudioClassification(cfg).save_pretrained(out)
    ASTFeatureExtractor(num_mel_bins=32, max_length=200, sampling_rate=16000
                        ).save_pretrained(out)


def _save_mert(out: Path) -> None:
    cfg = HubertConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=48, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                       do_stable_layer_norm=False, conv_bias=True)
    HubertModel(cfg).save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0,
                             do_normalize=True, return_attention_mask=True).save_pretrained(out)


def _save_bertscore(out: Path, corpus: list[str]) -> None:
    tokenizer = _roberta_tokenizer(corpus)
    cfg = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=CLAP_MAX_LENGTH + 3, type_vocab_size=1,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    RobertaModel(cfg).save_pretrained(out)  # with its pooler, as the hub checkpoints
    tokenizer.save_pretrained(out)


def build_tiny_eval(out: Path, seed: int = 0) -> Path:
    """Write the tiny embedding models to `out/<role>/` and `out/eval-models.json`."""
    torch.manual_seed(seed)
    corpus = tiny_corpus(seed)
    with model_directory(out, commit=MANIFEST) as root:
        _save_clap(root / "clap", corpus)
        _save_encodec(root / "encodec")
        _save_ast(root / "ast")
        _save_mert(root / "mert")
        _save_bertscore(root / "bertscore", corpus)
        (root / MANIFEST).write_text(json.dumps(
            {"tiny_eval_version": TINY_EVAL_VERSION, "seed": seed,
             "roles": {r: r for r in ROLES}}, indent=2) + "\n", encoding="utf-8")
    return out


def ensure_tiny_eval(path: Path | None = None) -> Path:
    """`path` (default `<ckpts>/eval-tiny`), built first when missing or stale."""
    path = Path(path) if path is not None else tiny_eval_dir()
    try:
        current = json.loads((path / MANIFEST).read_text()).get("tiny_eval_version")
    except (OSError, json.JSONDecodeError):
        current = None
    if current != TINY_EVAL_VERSION:
        log.warning("building the tiny evaluation models into %s (first use, offline)", path)
        build_tiny_eval(path)
    return path
