"""The whole assistant at the published sizes, with random weights, measured in one run.

Every component is built from its config straight on the device (`torch.device` as the
default device, in the measuring dtype): nothing is downloaded and no weight passes through
host RAM. Sizes (full): LLaMA-2-7B with M2UGen's biases, LoRA and injection; MERT-v1-330M
(HuBERT layout), ViT-B/16, ViViT-B/16×2; MusicGen small and medium; AudioLDM2-music (its
main widths: T5-large, GPT-2, CLAP, a 4-level UNet; a layout, not the checkpoint's exact
file). `--small` builds the same classes from the tiny preset's configs and runs on the
CPU in a minute or two (what CI can afford); it measures the code paths, not the hardware.

It prints, and writes to `--out` as JSON:
  - tokens/s of greedy decoding: eager without a cache (published), eager KV cache, static
    cache + torch.compile, int8 and int4 weight-only LLMs (torchao; compiled), and how many
    tokens of each agree with the eager cache's;
  - time to the first token with no input, 10 s of music, an image, a video;
  - seconds to render 10 s of music per decoder and setting;
  - peak GPU memory of the whole assistant (bf16, and with the int8 LLM) and peak host RSS
    while building.

    python benchmarks/gpu_suite.py                 # on a CUDA GPU, bf16, full size
    python benchmarks/gpu_suite.py --small         # CPU, tiny shapes, fp32
    python benchmarks/gpu_suite.py --dtype fp16    # a GPU without bf16 (V100)
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import m2ugen  # noqa: E402, F401  (its logging filters before transformers is imported)
from m2ugen.errors import ConfigError  # noqa: E402


# ---- building --------------------------------------------------------------------------
@contextmanager
def on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New tensors are created on `device` in `dtype` (parameters and buffers alike)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def full_configs() -> dict[str, Any]:
    """The published components' shapes (ORIGINAL_M2UGEN.md §1), as HF configs."""
    from transformers import (
        EncodecConfig,
        HubertConfig,
        LlamaConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        T5Config,
        ViTConfig,
        VivitConfig,
    )

    t5_base = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                       num_heads=12, feed_forward_proj="relu")
    encodec = EncodecConfig(sampling_rate=32000, audio_channels=1, normalize=False,
                            upsampling_ratios=[8, 5, 4, 4], hidden_size=128, num_filters=64,
                            num_lstm_layers=2, codebook_size=2048, target_bandwidths=[2.2],
                            use_causal_conv=False, use_conv_shortcut=False)

    def musicgen(layers: int, width: int, heads: int) -> MusicgenConfig:
        dec = MusicgenDecoderConfig(vocab_size=2048, max_position_embeddings=2048,
                                    num_hidden_layers=layers, ffn_dim=4 * width,
                                    num_attention_heads=heads, hidden_size=width,
                                    num_codebooks=4, pad_token_id=2048, bos_token_id=2048)
        return MusicgenConfig(text_encoder=t5_base, audio_encoder=encodec, decoder=dec)

    return {
        "llm": LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                           num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=32, max_position_embeddings=4096,
                           rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1,
                           eos_token_id=2),
        "mert": HubertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                             intermediate_size=4096, feat_extract_norm="layer",
                             do_stable_layer_norm=True, conv_bias=False),
        "vit": ViTConfig(),  # ViT-B/16 at 224: 197 tokens × 768
        "vivit": VivitConfig(),  # ViViT-B/16×2, 32 frames at 224: 3137 tokens × 768
        "musicgen-small": musicgen(24, 1024, 16),
        "musicgen-medium": musicgen(48, 1536, 24),
        "audioldm2": "full",
    }


def small_configs(tiny: Path) -> dict[str, Any]:
    """The tiny preset's configs (same classes, tiny shapes)."""
    from transformers import AutoConfig

    out = {k: AutoConfig.from_pretrained(tiny / k) for k in ("llm", "mert", "vit", "vivit")}
    out["musicgen-small"] = out["musicgen-medium"] = AutoConfig.from_pretrained(
        tiny / "musicgen")
    out["audioldm2"] = "small"
    return out


