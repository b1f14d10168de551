"""`m2ugen chat` with the default --dtype auto on a LLaMA-2-7B-size model, on the CPU.

    python benchmarks/bench_chat_7b_cpu.py DIR [--tokens 32]

Builds DIR once (if missing): the tiny preset's encoders, tokenizer and decoder around a
LLaMA with the published 7B shapes (4096 wide, 32 layers, 32 heads, FFN 11008) and random
bf16 weights, written one layer at a time (never the whole model in memory); its
vocabulary is the tiny tokenizer's, so the embedding rows are 72 instead of 32000 (0.26 GB
of the 13.5). Then runs `m2ugen chat --model DIR --music never` in this process and
prints the dtype it chose, the load time, peak RSS and tokens per second. No adapter
tensors: the model is untrained (zero gates), which changes nothing about the speed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32}


def _llm_tensors(layer: int | None, vocab: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    d, f = LLAMA_7B["hidden_size"], LLAMA_7B["intermediate_size"]

    def rnd(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    if layer is None:
        return {"model.embed_tokens.weight": rnd(vocab, d), "lm_head.weight": rnd(vocab, d),
                "model.norm.weight": torch.ones(d, dtype=torch.bfloat16)}
    p = f"model.layers.{layer}."
    out = {p + f"self_attn.{n}_proj.weight": rnd(d, d) for n in "qkvo"}
    out |= {p + "mlp.gate_proj.weight": rnd(f, d), p + "mlp.up_proj.weight": rnd(f, d),
            p + "mlp.down_proj.weight": rnd(d, f)}
    out |= {p + "input_layernorm.weight": torch.ones(d, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(d, dtype=torch.bfloat16)}
    return out


def build(out: Path, tiny: Path) -> None:
    """DIR: the tiny preset's m2ugen.json and parts, with a 7B-shaped random LLM."""
    from transformers import LlamaConfig

    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "llm").mkdir(parents=True)
    cfg = json.loads((tiny / "m2ugen.json").read_text())
    vocab = json.loads((tiny / "llm" / "config.json").read_text())["vocab_size"]
    llama = LlamaConfig(vocab_size=vocab, max_position_embeddings=4096, rms_norm_eps=1e-5,
                        tie_word_embeddings=False, dtype="bfloat16", **LLAMA_7B)
    llama.save_pretrained(tmp / "llm")
    g = torch.Generator().manual_seed(0)
    index: dict[str, str] = {}
    for i, layer in enumerate([None, *range(LLAMA_7B["num_hidden_layers"])]):
        name = f"model-{i:05d}.safetensors"
        tensors = _llm_tensors(layer, vocab, g)
        save_file(tensors, tmp / "llm" / name, metadata={"format": "pt"})
        index |= dict.fromkeys(tensors, name)
        print(f"  wrote {name}", flush=True)
    (tmp / "llm" / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": index}))
    for part in ("tokenizer", "mert", "vit", "vivit", cfg["decoder_path"]):
        shutil.copytree(tiny / part, tmp / part)
    cfg.update(name="cpu-7b-bench", llm="llm", llm_dim=LLAMA_7B["hidden_size"],
               query_layers=6, base_fingerprints={}, extra={})
    (tmp / "m2ugen.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(out)


def chat(model_dir: Path, tokens: int) -> None:
    """`m2ugen chat` in this process, timed: load until the session starts, then the reply."""
    from m2ugen.chat import ChatSession
    from m2ugen.cli import main

    marks: dict[str, float] = {}
    results: list = []
    real_init, real_stream = ChatSession.__init__, ChatSession.stream

    def init(self, model, *a, **k):
        marks["loaded"] = time.perf_counter()
        real_init(self, model, *a, **k)

    def stream(self, *a, **k):
        s = real_stream(self, *a, **k)
        results.append(s)
        return s

    ChatSession.__init__, ChatSession.stream = init, stream
    start = time.perf_counter()
    code = main(["chat", "--model", str(model_dir), "--music", "never", "--temperature", "0",
                 "--max-new-tokens", str(tokens), "Describe a calm piano piece."])
    end = time.perf_counter()
    n = len(results[0].result.token_ids)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    print(f"exit {code}; load {marks['loaded'] - start:.1f} s; reply {n} tokens in "
          f"{end - marks['loaded']:.1f} s = {n / (end - marks['loaded']):.2f} tokens/s; "
          f"peak RSS {rss:.1f} GiB; {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="the 7B-size model directory (built if missing)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--build-only", action="store_true")
    args = ap.parse_args()
    if not args.dir.is_dir():
        from m2ugen.model import M2UGen
        from m2ugen.presets import tiny_dir
        from m2ugen.presets.tiny import ensure_tiny

        t = time.perf_counter()
        build(args.dir, ensure_tiny(tiny_dir("musicgen"), model_cls=M2UGen))
        print(f"built {args.dir} in {time.perf_counter() - t:.0f} s")
    if not args.build_only:
        chat(args.dir, args.tokens)


if __name__ == "__main__":
    main()
