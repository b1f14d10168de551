"""`m2ugen eval synth`: does a model answer from its inputs? Held-out synthetic data.

A synthetic set (`m2ugen synth-data`, another seed than the model was trained on) has
true captions, so every answer can be checked. For each question a user would ask
(`m2ugen.data.synth_qa.QUESTIONS`, first phrasing: "What instrument is playing?", "What
colour is the shape?", "Which way does it move?", tempo, key, …) and each item, the
model answers greedily three times:

- true:     with the item's own medium;
- none:     with no medium (the answer the text alone gives; the same for every item);
- shuffled: with another item's medium (a fixed derangement), scored against this item.

A model that uses its input scores high with the true input and at chance with shuffled
inputs; one that ignores it scores the same in all three. Tempo counts within ±10 BPM
(`bpm±10`) and exactly (`bpm`); chance is what guessing uniformly scores (for tempo,
the share of the synthetic tempos within 10 BPM of the true one, on average).

Music generation: for each held-out caption, the request is the caption itself (as
stage 2 trains); the [AUD] hidden states of the greedy reply (appended after the text when
the model emits none) go through the output projector, ÷ 10, and are compared with the
decoder's own conditioning of every held-out caption (cosine over the caption's unmasked
positions): `retrieval_top1` is how often the true caption is the most similar,
`cosine` the mean cosine to the true one, `aud_emitted` how often the reply asked for
music itself, `length_exact` how often the decoder hears exactly the caption's positions
(the projector's zeros past the caption, decoders.conditioning_lengths) and
`length_error` the mean number of positions it is off by.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from m2ugen.chat import ChatSession
from m2ugen.checkpoint import atomic_write_text
from m2ugen.conversation import build_prompt_ids
from m2ugen.data.synth import COLOURS, DIRECTIONS, INSTRUMENTS, SHAPES, TEMPOS, synthesize
from m2ugen.data.synth_qa import QUESTIONS, VALUES, Item, Question, read_items
from m2ugen.errors import ConfigError
from m2ugen.generate import GenerationSettings, decode_reply, generate_tokens
from m2ugen.media import load_media
from m2ugen.modules.decoders import TARGET_SCALE
from m2ugen.modules.llm import Injection

CONDITIONS = ("true", "none", "shuffled")
# what the evaluation asks: the five attributes, and the image background (the
# easiest fact for the frozen random ViT: it shows whether the image path works at all)
ASKED = {("audio", "instrument"), ("audio", "bpm"), ("audio", "key"), ("image", "colour"),
         ("image", "background"), ("video", "direction")}
_WORDS = {"instrument": INSTRUMENTS, "colour": tuple(COLOURS), "background": tuple(COLOURS),
          "shape": SHAPES, "direction": tuple(DIRECTIONS)}
_DIRECTION_ALIASES = {"left to right": "from left to right",
                      "right to left": "from right to left", "up": "upward",
                      "down": "downward"}
_BPM = re.compile(r"(\d+)\s*bpm", re.IGNORECASE)
_KEY = re.compile(r"\b([A-G][#b]?)\s+(major|minor)\b")


def parse_answer(attribute: str, reply: str) -> str | int | None:
    """The value a reply states for an attribute (the earliest mention), or None."""
    if attribute == "bpm":
        m = _BPM.search(reply)
        return int(m.group(1)) if m else None
    if attribute == "key":
        m = _KEY.search(reply)
        return f"{m.group(1)} {m.group(2)}" if m else None
    text = reply.lower()
    names = {w: w for w in _WORDS[attribute]}
    if attribute == "direction":
        names |= _DIRECTION_ALIASES
    found = [(pos, value) for word, value in names.items()
             if (pos := _find_word(text, word)) is not None]
    return min(found)[1] if found else None


def _find_word(text: str, word: str) -> int | None:
    m = re.search(rf"\b{re.escape(word)}\b", text)
    return m.start() if m else None


def correct(attribute: str, answer: str | int | None, truth: str | int,
            tolerance: int = 10) -> bool:
    if answer is None:
        return False
    if attribute == "bpm±10":
        return abs(int(answer) - int(truth)) <= tolerance
    return answer == truth


def chance(attribute: str, truths: list[Any]) -> float:
    """What a uniform guess over the attribute's values scores on these items."""
    if attribute == "bpm±10":
        return float(np.mean([sum(abs(b - t) <= 10 for b in TEMPOS) / len(TEMPOS)
                              for t in truths]))
    return 1.0 / len(VALUES[attribute])


def derangement(n: int, seed: int) -> list[int]:
    """A fixed permutation of range(n) with no fixed point (n ≥ 2): the shuffled inputs."""
    if n < 2:
        raise ConfigError("the shuffled-input condition needs at least 2 items per modality")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return [int(i) for i in perm]