def init_random(module: torch.nn.Module) -> None:
    """Make every floating tensor finite and non-trivial (constructors already initialise;
    this covers buffers left at zero, e.g. EnCodec's codebooks)."""
    for name, buf in module.named_buffers():
        if buf.is_floating_point() and "embed" in name and not buf.any():
            buf.normal_()


def build_llm(cfg, tokenizer, config, device, dtype):
    from transformers import LlamaForCausalLM

    from m2ugen.modules.llm import wrap_llm

    cfg = type(cfg).from_dict({**cfg.to_dict(), "attention_bias": True, "mlp_bias": True})
    with on(device, dtype):
        llm = wrap_llm(LlamaForCausalLM(cfg), tokenizer, config)
    with torch.no_grad():
        llm.gates.fill_(0.3)  # trained-like: the inputs reach the LLM
    return llm.eval()


def build_encoders(cfgs, tiny: Path, small: bool, device, dtype) -> dict[str, Any]:
    from transformers import (
        AutoImageProcessor,
        HubertModel,
        ViTImageProcessor,
        ViTModel,
        VivitImageProcessor,
        VivitModel,
        Wav2Vec2FeatureExtractor,
    )

    from m2ugen.modules.encoders import ImageEncoder, MusicEncoder, VideoEncoder

    if small:
        mert_proc = Wav2Vec2FeatureExtractor.from_pretrained(tiny / "mert")
        vit_proc = AutoImageProcessor.from_pretrained(tiny / "vit")
        vivit_proc = AutoImageProcessor.from_pretrained(tiny / "vivit")
    else:  # MERT-v1 takes 24 kHz; ViT and ViViT 224 px
        mert_proc = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=24000,
                                             padding_value=0.0, do_normalize=True)
        vit_proc, vivit_proc = ViTImageProcessor(), VivitImageProcessor()
    with on(device, dtype):
        return {"audio": MusicEncoder(HubertModel(cfgs["mert"]).eval(), mert_proc),
                "image": ImageEncoder(ViTModel(cfgs["vit"], add_pooling_layer=False).eval(),
                                      vit_proc),
                "video": VideoEncoder(VivitModel(cfgs["vivit"], add_pooling_layer=False).eval(),
                                      vivit_proc)}


def build_musicgen(cfg, tiny: Path, device, dtype):
    from transformers import AutoProcessor, GenerationConfig, MusicgenForConditionalGeneration

    from m2ugen.modules.decoders.musicgen import MusicGenDecoder

    with on(device, dtype):
        model = MusicgenForConditionalGeneration(cfg).eval()
    init_random(model)
    start = cfg.decoder.bos_token_id
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, pad_token_id=start, bos_token_id=start, do_sample=True,
        guidance_scale=3.0, max_length=1600)
    return MusicGenDecoder(model, AutoProcessor.from_pretrained(tiny / "musicgen"))


