"""How close is the music the LLM asks for to the music its caption asks for?

    python benchmarks/bench_conditioning.py [--model tiny-trained] [--n 40] [--seed 1]

For held-out synthetic captions (each a music request, as `m2ugen eval synth` makes them),
the greedy reply's [AUD] states go through the projector, ÷ 10, exactly as chat renders
music. MusicGen samples codes from each caption's text path, then scores them
(teacher-forced) under several conditionings; the table gives KL(caption's text path ‖
conditioning) of its next-code distributions, averaged over codebooks and steps — 0 means
the decoder would make the caption's music:

- no conditioning: zero states, fully masked (what classifier-free guidance subtracts);
- heard:           the projector's states as generate() gives them to MusicGen (the caption's
                   positions read from the zeros past it, decoders.conditioning_lengths);
- all 128:         the same states, every position under an all-ones mask (the first
                   version's generation);
- true length:     the same states cut to the caption's real token count (an oracle).

It also prints the projector's output norms on the caption's positions and past them, and
how often the heard length is the caption's. Needs a MusicGen model directory (the tiny
presets are random decoders: their KL is a distance between conditionings as a random
MusicGen hears them, not a claim about real music).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.modeling_outputs import BaseModelOutput

from m2ugen.chat import ChatSession
from m2ugen.data.synth_qa import read_items
from m2ugen.eval.synth import held_out_data
from m2ugen.model import M2UGen
from m2ugen.modules.decoders import TARGET_SCALE, length_mask


class _Sequences(StoppingCriteria):
    """Keeps the codes generate() samples (it returns audio only); stops nothing."""

    ids: torch.Tensor

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.ids = input_ids
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-trained")
    ap.add_argument("--n", type=int, default=40, help="distinct held-out captions")
    ap.add_argument("--seed", type=int, default=1, help="held-out synthetic set's seed")
    ap.add_argument("--steps", type=int, default=40, help="teacher-forced code steps")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = M2UGen.from_pretrained(args.model, dtype=torch.float32)
    dec = model.load_decoder()
    if dec.kind != "musicgen":
        raise SystemExit(f"{args.model}: its decoder is {dec.kind}; this measures MusicGen")
    with tempfile.TemporaryDirectory() as tmp:
        data = held_out_data(Path(tmp) / "data", args.seed, max(args.n, 10))
        captions = list(dict.fromkeys(it.caption for it in read_items(data)["audio"]))
    captions = captions[: args.n]
    target, mask = dec.target(captions)
    text = target.float() / TARGET_SCALE
    real = mask[:, :, 0].long()
    preds = []
    for caption in captions:
        session = ChatSession(model)
        result = session.send(caption, music="never", temperature=0.0, max_new_tokens=64,
                              seed=0)
        preds.append(model.project(session.audio_states(result)[None])[0].float()
                     / TARGET_SCALE)
    pred = torch.stack(preds)
    norms = pred.norm(dim=-1)
    on, past = norms[real.bool()], norms[~real.bool()]
    heard = dec.lengths(pred)
    true = real.sum(dim=1)
    print(f"{len(captions)} captions, {int(true.min())}-{int(true.max())} caption positions "
          f"(mean {float(true.float().mean()):.1f}) of {pred.shape[1]}")
    print(f"projector state norms: on the caption {float(on.mean()):.3f} (min "
          f"{float(on.min()):.3f}), past it {float(past.mean()):.3f} (max "
          f"{float(past.max()):.3f}); the text encoder's "
          f"{float(text.norm(dim=-1)[real.bool()].mean()):.3f}")
    print(f"heard length = the caption's: {100 * float((heard == true).float().mean()):.0f} %, "
          f"off by {float((heard - true).abs().float().mean()):.1f} on average")

    # the codes each caption's text path samples (delayed layout, as generate() holds
    # them), so every conditioning is scored on the music its caption makes
    record = _Sequences()
    enc = dec.tokenizer(captions, padding=True, return_tensors="pt")
    torch.manual_seed(args.seed)
    dec.model.generate(**enc, do_sample=True, guidance_scale=None,
                       max_new_tokens=args.steps, stopping_criteria=StoppingCriteriaList([record]))
    ids = record.ids[:, :-1]

    def log_probs(states: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        out = dec.model(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                        attention_mask=attention, decoder_input_ids=ids)
        return torch.log_softmax(out.logits.float(), dim=-1)

    longest = int(heard.max())  # generate() cuts the batch to its longest caption
    heard_mask = length_mask(heard, longest)
    heard_states = pred[:, :longest] * heard_mask[..., None]
    rows = {"no conditioning": (torch.zeros_like(text), torch.zeros_like(real)),
            "heard (generate)": (heard_states, heard_mask),
            "all 128, all-ones mask": (pred, torch.ones_like(real)),
            "true length (oracle)": (pred, length_mask(true, pred.shape[1]))}
    with torch.no_grad():
        ref = log_probs(text, real)
        print("\n| conditioning | KL(text path ‖ it) |\n|---|---:|")
        for name, (states, attention) in rows.items():
            kl = (ref.exp() * (ref - log_probs(states, attention))).sum(-1).mean()
            print(f"| {name} | {float(kl):.4f} |")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
