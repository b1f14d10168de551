"""Tokens/s of chat generation with the KV cache vs. re-running the whole sequence per token.

The published M2UGen re-ran the full sequence for every new token. This builds an LLM big
enough to matter on CPU (default 12 layers × 768, random weights, the real M2UGen
injection and peft wrapping) and generates the same greedy tokens both ways.

    python benchmarks/bench_chat.py [--layers 12] [--dim 768] [--new-tokens 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from m2ugen.config import M2UGenConfig
from m2ugen.conversation import build_prompt_ids
from m2ugen.generate import GenerationSettings, generate_tokens
from m2ugen.modules.llm import load_llm
from m2ugen.presets.tiny import _train_tokenizer, tiny_corpus


def build_llm(root: Path, layers: int, dim: int):
    tok_dir = _train_tokenizer(tiny_corpus(), root / "tokenizer")
    from transformers import AutoTokenizer
    vocab = len(AutoTokenizer.from_pretrained(tok_dir))
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=dim * 8 // 3,
                      num_hidden_layers=layers, num_attention_heads=dim // 64,
                      max_position_embeddings=2048, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(root / "llm")
    config = M2UGenConfig(llm_dim=dim, query_layers=2, lora_rank=16, lora_alpha=16)
    return load_llm(str(root / "llm"), str(tok_dir), config, torch.float32), config


def run(llm, config, prompt_ids, new_tokens: int, use_cache: bool) -> tuple[list[int], float]:
    settings = GenerationSettings(max_new_tokens=new_tokens, temperature=0.0, use_cache=use_cache)
    prompts = llm.prefix_query.weight[:, None, :].detach()
    start = time.perf_counter()
    tokens = [t for t, _ in generate_tokens(llm, prompt_ids, prompts, settings, seed=0)]
    return tokens, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--new-tokens", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        llm, config = build_llm(Path(tmp), args.layers, args.dim)
        llm.eval()
        ids, _ = build_prompt_ids(llm.tokenizer, config.prompt_template, [],
                                  "Describe this music in detail.", 10_000)
        run(llm, config, ids, 8, True)  # warm-up
        cached, t_cache = run(llm, config, ids, args.new_tokens, True)
        full, t_full = run(llm, config, ids, args.new_tokens, False)
        llm.merge_for_inference()  # what chat, the app and eval do on a GPU
        merged, t_merged = run(llm, config, ids, args.new_tokens, True)
    n = len(cached)
    print(f"LLM {args.layers} layers × {args.dim}, prompt {len(ids)} tokens, {n} new tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"  KV cache : {n / t_cache:8.1f} tokens/s")
    print(f"  re-run   : {len(full) / t_full:8.1f} tokens/s")
    print(f"  KV cache + LoRA merged: {len(merged) / t_merged:8.1f} tokens/s")
    print(f"  same tokens: {cached == full == merged}")
    print(f"  speed-up : {(n / t_cache) / (len(full) / t_full):.1f}x (cache), "
          f"{(len(merged) / t_merged) / (len(full) / t_full):.1f}x (cache + merge)")


if __name__ == "__main__":
    main()