def build_audioldm2(kind: str, tiny_aldm: Path, device, dtype):
    """AudioLDM2: the tiny preset's parts' configs (small) or AudioLDM2-music's widths."""
    from diffusers import (
        AudioLDM2Pipeline,
        AudioLDM2ProjectionModel,
        AudioLDM2UNet2DConditionModel,
        AutoencoderKL,
        DDIMScheduler,
    )
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoTokenizer,
        ClapConfig,
        ClapModel,
        GPT2Config,
        GPT2LMHeadModel,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
        T5Config,
        T5EncoderModel,
    )

    from m2ugen.modules.decoders.audioldm2 import AudioLDM2Decoder

    root = tiny_aldm / "audioldm2"
    parts: dict[str, Any] = {
        "tokenizer": AutoTokenizer.from_pretrained(root / "tokenizer"),
        "tokenizer_2": AutoTokenizer.from_pretrained(root / "tokenizer_2"),
        "feature_extractor": AutoFeatureExtractor.from_pretrained(root / "feature_extractor"),
        "scheduler": DDIMScheduler.from_pretrained(root / "scheduler")}
    with on(device, dtype):
        if kind == "small":
            cfg = {k: AutoConfig.from_pretrained(root / k)
                   for k in ("text_encoder", "text_encoder_2", "language_model", "vocoder")}
            parts["unet"] = AudioLDM2UNet2DConditionModel.from_config(
                AudioLDM2UNet2DConditionModel.load_config(root / "unet"))
            parts["vae"] = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
            parts["projection_model"] = AudioLDM2ProjectionModel.from_config(
                AudioLDM2ProjectionModel.load_config(root / "projection_model"))
        else:
            cfg = {"text_encoder": ClapConfig(projection_dim=512),
                   "text_encoder_2": T5Config(vocab_size=32128, d_model=1024, d_kv=64,
                                              d_ff=2816, num_layers=24, num_heads=16,
                                              feed_forward_proj="gated-gelu"),
                   "language_model": GPT2Config(n_embd=768, n_layer=12, n_head=12),
                   "vocoder": SpeechT5HifiGanConfig(
                       model_in_dim=64, sampling_rate=16000, upsample_initial_channel=1024,
                       upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
                       normalize_before=False)}
            cross = [None, 768, 1024]  # self, GPT-2 states, T5 states
            parts["unet"] = AudioLDM2UNet2DConditionModel(
                sample_size=256, in_channels=8, out_channels=8,
                block_out_channels=(128, 256, 384, 640), layers_per_block=2,
                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
                up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
                cross_attention_dim=(cross,) * 4, attention_head_dim=8)
            parts["vae"] = AutoencoderKL(
                in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(128, 256, 512),
                layers_per_block=2, latent_channels=8, sample_size=1024)
            parts["projection_model"] = AudioLDM2ProjectionModel(
                text_encoder_dim=512, text_encoder_1_dim=1024, langauge_model_dim=768)
        parts["text_encoder"] = ClapModel(cfg["text_encoder"])
        parts["text_encoder_2"] = T5EncoderModel(cfg["text_encoder_2"])
        parts["language_model"] = GPT2LMHeadModel(cfg["language_model"])
        parts["language_model"].config.max_new_tokens = 8
        parts["vocoder"] = SpeechT5HifiGan(cfg["vocoder"])
    for name in ("unet", "vae", "projection_model", "text_encoder", "text_encoder_2",
                 "language_model", "vocoder"):
        parts[name].eval()
    return AudioLDM2Decoder(AudioLDM2Pipeline(**parts))


def build_assistant(cfgs, tiny: Path, small: bool, device, dtype):
    """The M2UGen assembly with musicgen-small, on `device`."""
    from transformers import AutoTokenizer

    from m2ugen.config import M2UGenConfig
    from m2ugen.loading import merge_lora_for_inference
    from m2ugen.model import M2UGen
    from m2ugen.presets import preset_config

    config = (M2UGenConfig.load(tiny) if small else preset_config("musicgen-small"))
    tokenizer = AutoTokenizer.from_pretrained(tiny / "tokenizer")  # the [AUD] tokens in it
    llm = build_llm(cfgs["llm"], tokenizer, config, device, dtype)
    encoders = build_encoders(cfgs, tiny, small, device, dtype)
    decoder = build_musicgen(cfgs["musicgen-small"], tiny, device, dtype)
    with on(device, dtype):
        model = M2UGen(config, encoders, llm, decoder=decoder)
    merge_lora_for_inference(model)
    return model.eval()


