"""Scoring: generated music or replies against references → every metric, per-item scores
and the time each metric took per item.

`METRICS` states each metric once: its definition (saved with the results), whether higher
is better, and which embedding model it runs on. The computations are in
`audio_metrics.py` and `text_metrics.py`; the models in `embeddings.py`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from m2ugen.errors import ConfigError
from m2ugen.eval import audio_metrics as am
from m2ugen.eval import pitch
from m2ugen.eval import text_metrics as tm
from m2ugen.eval.config import EvalModels
from m2ugen.eval.embeddings import (
    Audio,
    AudioSetClassifier,
    ClapEmbedder,
    EncodecEmbedder,
    MertEmbedder,
)


@dataclass(frozen=True)
class Metric:
    label: str  # the table's column
    higher_is_better: bool
    role: str | None  # the embedding model it runs on (EvalModels field)
    definition: str
    needs: tuple[str, ...] = ()  # references | captions | sources


_FAD = ("Fréchet distance between Gaussians fitted to the {what} of the reference and the "
        "generated clips (torchmetrics FrechetInceptionDistance over these features)")
METRICS: dict[str, Metric] = {
    "fad_clap": Metric("FAD-CLAP", False, "clap", _FAD.format(
        what="CLAP audio embeddings (one per clip, L2-normalised)"), ("references",)),
    "fad_encodec": Metric("FAD-EnCodec", False, "encodec", _FAD.format(
        what="EnCodec encoder frames (before quantisation; every frame a sample)"),
        ("references",)),
    "fad_mert": Metric("FAD-MERT", False, "mert", _FAD.format(
        what="MERT hidden-state frames of one layer (every frame a sample)"), ("references",)),
    "kl": Metric("KL", False, "ast", "mean over items of KL(p_ref ‖ p_gen), p = softmax of "
                 "the AudioSet classifier's logits for the reference clip and its generated "
                 "counterpart (torchmetrics KLDivergence)", ("references",)),
    "inception_score": Metric("IS", True, "ast", "Inception Score of the generated clips: "
                              "exp(E KL(p(y|x) ‖ p(y))) over the AudioSet classifier's softmax, "
                              "mean over up to 10 splits (torchmetrics InceptionScore)"),
    "clap_score": Metric("CLAP", True, "clap", "mean cosine similarity between the CLAP "
                         "embeddings of each reference caption and its generated clip "
                         "(-1..1)", ("captions",)),
    "clap_score_reference": Metric("CLAP (reference)", True, "clap", "the same for the "
                                   "reference clip: what the captions' own music scores",
                                   ("captions", "references")),
    "chroma": Metric("Chroma", True, None, "melody/harmony kept by an edit: mean cosine "
                     "similarity of the source's and the edit's librosa CQT chromagram frames "
                     "at the same times (-1..1)", ("sources",)),
    "chroma_dtw": Metric("Chroma-DTW", True, None, "the same along librosa's DTW alignment "
                         "of the two chromagrams (forgives tempo edits)", ("sources",)),
    "melody_dtw": Metric("Melody-DTW", True, None, "melody/harmony kept by an edit, heard "
                         "by a trained transcriber: basic-pitch's note activations folded to "
                         "pitch classes, source and edit aligned by librosa's DTW, mean cosine "
                         "similarity of aligned frames (0..1)", ("sources",)),
    "note_f1": Metric("Note F1", True, None, "mir_eval note F1 between the notes basic-pitch "
                      "transcribes from the source and from the edit (onsets ±50 ms, pitches "
                      "±50 cents, offsets ignored; 0..1)", ("sources",)),
    "bleu": Metric("BLEU", True, None, "sacrebleu corpus BLEU (13a tokeniser), 0-100; "
                   "per item: sentence BLEU"),
    "bleu_char_published": Metric("BLEU-char (published)", True, None, "NLTK sentence BLEU "
                                  "over raw characters, mean over items, 0-1: how the "
                                  "published script scored (not word BLEU)"),
    "meteor": Metric("METEOR", True, None, "NLTK meteor_score on lower-cased Treebank tokens, "
                     "mean over items, 0-1"),
    "rouge_l_precision": Metric("ROUGE-L P", True, None, "rouge-score ROUGE-L precision "
                                "(Porter stemmer), mean over items"),
    "rouge_l_recall": Metric("ROUGE-L R", True, None, "rouge-score ROUGE-L recall"),
    "rouge_l_f1": Metric("ROUGE-L F1", True, None, "rouge-score ROUGE-L F-measure"),
    "bertscore_precision": Metric("BERTScore P", True, "bertscore", "torchmetrics BERTScore "
                                  "precision (no idf, no baseline rescaling), mean over items"),
    "bertscore_recall": Metric("BERTScore R", True, "bertscore", "torchmetrics BERTScore recall"),
    "bertscore_f1": Metric("BERTScore F1", True, "bertscore", "torchmetrics BERTScore F1"),
}
MUSIC_METRICS = ("fad_clap", "fad_encodec", "fad_mert", "kl", "inception_score", "clap_score",
                 "clap_score_reference", "chroma", "chroma_dtw", "melody_dtw", "note_f1")
PITCH_METRICS = ("melody_dtw", "note_f1")  # basic-pitch's trained model (eval/pitch.py)
TEXT_METRICS = ("bleu", "bleu_char_published", "meteor", "rouge_l_precision",
                "rouge_l_recall", "rouge_l_f1", "bertscore_precision", "bertscore_recall",
                "bertscore_f1")


def choose_metrics(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The requested metrics (default: all `available`), checked."""
    if not requested:
        return list(available)
    unknown = [m for m in requested if m not in available]
    if unknown:
        raise ConfigError(f"--metrics: {', '.join(unknown)} not available here; use "
                          f"{', '.join(available)}")
    return [m for m in available if m in requested]


