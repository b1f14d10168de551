"""The `m2ugen` sub-commands other than chat: each turns parsed options into one library
call (the library functions live beside what they do: presets, training, data, convert,
info, app) and prints what it made. Heavy imports wait inside each command, so `m2ugen
--help` and a mistyped option answer at once."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from m2ugen.cli.common import flag_name
from m2ugen.errors import ConfigError, check_device, check_number, check_seed

log = logging.getLogger("m2ugen")


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from m2ugen.model import M2UGen
    from m2ugen.presets.tiny import build_tiny

    check_seed(args.seed, "--seed")
    if args.trained:
        from m2ugen.training.tiny_trained import Recipe, build_tiny_trained

        if args.decoder != "musicgen":
            raise ConfigError("--trained builds a MusicGen model only; drop --decoder")
        out = build_tiny_trained(args.out, Recipe(seed=args.seed), force=args.force)
        print(f"wrote the tiny-trained preset to {out}")
        return 0
    out = build_tiny(args.out, decoder=args.decoder, seed=args.seed, force=args.force,
                     model_cls=M2UGen)
    print(f"wrote the tiny {args.decoder} preset to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from m2ugen.training.config import load_train_config
    from m2ugen.training.loop import train

    cfg = load_train_config(args.config, args.overrides)
    if args.check:
        return 0
    if args.dry_run:
        from m2ugen.training.memory import parse_card, report

        gpus = check_number(args.gpus, "--gpus", integer=True, minimum=1, maximum=65536)
        text, _ = report(cfg, gpus, parse_card(args.card) if args.card else None)
        print(text)
        return 0
    args.written = cfg.out  # named by a write error that names no file
    out = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"stage {cfg.stage} done: model directory {out} "
              f"(chat with it: m2ugen chat --model {out} ...)")
    return 0


def cmd_train_decoder(args: argparse.Namespace) -> int:
    from m2ugen.training.config import load_train_config
    from m2ugen.training.decoder_config import DecoderTrainConfig
    from m2ugen.training.decoder_loop import train_decoder

    cfg = load_train_config(args.config, args.overrides, cls=DecoderTrainConfig)
    args.written = cfg.out  # named by a write error that names no file
    out = train_decoder(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"decoder fine-tuned: model directory {out} with its decoder in {out}/decoder "
              f"(chat with it: m2ugen chat --model {out} ...; m2ugen info {out})")
    return 0


def cmd_cache_features(args: argparse.Namespace) -> int:
    from m2ugen.training.config import load_train_config
    from m2ugen.training.features import cache_features

    cfg = load_train_config(args.config, args.overrides)
    args.written = cfg.feature_cache
    cache = cache_features(cfg)
    print(f"feature cache {cfg.feature_cache}: {len(cache)} entries")
    return 0


def cmd_synth_data(args: argparse.Namespace) -> int:
    from m2ugen.data.synth import MAX_ITEMS, check_out, synthesize

    check_seed(args.seed, "--seed")
    for field in ("n_audio", "n_images", "n_videos"):  # files are written per item: a bound
        check_number(getattr(args, field), flag_name(field), integer=True, minimum=1,
                     maximum=MAX_ITEMS)
    check_out(args.out)
    spec, counts = synthesize(args.out, seed=args.seed, n_audio=args.n_audio,
                              n_images=args.n_images, n_videos=args.n_videos)
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"wrote {spec} (records: {summary})")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from m2ugen.convert import convert

    report = convert(args.checkpoint, args.out, decoder=args.decoder, llm=args.llm,
                     tokenizer=args.tokenizer, mert=args.mert, vit=args.vit, vivit=args.vivit,
                     decoder_path=args.decoder_path, skip_checks=args.skip_checks,
                     force=args.force)
    print(report.format())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from m2ugen.info import describe

    path = Path(args.dir)
    if not path.is_dir():
        what = "is a file" if path.is_file() else "no such directory"
        raise ConfigError(f"{path}: not a model directory ({what}); `m2ugen info` takes a "
                          "directory holding m2ugen.json, e.g. ckpts/tiny or a training run's "
                          "out=")
    print(describe(path))
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    """Serve the chat app until interrupted."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the app serves from threads
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own startup requests
    from m2ugen.app import Limits, build_app, check_port, launch
    from m2ugen.generate import GenerationSettings
    from m2ugen.modules.quantize import check_quantize

    # everything that needs no model first: a mistake costs a second, not a model load
    check_number(args.max_upload_mb, "--max-upload-mb", above=0.0)
    concurrency = check_number(args.concurrency, "--concurrency", integer=True, minimum=1)
    check_device(args.device, "--device")
    check_quantize(args.quantize, args.device, None)
    GenerationSettings(cache=args.cache, compile=args.compile).validate(flag_name)
    check_port(args.host, args.port)
    examples = args.examples_dir
    if examples is not None and not examples.is_dir():  # generated, never downloaded
        from m2ugen.examples import make_examples

        make_examples(examples)
        print(f"wrote example media to {examples}")
    demo = build_app(args.model, device=args.device, dtype=args.dtype,
                     trust_remote_code=args.trust_remote_code,
                     limits=Limits(max_upload_mb=args.max_upload_mb, concurrency=concurrency),
                     examples_dir=examples, judge=args.judge, cache=args.cache,
                     compile=args.compile, quantize=args.quantize)
    launch(demo, host=args.host, port=args.port, share=args.share,
           max_upload_mb=args.max_upload_mb, examples_dir=examples)
    return 0