def reply(model, question: str, prompts: torch.Tensor, max_new_tokens: int = 16) -> str:
    """The greedy reply to a one-turn question with these injected prompts (what a fresh
    `ChatSession.send(question, <medium>, temperature=0)` answers)."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0)
    ids, _ = build_prompt_ids(model.tokenizer, model.config.prompt_template, [], question,
                              model.config.max_context - max_new_tokens)
    pieces = decode_reply(model.tokenizer, generate_tokens(model.llm, ids, prompts, settings, 0),
                          model.llm.audio_token_ids)
    while True:
        try:
            next(pieces)
        except StopIteration as done:
            return done.value.text


@torch.no_grad()
def choice_accuracy(model, question: Question, items: list[Item],
                    prompts: list[torch.Tensor]) -> float:
    """Forced choice: how often the true answer is the likeliest of the answers for every
    value of the attribute (teacher-forced log-probability of the whole answer), given
    `prompts[i]` for item i. Smoother than greedy replies: for short learning runs."""
    tok, template = model.tokenizer, model.config.prompt_template
    ids, _ = build_prompt_ids(tok, template, [], question.asks[0], model.config.max_context)
    values = VALUES[question.attribute]
    answers = [tok(question.answer({**items[0].facts, question.attribute: v}),
                   add_special_tokens=False).input_ids + [tok.eos_token_id] for v in values]
    longest = max(map(len, answers))
    seq = torch.full((len(values), len(ids) + longest), tok.eos_token_id)
    mask = torch.zeros_like(seq)
    for k, ans in enumerate(answers):
        seq[k, :len(ids) + len(ans)] = torch.tensor(ids + ans)
        mask[k, :len(ids) + len(ans)] = 1
    seq, mask = seq.to(model.device), mask.to(model.device)
    hits = 0
    for it, p in zip(items, prompts, strict=True):
        logits = model.llm(seq, injection=Injection(p.expand(-1, len(values), -1)),
                           attention_mask=mask, use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, len(ids) - 1:-1], -1)  # predicts the answers
        target = seq[:, len(ids):]
        picked = logp.gather(-1, target[..., None])[..., 0] * mask[:, len(ids):]
        hits += int(picked.sum(1).argmax()) == values.index(it.facts[question.attribute])
    return hits / len(items)


@torch.no_grad()
def media_prompts(model, items: list[Item]) -> list[torch.Tensor]:
    """Injected prompts (3Q, 1, D) of each item's medium, encoded once."""
    out = []
    for it in items:
        medium = load_media(it.modality, it.path, model.media_spec)
        out.append(model.media_prompts(1, **{it.modality: medium}))
    return out


def _attributes(q: Question) -> list[str]:
    return ["bpm", "bpm±10"] if q.attribute == "bpm" else [q.attribute]