# ---- measuring -------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def rss_gib() -> float:
    """Peak resident set size of this process so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def gpu_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def media_inputs(model, seconds: float = 10.0) -> dict[str, dict[str, Any]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    spec = model.media_spec
    t = np.arange(int(seconds * spec.sample_rate)) / spec.sample_rate
    size = int(model.encoders["image"].processor.size.get("height", 224))
    return {"none": {},
            "music (10 s)": {"audio": (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)},
            "image": {"image": Image.fromarray(rng.integers(0, 256, (size, size, 3),
                                                            dtype=np.uint8))},
            "video": {"video": rng.integers(0, 256, (spec.num_frames, size, size, 3),
                                            dtype=np.uint8)}}


def decode(model, ids, prompts, n: int, repeat: int = 1,
           **settings: dict[str, Any]) -> dict[str, tuple[list[int], float]]:
    """{name: (greedy tokens of n steps, tokens/s)} for each name → GenerationSettings
    keywords: each warmed up once (compilation, caches), then timed in `repeat` rounds that
    take the settings in turn, the best run kept, so a slower spell of a shared CPU does
    not fall on one setting alone."""
    from m2ugen.generate import GenerationSettings, generate_tokens

    chosen = {name: GenerationSettings(max_new_tokens=n, temperature=0.0, **kw)
              for name, kw in settings.items()}
    for s in chosen.values():
        warm = generate_tokens(model.llm, ids, prompts, s, 0)
        # a compiled step is only fast after a whole run (inductor's first calls still
        # compile); the others need only their first steps
        for _, _ in zip(range(n if s.compile else 4), warm, strict=False):
            pass
        warm.close()
    best: dict[str, tuple[list[int], float]] = {}
    for _ in range(repeat):
        for name, s in chosen.items():
            tokens, seconds = timed(model.device, lambda s=s: [t for t, _ in generate_tokens(
                model.llm, ids, prompts, s, 0)])
            if name not in best or seconds < best[name][1]:
                best[name] = (tokens, seconds)
    return {name: (tokens, len(tokens) / seconds) for name, (tokens, seconds) in best.items()}


def first_token(model, ids, media: dict[str, Any], repeat: int = 1) -> float:
    from m2ugen.generate import GenerationSettings, generate_tokens

    def run() -> int:
        with torch.no_grad():
            prompts = model.media_prompts(1, **media)
        gen = generate_tokens(model.llm, ids, prompts, GenerationSettings(
            max_new_tokens=2, temperature=0.0), 0)
        token = next(gen)[0]
        gen.close()
        return token

    run()  # warm-up
    return min(timed(model.device, run)[1] for _ in range(repeat))


def render(decoder, device, dtype, seconds: float, repeat: int = 1, **kw) -> float:
    """Seconds to render `seconds` of music from random conditioning: the best of `repeat`
    runs after a 1 s warm-up."""
    n, width = decoder.cond_shape
    cond = torch.randn(1, n, width, device=device, dtype=dtype) * 0.1
    params = inspect.signature(decoder.generate).parameters
    kw = {k: v for k, v in kw.items() if k in params}
    decoder.generate(cond, min(seconds, 1.0), 3.0, 0, **kw)  # warm-up
    return min(timed(device, lambda: decoder.generate(cond, seconds, 3.0, 0, **kw))[1]
               for _ in range(repeat))


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype: auto is bf16 on a GPU (the measuring dtype) and fp32 on the CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny shapes on the CPU (CI)")
    ap.add_argument("--device", default=None, help="default: cuda, or cpu with --small")
    ap.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                    help="auto: bf16 on a GPU, fp32 on the CPU; fp16 for GPUs without bf16 "
                         "(V100); bf16 on the CPU fits the full-size build in 24 GB of RAM")
    ap.add_argument("--new-tokens", type=int, default=None,
                    help="decoded tokens per measurement (default 256; 32 with --small)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="music rendered per measurement (default 10; 1 with --small)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled runs")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed runs per measurement, the best kept (default 1; 3 with "
                         "--small, where other work on the CPU makes single runs vary)")
    ap.add_argument("--out", type=Path, help="write the results here as JSON")
    args = ap.parse_args(argv)
    from m2ugen.conversation import build_prompt_ids
    from m2ugen.model import M2UGen
    from m2ugen.modules.quantize import check_quantize, quantize_llm
    from m2ugen.presets import tiny_dir
    from m2ugen.presets.tiny import ensure_tiny

    small = args.small
    device = torch.device(args.device or ("cpu" if small else "cuda"))
    dtype = pick_dtype(args.dtype, device)
    n_new = args.new_tokens or (32 if small else 256)
    seconds = args.seconds or (1.0 if small else 10.0)
    repeat = args.repeat or (3 if small else 1)
    torch.manual_seed(0)
    tiny = ensure_tiny(tiny_dir("musicgen"), model_cls=M2UGen)  # tokenizers, processors
    tiny_aldm = ensure_tiny(tiny_dir("audioldm2"), decoder="audioldm2", model_cls=M2UGen)
    cfgs = small_configs(tiny) if small else full_configs()
    res: dict[str, Any] = {"device": str(device), "gpu": torch.cuda.get_device_name(device)
                           if device.type == "cuda" else None, "dtype": str(dtype),
                           "size": "small (tiny shapes)" if small else "full (published)",
                           "new_tokens": n_new, "music_seconds": seconds, "repeat": repeat,
                           "threads": torch.get_num_threads()}
    rss_before = rss_gib()
    model, res["build_s"] = timed(device, lambda: build_assistant(cfgs, tiny, small, device,
                                                                  dtype))
    res["host_rss_peak_gib"] = rss_gib()
    res["host_rss_build_gib"] = res["host_rss_peak_gib"] - rss_before
    res["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"built in {res['build_s']:.1f} s ({res['params_m']:,.1f} M parameters)",
          file=sys.stderr)
    ids, _ = build_prompt_ids(model.tokenizer, model.config.prompt_template, [],
                              "Describe this music in detail, then compose a variation.", 4096)
    prompts = model.media_prompts(1)
    tps: dict[str, float] = {}
    agree: dict[str, int] = {}
    res["tokens_per_s"], res["agree_with_eager_cache"] = tps, agree
    res["ttft_s"], res["render_s"], res["gpu_peak_gib"] = {}, {}, {}
    failed = res.setdefault("failed", {})

    def attempt(name: str, fn: Callable[[], Any]) -> Any:
        """One measurement; a failure is printed with its traceback and recorded (in the
        table and the JSON), and the suite goes on: one GPU run reports all that works."""
        try:
            return fn()
        except Exception as e:  # reported, never dropped
            traceback.print_exc()
            failed[name] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            return None

    def measure_decoding(kinds: dict[str, dict[str, Any]], ref: list[int] | None) -> None:
        for name, (toks, rate) in decode(model, ids, prompts, n_new, repeat, **kinds).items():
            tps[name] = rate
            if ref is not None:
                agree[name] = sum(a == b for a, b in zip(toks, ref, strict=True))

    eager = decode(model, ids, prompts, n_new, repeat, **{
        "eager, KV cache": {}, "eager, no cache (published)": {"use_cache": False}})
    ref = eager["eager, KV cache"][0]
    for name, (_, rate) in eager.items():
        tps[name] = rate
    agree["eager, no cache (published)"] = sum(
        a == b for a, b in zip(eager["eager, no cache (published)"][0], ref, strict=True))
    compiled = {"cache": "static", "compile": True}
    if not args.no_compile:
        attempt("static cache + compile", lambda: measure_decoding(
            {"static cache + compile": compiled}, ref))
    for name, media in media_inputs(model).items():
        res["ttft_s"][name] = attempt(f"first token, {name}",
                                      lambda media=media: first_token(model, ids, media, repeat))
    res["render_s"]["musicgen-small"] = attempt("render musicgen-small", lambda: render(
        model.decoder, device, dtype, seconds, repeat))

    def whole_assistant() -> float | None:
        """Peak memory of one image reply + its music."""
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        decode(model, ids, model.media_prompts(1, **media_inputs(model)["image"]), 32,
               reply={})
        render(model.decoder, device, dtype, seconds)
        return gpu_gib(device)

    res["gpu_peak_gib"]["bf16" if dtype == torch.bfloat16 else str(dtype)] = attempt(
        "peak memory", whole_assistant)
    for mode in ("int8", "int4"):
        key = f"{mode} LLM" + ("" if args.no_compile else " + compile")
        try:
            check_quantize(mode, device, dtype)
        except ConfigError as e:
            res.setdefault("skipped", {})[key] = str(e)
            continue
        if mode == "int4":  # from the unquantized weights again
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            model = build_assistant(cfgs, tiny, small, device, dtype)
        if attempt(f"quantize {mode}",
                   lambda m=model, mode=mode: quantize_llm(m.llm, mode)) is None:
            continue
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        kw = {} if args.no_compile else compiled
        attempt(key, lambda key=key, kw=kw: measure_decoding({key: kw}, ref))
        res["gpu_peak_gib"][key] = attempt(f"peak memory, {key}", whole_assistant)
    decoder = model.decoder
    model._decoder = None  # the other decoders replace it, one at a time
    del decoder
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    res["render_s"]["musicgen-medium"] = attempt("render musicgen-medium", lambda: render(
        build_musicgen(cfgs["musicgen-medium"], tiny, device, dtype), device, dtype, seconds,
        repeat))
    gc.collect()
    aldm = attempt("build audioldm2", lambda: build_audioldm2(cfgs["audioldm2"], tiny_aldm,
                                                              device, dtype))
    if aldm is not None:
        res["render_s"]["audioldm2, fast default"] = attempt(
            "render audioldm2", lambda: render(aldm, device, dtype, seconds, repeat))
        ddim = 50 if small else 200  # the published 200 steps cost minutes on a CPU
        name = f"audioldm2, ddim {ddim}" + ("" if small else " (published)")
        res["render_s"][name] = attempt(f"render {name}", lambda: render(
            aldm, device, dtype, seconds, min(repeat, 2), scheduler="ddim", steps=ddim))
    report(res)
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))
    return res


def report(res: dict[str, Any]) -> None:
    where = res["gpu"] or f"CPU, {res['threads']} threads"
    print(f"\n{res['size']} on {where}, {res['dtype']}; {res['new_tokens']} new tokens; "
          f"{res['params_m']:,.1f} M parameters built in {res['build_s']:.1f} s, host RSS peak "
          f"{res['host_rss_peak_gib']:.2f} GiB")
    base = res["tokens_per_s"]["eager, KV cache"]
    print("\n| decoding | tokens/s | × eager cache | × no cache | tokens = eager cache |")
    print("|---|---:|---:|---:|---:|")
    none = res["tokens_per_s"]["eager, no cache (published)"]
    for name, v in res["tokens_per_s"].items():
        same = res["agree_with_eager_cache"].get(name)
        agreed = "" if same is None else f"{same}/{res['new_tokens']}"
        print(f"| {name} | {v:.1f} | {v / base:.2f} | {v / none:.1f} | {agreed} |")
    print("\n| first token with | seconds |\n|---|---:|")
    for name, v in res["ttft_s"].items():
        print(f"| {name} | {'failed' if v is None else f'{v:.3f}'} |")
    print(f"\n| render {res['music_seconds']:g} s of music | seconds | real-time factor |")
    print("|---|---:|---:|")
    for name, v in res["render_s"].items():
        if v is None:
            print(f"| {name} | failed | |")
        else:
            print(f"| {name} | {v:.2f} | {res['music_seconds'] / v:.2f} |")
    print("\n| peak GPU memory | GiB |\n|---|---:|")
    cpu = res["gpu"] is None
    for name, v in res["gpu_peak_gib"].items():
        print(f"| {name} | {'n/a (CPU)' if cpu else 'failed' if v is None else f'{v:.2f}'} |")
    for name, why in res.get("skipped", {}).items():
        print(f"skipped {name}: {why}")
    for name, why in res.get("failed", {}).items():
        print(f"FAILED {name}: {why}")


if __name__ == "__main__":
    main()
