"""Text metrics against their reference packages and closed forms."""

from __future__ import annotations

import pytest
import sacrebleu
import torch
from nltk.translate.bleu_score import sentence_bleu
from nltk.translate.meteor_score import meteor_score

from m2ugen.eval import text_metrics as tm

HYP = ["It is played on piano.", "The tempo is 120 BPM.", "A calm organ chord progression."]
REF = ["It is played on organ.", "The tempo is 120 BPM.", "A calm piano arpeggio in C major."]


def test_bleu_equals_sacrebleu():
    corpus, items = tm.bleu(HYP, REF)
    assert corpus == pytest.approx(sacrebleu.corpus_bleu(HYP, [REF]).score)
    assert items == pytest.approx([sacrebleu.sentence_bleu(h, [r]).score
                                   for h, r in zip(HYP, REF, strict=True)])
    assert items[1] == pytest.approx(100.0)  # an exact answer


def test_character_bleu_is_the_published_variant():
    assert tm.bleu_characters(HYP, REF) == pytest.approx(
        [sentence_bleu([list(r)], list(h)) for h, r in zip(HYP, REF, strict=True)])
    assert tm.bleu_characters(["abcde"], ["abcde"]) == pytest.approx([1.0])


def test_meteor_matches_nltk_and_says_which_stages_ran(monkeypatch):
    monkeypatch.setattr(tm, "wordnet_available", lambda: False)
    scores, stages = tm.meteor(HYP, REF)
    assert stages.startswith("exact, stem") and "WordNet" in stages
    stub = tm._NoSynonyms()
    assert scores == pytest.approx([meteor_score([tm.words(r)], tm.words(h), wordnet=stub)
                                    for h, r in zip(HYP, REF, strict=True)])
    # identical m-token sentences: F_mean = 1, one chunk → 1 − 0.5 · (1/m)³
    m = len(tm.words(REF[1]))
    assert scores[1] == pytest.approx(1 - 0.5 * (1 / m) ** 3)
    # the stem stage: "arpeggios" matches "arpeggio"
    (stemmed,), _ = tm.meteor(["piano arpeggios"], ["piano arpeggio"])
    assert stemmed == pytest.approx(1 - 0.5 * (1 / 2) ** 3)


def test_rouge_l_precision_recall_f1_closed_form():
    parts = tm.rouge_l(["the cat sat"], ["the cat sat on the mat"])  # LCS 3 of 3 and 6
    assert parts["precision"] == pytest.approx([1.0])
    assert parts["recall"] == pytest.approx([0.5])
    assert parts["f1"] == pytest.approx([2 / 3])


def test_bertscore_identity_and_symmetry(eval_models):
    scorer = tm.BertScorer.load(eval_models.bertscore, torch.device("cpu"))
    same = scorer.score(REF, REF)
    for k in ("precision", "recall", "f1"):
        assert same[k] == pytest.approx([1.0] * 3, abs=1e-5)
    ab, ba = scorer.score(HYP, REF), scorer.score(REF, HYP)
    assert ab["precision"] == pytest.approx(ba["recall"], abs=1e-5)  # P(h, r) = R(r, h)
    p, r = torch.tensor(ab["precision"]), torch.tensor(ab["recall"])
    assert ab["f1"] == pytest.approx((2 * p * r / (p + r)).tolist(), abs=1e-5)
    assert all(f < 1.0 for f in ab["f1"][::2])  # the answers that differ