@dataclass
class Scores:
    """What a scoring pass found: metric → value, per-item scores, seconds per item."""

    values: dict[str, float]
    items: list[dict[str, float]]
    seconds_per_item: dict[str, float]
    notes: dict[str, str]
    not_computed: dict[str, str]  # metric -> why


class _Clock:
    """Seconds spent per metric (shared embedding passes are charged to each user)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def charge(self, names: Sequence[str], start: float) -> None:
        dt = time.perf_counter() - start
        for n in names:
            self.spent[n] = self.spent.get(n, 0.0) + dt


def score_music(generated: Sequence[Audio], metrics: Sequence[str], models: EvalModels,
                device: torch.device, references: Sequence[Audio] | None = None,
                captions: Sequence[str] | None = None,
                sources: Sequence[Audio] | None = None, seed: int = 0) -> Scores:
    """Score generated clips (item i pairs with references[i], captions[i], sources[i])."""
    n = len(generated)
    have = {"references": references is not None, "captions": captions is not None,
            "sources": sources is not None}
    not_computed = {m: "needs " + " and ".join(METRICS[m].needs) for m in metrics
                    if not all(have[k] for k in METRICS[m].needs)}
    if n < 2:  # a Gaussian needs two samples per set (EnCodec/MERT frames are not items)
        not_computed |= {m: "needs at least 2 items" for m in metrics if m.startswith("fad_")}
    if not pitch.available():
        not_computed |= {m: "needs basic-pitch and onnxruntime (`make setup` installs them)"
                         for m in metrics if m in PITCH_METRICS}
    metrics = [m for m in metrics if m not in not_computed]
    values: dict[str, float] = {}
    items: list[dict[str, float]] = [{} for _ in range(n)]
    clock = _Clock()
    wanted = set(metrics)

    def per_item(name: str, scores: Sequence[float]) -> None:
        for row, v in zip(items, scores, strict=True):
            row[name] = float(v)
        values[name] = float(np.mean(scores))

    if wanted & {"fad_clap", "clap_score", "clap_score_reference"}:
        t = time.perf_counter()
        clap = ClapEmbedder.load(models.clap, device)
        gen = clap.audio(generated)
        users = sorted(wanted & {"fad_clap", "clap_score", "clap_score_reference"})
        ref = clap.audio(references) if references is not None and \
            wanted & {"fad_clap", "clap_score_reference"} else None
        if "fad_clap" in wanted:
            values["fad_clap"] = am.frechet_distance(ref, gen)  # one row per clip
        if captions is not None and wanted & {"clap_score", "clap_score_reference"}:
            text = clap.text(captions)
            if "clap_score" in wanted:
                per_item("clap_score", am.clap_scores(text, gen).tolist())
            if "clap_score_reference" in wanted:
                per_item("clap_score_reference", am.clap_scores(text, ref).tolist())
        clock.charge(users, t)
        del clap
    for name, cls, layer in (("fad_encodec", EncodecEmbedder, None),
                             ("fad_mert", MertEmbedder, models.mert_layer)):
        if name in wanted:
            t = time.perf_counter()
            ref_of = getattr(models, METRICS[name].role)
            emb = cls.load(ref_of, device) if layer is None else cls.load(ref_of, device, layer)
            values[name] = am.frechet_distance(emb.iter_frames(references),
                                               emb.iter_frames(generated))
            clock.charge([name], t)
            del emb
    if wanted & {"kl", "inception_score"}:
        t = time.perf_counter()
        ast = AudioSetClassifier.load(models.ast, device)
        gen_logits = ast.logits(generated)
        if "kl" in wanted:
            per_item("kl", am.kl_per_item(ast.logits(references), gen_logits).tolist())
        if "inception_score" in wanted:
            mean, std = am.inception_score(gen_logits, seed=seed)
            values["inception_score"], values["inception_score_std"] = mean, std
        clock.charge(sorted(wanted & {"kl", "inception_score"}), t)
        del ast
    if wanted & {"chroma", "chroma_dtw"}:
        t = time.perf_counter()
        pairs = [_chroma_pair(s, g) for s, g in zip(sources, generated, strict=True)]
        for k, name in enumerate(("chroma", "chroma_dtw")):
            if name in wanted:
                per_item(name, [p[k] for p in pairs])
        clock.charge(sorted(wanted & {"chroma", "chroma_dtw"}), t)
    if wanted & set(PITCH_METRICS):
        t = time.perf_counter()
        transcriber = pitch.Transcriber()
        for s, g, row in zip(sources, generated, items, strict=True):
            a, b = transcriber.transcribe(s), transcriber.transcribe(g)
            if "melody_dtw" in wanted:
                row["melody_dtw"] = pitch.melody_similarity(a, b)
            if "note_f1" in wanted:
                row["note_f1"] = pitch.note_f1(a, b)
        for name in sorted(wanted & set(PITCH_METRICS)):
            values[name] = float(np.mean([row[name] for row in items]))
        clock.charge(sorted(wanted & set(PITCH_METRICS)), t)
    return Scores(values, items, {k: v / max(n, 1) for k, v in clock.spent.items()}, {},
                  not_computed)


_CHROMA_RATE = 22_050  # librosa's default analysis rate


def _chroma_pair(source: Audio, edited: Audio) -> tuple[float, float]:
    from m2ugen.media import resample_audio

    a = resample_audio(source.waveform, source.sample_rate, _CHROMA_RATE)
    b = resample_audio(edited.waveform, edited.sample_rate, _CHROMA_RATE)
    return am.chroma_similarity(a, b, _CHROMA_RATE)


def score_text(replies: Sequence[str], answers: Sequence[str], metrics: Sequence[str],
               models: EvalModels, device: torch.device) -> Scores:
    """Score replies against reference answers (item i with answers[i])."""
    n = len(replies)
    values: dict[str, float] = {}
    items: list[dict[str, float]] = [{} for _ in range(n)]
    notes: dict[str, str] = {}
    clock = _Clock()
    wanted = set(metrics)

    def per_item(name: str, scores: Sequence[float]) -> None:
        for row, v in zip(items, scores, strict=True):
            row[name] = float(v)
        values[name] = float(np.mean(scores))

    if "bleu" in wanted:
        t = time.perf_counter()
        corpus, sentence = tm.bleu(replies, answers)
        for row, v in zip(items, sentence, strict=True):
            row["bleu"] = v
        values["bleu"] = corpus
        clock.charge(["bleu"], t)
    if "bleu_char_published" in wanted:
        t = time.perf_counter()
        per_item("bleu_char_published", tm.bleu_characters(replies, answers))
        clock.charge(["bleu_char_published"], t)
    if "meteor" in wanted:
        t = time.perf_counter()
        scores, stages = tm.meteor(replies, answers)
        per_item("meteor", scores)
        notes["meteor"] = f"matching stages: {stages}"
        clock.charge(["meteor"], t)
    rouge = [m for m in metrics if m.startswith("rouge_l_")]
    if rouge:
        t = time.perf_counter()
        parts = tm.rouge_l(replies, answers)
        for m in rouge:
            per_item(m, parts[m.removeprefix("rouge_l_")])
        clock.charge(rouge, t)
    bert = [m for m in metrics if m.startswith("bertscore_")]
    if bert:
        t = time.perf_counter()
        scorer = tm.BertScorer.load(models.bertscore, device, models.bertscore_layer)
        parts = scorer.score(replies, answers)
        for m in bert:
            per_item(m, parts[m.removeprefix("bertscore_")])
        clock.charge(bert, t)
    return Scores(values, items, {k: v / max(n, 1) for k, v in clock.spent.items()}, notes,
                  {})


def describe(metrics: Sequence[str], models: EvalModels, notes: dict[str, str]
             ) -> dict[str, dict[str, Any]]:
    """Per metric: its definition, direction and the embedding model's id."""
    out = {}
    for m in metrics:
        spec = METRICS[m]
        entry: dict[str, Any] = {"label": spec.label, "definition": spec.definition,
                                 "higher_is_better": spec.higher_is_better}
        if spec.role is not None:
            entry["model"] = getattr(models, spec.role)
            layer = getattr(models, f"{spec.role}_layer", None)
            if spec.role in ("mert", "bertscore"):
                entry["layer"] = layer if layer is not None else "last"
        if m in PITCH_METRICS:
            entry["model"] = pitch.model_id()
        if m in notes:
            entry["note"] = notes[m]
        out[m] = entry
    return out
