"""Text metrics for music question answering, computed by the field's packages.

- BLEU: sacrebleu (corpus BLEU with its standard 13a tokeniser; per-item sentence BLEU);
- BLEU on characters, labelled as such: NLTK's `sentence_bleu` over the raw character
  sequences, averaged over items — what the published evaluation script computed (kept
  only to compare with its numbers: it is not word BLEU);
- METEOR: NLTK's `meteor_score`. Its matching stages are exact, Porter-stem and WordNet
  synonym; the synonym stage needs NLTK's WordNet data, which is used when installed
  (`python -m nltk.downloader wordnet`) and otherwise left out — the result records which;
- ROUGE-L: Google's rouge-score (`RougeScorer(["rougeL"], use_stemmer=True)`);
- BERTScore: torchmetrics' `BERTScore` over a transformers encoder loaded by hub id or
  directory (default roberta-large, layer 17 — the bert-score package's English default).

ROUGE-L and BERTScore are reported as precision, recall and F1 (the published script kept
only recall).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import nltk
import sacrebleu
import torch
from nltk.tokenize import TreebankWordTokenizer
from nltk.translate.bleu_score import sentence_bleu
from nltk.translate.meteor_score import meteor_score
from rouge_score import rouge_scorer
from torchmetrics.text.bert import BERTScore
from transformers import AutoModel, AutoTokenizer

from m2ugen.errors import loading

_TOKENIZER = TreebankWordTokenizer()  # rule-based: needs no NLTK data download


def words(text: str) -> list[str]:
    """Lower-cased Penn Treebank tokens (what METEOR matches on)."""
    return _TOKENIZER.tokenize(text.lower())


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, list[float]]:
    """(sacrebleu corpus BLEU, per-item sentence BLEU), both 0–100."""
    corpus = sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score
    items = [sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(hypotheses, references,
                                                                    strict=True)]
    return float(corpus), items


def bleu_characters(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-item NLTK sentence BLEU over raw characters (0–1), the published variant."""
    with warnings.catch_warnings():  # NLTK warns when a short answer has no 4-gram match
        warnings.simplefilter("ignore", UserWarning)
        return [float(sentence_bleu([list(r)], list(h))) for h, r in
                zip(hypotheses, references, strict=True)]


class _NoSynonyms:
    """Stands in for NLTK's WordNet reader when its data is not installed: no synsets,
    so METEOR runs its exact and stem stages only."""

    def synsets(self, word: str) -> list:
        return []


def wordnet_available() -> bool:
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return False
    return True


def meteor(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list[float], str]:
    """(per-item METEOR 0–1, the matching stages that ran)."""
    if wordnet_available():
        from nltk.corpus import wordnet

        reader, stages = wordnet, "exact, stem, WordNet synonyms"
    else:
        reader, stages = _NoSynonyms(), "exact, stem (no WordNet data installed)"
    scores = [float(meteor_score([words(r)], words(h), wordnet=reader))
              for h, r in zip(hypotheses, references, strict=True)]
    return scores, stages


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]
            ) -> dict[str, list[float]]:
    """Per-item ROUGE-L {"precision", "recall", "f1"} (0–1)."""
    absl = logging.getLogger("absl")  # rouge-score logs "Using default tokenizer." at INFO
    level = absl.level
    absl.setLevel(max(level, logging.WARNING))
    try:
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    finally:
        absl.setLevel(level)
    out: dict[str, list[float]] = {"precision": [], "recall": [], "f1": []}
    for h, r in zip(hypotheses, references, strict=True):
        s = scorer.score(r, h)["rougeL"]  # score(target, prediction)
        out["precision"].append(float(s.precision))
        out["recall"].append(float(s.recall))
        out["f1"].append(float(s.fmeasure))
    return out


class _Tokenize:
    """torchmetrics calls a user tokenizer as `tokenizer(texts, max_length)`."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding="max_length", max_length=max_length,
                              truncation=True, return_tensors="pt")


@dataclass
class BertScorer:
    """A BERTScore encoder (transformers model + tokenizer) and the layer it scores with."""

    model: torch.nn.Module
    tokenizer: object
    ref: str
    layer: int | None = None  # None: the last layer

    @classmethod
    def load(cls, ref: str, device: torch.device, layer: int | None = None) -> BertScorer:
        with loading("BERTScore model", ref):
            model = AutoModel.from_pretrained(ref).to(device).eval()
            return cls(model, AutoTokenizer.from_pretrained(ref), ref, layer)

    def score(self, hypotheses: Sequence[str], references: Sequence[str],
              batch_size: int = 32) -> dict[str, list[float]]:
        """Per-item BERTScore {"precision", "recall", "f1"} (no idf, no baseline rescaling)."""
        layer = self.layer if self.layer is not None else self.model.config.num_hidden_layers
        max_length = min(int(self.tokenizer.model_max_length),
                         int(self.model.config.max_position_embeddings) - 2)
        metric = BERTScore(model=self.model, user_tokenizer=_Tokenize(self.tokenizer),
                           num_layers=layer,
                           max_length=max_length, truncation=True, batch_size=batch_size,
                           device=next(self.model.parameters()).device)
        metric.update(list(hypotheses), list(references))
        result = metric.compute()
        return {k: [float(v) for v in torch.atleast_1d(result[k])]
                for k in ("precision", "recall", "f1")}
