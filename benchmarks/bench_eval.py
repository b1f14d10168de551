"""Seconds per item of each `m2ugen eval` metric at the real models' sizes, on this machine.

The released evaluation models cannot be downloaded here, so this builds their
architectures from the default configs (random weights: the same compute) — CLAP HTSAT +
RoBERTa-base, EnCodec 24 kHz, HuBERT-base (the size of MERT-v1-95M), AST-base with the
527 AudioSet labels, RoBERTa-large for BERTScore — and times what each metric runs per
item on clips of `--seconds` seconds (the embedding pass plus the metric itself).

    python benchmarks/bench_eval.py [--items 4] [--seconds 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTForAudioClassification,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
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

from m2ugen.data.synth import SR, Clip, render_clip
from m2ugen.eval import audio_metrics as am
from m2ugen.eval import pitch
from m2ugen.eval import text_metrics as tm
from m2ugen.eval.embeddings import (
    Audio,
    AudioSetClassifier,
    ClapEmbedder,
    EncodecEmbedder,
    MertEmbedder,
)
from m2ugen.presets.tiny import tiny_corpus
from m2ugen.presets.tiny_decoders import _roberta_tokenizer


def clips(n: int, seconds: float) -> list[Audio]:
    out = []
    for i in range(n):
        wav = render_clip(Clip("x.wav", ("piano", "organ", "strings", "drums")[i % 4],
                               100 + 10 * i, i, "major"), seed=i)
        reps = int(np.ceil(seconds * SR / len(wav)))
        out.append(Audio(np.tile(wav, reps)[: int(seconds * SR)], SR))
    return out


def timed(fn, n: int) -> float:
    fn()  # warm-up (first-call allocations, librosa's numba compilation)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n


def audio_rows(dev: torch.device, n: int, seconds: float, tok) -> dict[str, float]:
    """Each audio metric's seconds per item; each model is dropped before the next."""
    gen, ref = clips(n, seconds), clips(n, seconds)[::-1]
    captions = [f"A calm piano piece number {i}." for i in range(n)]
    rows: dict[str, float] = {}

    def clap_rows() -> None:
        clap = ClapEmbedder(ClapModel(ClapConfig()).to(dev), ClapProcessor(
            feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"), tokenizer=tok),
            "clap")
        rows["fad_clap (CLAP HTSAT)"] = timed(
            lambda: am.frechet_distance(clap.audio(ref), clap.audio(gen)), n)
        rows["clap_score"] = timed(lambda: am.clap_scores(clap.text(captions), clap.audio(gen)),
                                   n)

    def frame_rows() -> None:
        enc = EncodecEmbedder(EncodecModel(EncodecConfig()).to(dev),
                              EncodecFeatureExtractor(sampling_rate=24000), "encodec")
        rows["fad_encodec (EnCodec 24 kHz)"] = timed(
            lambda: am.frechet_distance(enc.iter_frames(ref), enc.iter_frames(gen)), n)
        mert = MertEmbedder(HubertModel(HubertConfig()).to(dev), Wav2Vec2FeatureExtractor(
            sampling_rate=24000, do_normalize=True), "mert", layer=12)
        rows["fad_mert (HuBERT-base size = MERT-v1-95M)"] = timed(
            lambda: am.frechet_distance(mert.iter_frames(ref), mert.iter_frames(gen)), n)

    def ast_rows() -> None:
        labels = {i: str(i) for i in range(527)}
        ast = AudioSetClassifier(ASTForAudioClassification(ASTConfig(
            id2label=labels, label2id={v: k for k, v in labels.items()})).to(dev),
            ASTFeatureExtractor(), "ast")
        rows["kl (AST-base)"] = timed(lambda: am.kl_per_item(ast.logits(ref), ast.logits(gen)),
                                      n)
        rows["inception_score (AST-base)"] = timed(lambda: am.inception_score(ast.logits(gen)),
                                                   n)

    for measure in (clap_rows, frame_rows, ast_rows):
        measure()
    rows["chroma + chroma_dtw (librosa)"] = timed(
        lambda: [am.chroma_similarity(s.waveform, g.waveform, SR) for s, g in
                 zip(ref, gen, strict=True)],
        n)
    if pitch.available():
        model = pitch.Transcriber()

        def melody() -> None:
            for s, g in zip(ref, gen, strict=True):
                a, b = model.transcribe(s), model.transcribe(g)
                pitch.melody_similarity(a, b), pitch.note_f1(a, b)

        rows["melody_dtw + note_f1 (basic-pitch ONNX)"] = timed(melody, n)
    return rows


def text_rows(dev: torch.device, tok) -> dict[str, float]:
    replies = [f"It is played on piano at {100 + i} BPM, in a calm mood." for i in range(32)]
    answers = [f"The piano plays at {100 + 2 * i} BPM; it sounds calm." for i in range(32)]
    n = len(replies)
    rows = {"bleu (sacrebleu)": timed(lambda: tm.bleu(replies, answers), n),
            "bleu_char_published (NLTK)": timed(lambda: tm.bleu_characters(replies, answers), n),
            "meteor (NLTK)": timed(lambda: tm.meteor(replies, answers), n),
            "rouge_l (rouge-score)": timed(lambda: tm.rouge_l(replies, answers), n)}
    large = RobertaConfig(vocab_size=len(tok), hidden_size=1024, num_hidden_layers=24,
                          num_attention_heads=16, intermediate_size=4096,
                          max_position_embeddings=514, pad_token_id=1)
    bert = tm.BertScorer(RobertaModel(large).to(dev).eval(), tok, "roberta-large", 17)
    rows["bertscore (RoBERTa-large, layer 17)"] = timed(lambda: bert.score(replies, answers), n)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    tok = _roberta_tokenizer(tiny_corpus())
    rows = audio_rows(dev, args.items, args.seconds, tok) | text_rows(dev, tok)
    print(f"seconds per item on {args.device} ({torch.get_num_threads()} threads), "
          f"{args.seconds:g} s clips, {args.items} clips / 32 answers:")
    for name, seconds in rows.items():
        print(f"  {name:45s} {seconds:8.3f}")


if __name__ == "__main__":
    main()