def answer_questions(model, items: dict[str, list[Item]], seed: int, progress: bool = True
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-attribute accuracies under the three conditions, and every reply."""
    with torch.no_grad():
        none = model.media_prompts(1)
    encoded = {m: media_prompts(model, its) for m, its in items.items() if its}
    perms = {m: derangement(len(its), seed) for m, its in items.items() if its}
    results, replies = {}, []
    jobs = [q for q in QUESTIONS if q.modality in encoded and (q.modality, q.attribute) in ASKED]
    total = sum(2 * len(items[q.modality]) + 1 for q in jobs)
    bar = tqdm(total=total, desc="asking questions", unit="reply", disable=not progress)
    for q in jobs:
        its, prompts, perm = items[q.modality], encoded[q.modality], perms[q.modality]
        ask = q.asks[0]
        none_reply = reply(model, ask, none)
        bar.update(1)
        hits = {(a, c): 0 for a in _attributes(q) for c in CONDITIONS}
        for i, it in enumerate(its):
            got = {"true": reply(model, ask, prompts[i]), "none": none_reply,
                   "shuffled": reply(model, ask, prompts[perm[i]])}
            bar.update(2)
            for cond, text in got.items():
                for a in _attributes(q):
                    hits[a, cond] += correct(a, parse_answer(q.attribute, text),
                                             it.facts[q.attribute])
            replies.append({"modality": q.modality, "attribute": q.attribute, "question": ask,
                            "file": it.path.name, "truth": it.facts[q.attribute],
                            "shuffled_from": its[perm[i]].path.name, **got})
        for a in _attributes(q):
            results[f"{q.modality}/{a}"] = {
                "modality": q.modality, "attribute": a, "question": ask, "items": len(its),
                "chance": chance(a, [it.facts[q.attribute] for it in its]),
                **{c: hits[a, c] / len(its) for c in CONDITIONS}}
    bar.close()
    return results, replies


def masked_cosines(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                   ) -> torch.Tensor:
    """(B, C): cosine between prediction b and caption c's conditioning over c's unmasked
    positions only — both sides restricted, so what the decoder states hold at padding
    (nonzero: the text encoder encodes pad tokens) counts for neither."""
    dots = torch.einsum("bnw,cnw->bc", pred, target * mask)
    pred_norms = torch.sqrt(torch.einsum("bnw,cnw->bc", pred ** 2, mask))
    target_norms = (target * mask).flatten(1).norm(dim=1)
    return dots / (pred_norms * target_norms[None]).clamp(min=1e-8)


@torch.no_grad()
def caption_retrieval(model, captions: list[str], progress: bool = True) -> dict[str, Any]:
    """Projector output for each caption request vs the decoder's conditioning of every
    distinct caption (see the module docstring)."""
    decoder = model.load_decoder()
    unique = list(dict.fromkeys(captions))
    target, mask = decoder.target(unique)  # (C, N, W), 10 × conditioning
    target, mask = target.float() / TARGET_SCALE, mask.float()
    preds, emitted = [], 0
    for caption in tqdm(captions, desc="music requests", unit="caption", disable=not progress):
        session = ChatSession(model)
        result = session.send(caption, music="never", temperature=0.0, max_new_tokens=64,
                              seed=0)
        emitted += result.has_audio_tokens
        hidden = session.audio_states(result)  # (8, D)
        preds.append(model.project(hidden[None])[0].float() / TARGET_SCALE)
    cos = masked_cosines(torch.stack(preds), target, mask)
    truth = torch.tensor([unique.index(c) for c in captions])
    own = cos[torch.arange(len(captions)), truth]
    heard = decoder.lengths(torch.stack(preds))
    lengths = decoder.text_states(mask)[truth, :, 0].sum(dim=1).long()
    return {"requests": len(captions), "candidates": len(unique),
            "retrieval_top1": float((cos.argmax(1) == truth).float().mean()),
            "chance": 1.0 / len(unique), "cosine": float(own.mean()),
            "cosine_other": float((cos.sum(1) - own).mean() / max(1, len(unique) - 1)),
            "aud_emitted": emitted / len(captions),
            "length_exact": float((heard == lengths).float().mean()),
            "length_error": float((heard - lengths).abs().float().mean())}


def held_out_data(out: Path, seed: int, n: int) -> Path:
    """A synthetic set of `n` clips, images and videos with `seed` under `out`."""
    synthesize(out, seed=seed, n_audio=n, n_images=n, n_videos=n)
    return out


def evaluate_synth(model, data: str | Path | None = None, seed: int = 1, n: int = 100,
                   progress: bool = True, label: str = "") -> dict[str, Any]:
    """Answers and music requests on held-out synthetic data; returns the results dict.

    `data`: a `m2ugen synth-data` directory, else one is written with `seed` (n items of
    each kind). A set made with the seed the model was trained on is refused."""
    trained_on = model.config.extra.get("data_seed")
    start = time.perf_counter()
    model.llm.merge_for_inference()
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            if trained_on is not None and int(trained_on) == seed:
                raise ConfigError(f"--seed {seed} is the seed {label or 'the model'} was "
                                  "trained on; held-out data needs another seed")
            data = held_out_data(Path(tmp) / "data", seed, n)
        items = read_items(data)
        results, replies = answer_questions(model, items, seed, progress)
        retrieval = caption_retrieval(model, [it.caption for it in items["audio"]], progress)
    return {"task": "synth", "model": label, "data": str(data), "seed": seed,
            "trained_on_seed": trained_on, "attributes": results, "music": retrieval,
            "seconds": round(time.perf_counter() - start, 1), "replies": replies}


def format_table(results: dict[str, Any]) -> str:
    """The Markdown table of `evaluate_synth`'s results."""
    dtype = f" · {results['dtype']}" if "dtype" in results else ""
    lines = [f"synth eval · {results['model']} · held-out seed {results['seed']}{dtype}", "",
             "| input | attribute | question | items | chance | true | none | shuffled |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results["attributes"].values():
        lines.append(f"| {r['modality']} | {r['attribute']} | {r['question']} | {r['items']} "
                     f"| {100 * r['chance']:.1f} | {100 * r['true']:.1f} | "
                     f"{100 * r['none']:.1f} | {100 * r['shuffled']:.1f} |")
    m = results["music"]
    lines += ["", "| music requests | candidates | retrieval top-1 | chance | cosine (true) | "
              "cosine (others) | [AUD] emitted | caption length exact | off by |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {m['requests']} | {m['candidates']} | {100 * m['retrieval_top1']:.1f} | "
              f"{100 * m['chance']:.1f} | {m['cosine']:.3f} | {m['cosine_other']:.3f} | "
              f"{100 * m['aud_emitted']:.1f} | {100 * m.get('length_exact', 0):.1f} | "
              f"{m.get('length_error', 0):.1f} |"]
    return "\n".join(lines)


def write_results(results: dict[str, Any], out: Path) -> Path:
    """results.json and table.md into `out` (each atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "table.md", format_table(results) + "\n")
    return out
