"""`m2ugen chat`: the checks that need no model, one reply, and the interactive loop.

Every mistake a user can make is found before the model loads (a second, not a load):
settings, the prompt, `--out`, `--device`, and the attachments themselves, which are
decoded the way the model's encoders want them from its config files alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from m2ugen.cli.common import candidate_paths, check_attachment, flag_name
from m2ugen.errors import M2UGenError, check_device

log = logging.getLogger("m2ugen")

DEFAULT_OUT = Path("m2ugen_music.wav")  # --out when not given
_MAX_NAME = 255  # bytes in a file name on Linux, macOS and Windows file systems
_HELP = ("commands: /audio PATH, /image PATH, /video PATH attach media; /reset clears the "
         "conversation; /quit leaves")


def _load_attachments(args: argparse.Namespace) -> dict[str, Any]:
    """--audio / --image / --video → {modality: loaded value}, before the model loads: the
    model's media spec (audio rate, video frames) comes from its config files alone."""
    from m2ugen.config import MODALITIES
    from m2ugen.media import load_attachment
    from m2ugen.model import M2UGen

    paths = {m: getattr(args, m) for m in MODALITIES if getattr(args, m)}
    for modality, path in paths.items():
        check_attachment(path, modality)
    if not paths:
        return {}
    spec = M2UGen.read_media_spec(args.model)
    return {modality: load_attachment(modality, path, spec) for modality, path in paths.items()}


def _check_out(out: Path, writing: bool) -> None:
    """Refuse an --out that cannot be a WAV file before any slow work (where it can be
    written at all: `writing`, i.e. not --music never)."""
    if out.suffix.lower() != ".wav":
        raise M2UGenError(f"--out {out}: music is written as WAV; use a .wav name")
    if not writing:
        return
    if out.is_dir():
        raise M2UGenError(f"--out {out}: is a directory; name a file, e.g. {out / 'music.wav'}")
    # the file is written beside it as `.NAME.XXXXXXXX.wav.tmp` first: 18 bytes more
    if len(os.fsencode(out.name)) > _MAX_NAME - 18:
        raise M2UGenError(f"--out {out.name[:40]}...: the file name is too long "
                          f"({len(os.fsencode(out.name))} bytes; at most {_MAX_NAME - 18})")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the directories in between are created on writing
    if not parent.is_dir():
        raise M2UGenError(f"--out {out}: {parent} is a file, not a directory; choose another "
                          "path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise M2UGenError(f"--out {out}: {parent} is not writable; choose another path")


def _reply(session, message: str, media: dict, settings, music, out: Path) -> None:
    from m2ugen.media import save_audio

    stream = session.stream(message, settings=settings, **media)
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    result = stream.result
    rendered = session.render(result, music)
    if rendered is None:
        if music.music == "auto":
            log.info("no music: the reply has no [AUD] tokens (use --music always to force)")
        return
    paths = candidate_paths(out, len(rendered.waveforms))
    for path, wave in zip(paths, rendered.waveforms, strict=True):
        save_audio(path, wave, rendered.sample_rate)
    used = ", ".join(result.inputs_used) or "text only"
    stereo = " stereo" if rendered.channels == 2 else ""
    print(f"wrote {', '.join(map(str, paths))} ({rendered.seconds:g} s{stereo} at "
          f"{rendered.sample_rate} Hz, condition={rendered.condition}, inputs: {used}, "
          f"seed {rendered.seed})", file=sys.stderr)
    if rendered.scores is not None:
        print(ranking_text(rendered, paths), file=sys.stderr)


def ranking_text(rendered, paths: list[Path]) -> str:
    """The judge's ranking as printed: a header, then one line per file, best first."""
    text = rendered.judged_text if len(rendered.judged_text) <= 60 else \
        rendered.judged_text[:57] + "..."
    lines = [f"ranked by {rendered.judge} against {text!r}, best first:"]
    for rank, (path, score, index) in enumerate(
            zip(paths, rendered.scores, rendered.ranking, strict=True), 1):
        lines.append(f"  {rank}. {path}  score {score:+.4f}  (rendered as candidate "
                     f"{index + 1})")
    return "\n".join(lines)


def _load_judge(args: argparse.Namespace, music, makes_music: bool):
    """The judge of --rerank, loaded before the model (a bad --judge costs seconds, not a
    model load); None when no music is ranked."""
    if music.rerank == "none":
        if args.judge is not None:
            raise M2UGenError(f"--judge {args.judge}: judges only with --rerank clap; add "
                              "--rerank clap --num-candidates N, or drop --judge")
        if args.rerank_against != "request":  # the default; anything else asks for a ranking
            raise M2UGenError(f"--rerank-against {args.rerank_against}: chooses what --rerank "
                              "clap compares with; add --rerank clap --num-candidates N, or "
                              "drop --rerank-against")
        return None
    if not makes_music:
        return None
    from m2ugen.eval.judge import ClapJudge

    return ClapJudge.load(args.judge, args.device)


def _load_model(args: argparse.Namespace, decoder: bool):
    """The model for generation: LoRA folded in where it pays, quantized on request."""
    from m2ugen.loading import merge_lora_for_inference
    from m2ugen.model import M2UGen
    from m2ugen.modules.quantize import quantize_llm

    model = M2UGen.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                   trust_remote_code=args.trust_remote_code, decoder=decoder)
    merge_lora_for_inference(model)  # generation only: where it pays (logged)
    if args.quantize:
        quantize_llm(model.llm, args.quantize)
    return model


def _cmd_batch(args: argparse.Namespace, settings, music) -> int:
    from dataclasses import asdict

    from m2ugen.cli.batch import (
        REPLIES,
        batch_identity,
        check_batch_args,
        read_requests,
        replies_done,
        run_batch,
    )
    from m2ugen.model import M2UGen
    from m2ugen.modules.quantize import check_quantize

    check_batch_args(args)
    check_device(args.device, "--device")
    check_quantize(args.quantize, args.device, None)
    lines = read_requests(args.batch, M2UGen.read_media_spec(args.model))
    # what the replies depend on (--batch-size does not: a batch answers as one at a time)
    identity = batch_identity(args.batch, model=args.model, dtype=args.dtype,
                              device=args.device, quantize=args.quantize, judge=args.judge,
                              settings=asdict(settings), music=asdict(music))
    if len(replies_done(args.out_dir, identity, lines)) == len(lines):  # before the load
        print(f"{args.out_dir / REPLIES}: all {len(lines)} replies are already "
              "there (delete it to answer again)", file=sys.stderr)
        return 0
    modes = {music.music} | {b.music for b in lines if b.music}
    judge = _load_judge(args, music, makes_music=modes != {"never"})
    model = _load_model(args, decoder=modes != {"never"})
    run_batch(model, lines, settings, music, args.out_dir, args.batch_size, judge, identity)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from m2ugen.chat import ChatSession, GenerationSettings, check_utf8
    from m2ugen.modules.quantize import check_quantize
    from m2ugen.music import MusicSettings

    # every check that needs no model first: a mistake costs a second, not a model load
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                  cache=args.cache, compile=args.compile)
    settings.validate(flag_name)
    music = MusicSettings(music=args.music, condition=args.condition, seconds=args.seconds,
                          guidance=args.guidance, steps=args.steps, scheduler=args.scheduler,
                          seed=args.seed, num_candidates=args.num_candidates,
                          rerank=args.rerank, rerank_against=args.rerank_against,
                          source=args.source)
    if args.edit_strength is not None:  # else the decoders' EDIT_STRENGTH
        music.edit_strength = args.edit_strength
    music.validate(flag_name)
    if args.batch is not None:  # many requests from a file (cli/batch.py)
        return _cmd_batch(args, settings, music)
    if not args.prompt and not args.interactive:
        raise M2UGenError("no prompt given; pass PROMPT or use --interactive")
    if args.edit_strength is not None and not args.audio and not args.interactive:
        raise M2UGenError(f"--edit-strength {args.edit_strength:g}: says how much of an edit "
                          "of attached music is new, and none is attached; add --audio FILE, "
                          "or drop --edit-strength")
    if args.prompt:
        check_utf8(args.prompt, "the prompt")
    if args.out is None:
        args.out = DEFAULT_OUT
    _check_out(args.out, writing=music.music != "never")
    check_device(args.device, "--device")
    check_quantize(args.quantize, args.device, None)
    media = _load_attachments(args)
    judge = _load_judge(args, music, makes_music=music.music != "never")
    # --music never makes no music: the decoder (GBs at full size) is not loaded at all
    session = ChatSession(_load_model(args, decoder=music.music != "never"), judge=judge)
    if args.prompt:
        _reply(session, args.prompt, media, settings, music, args.out)
        media = {}
    if args.interactive:
        _interactive(session, settings, music, media, args.out)
    return 0


def _interactive(session, settings, music, media: dict, out: Path) -> None:
    from m2ugen.config import MODALITIES
    from m2ugen.media import load_media

    print(_HELP)
    # bytes that are not UTF-8 reach us as lone surrogates (a file name may legitimately
    # hold them; a message is refused in one line by ChatSession.stream) instead of an
    # exception that would also drop the rest of a piped input's buffer
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")
    spec = session.model.media_spec
    loaders = {f"/{m}": m for m in MODALITIES}
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
        except UnicodeDecodeError as e:  # a stdin that could not be reconfigured
            print(f"error: the line is not valid UTF-8 text (byte 0x{e.object[e.start]:02x}); "
                  "type it again or set the terminal encoding to UTF-8", file=sys.stderr)
            continue
        if not line:
            continue
        cmd, _, rest = line.partition(" ")
        try:
            if cmd in ("/quit", "/exit"):
                return
            if cmd == "/reset":
                session.reset()
                media = {}
                print("(conversation cleared)")
            elif cmd in loaders:
                name = loaders[cmd]
                value = load_media(name, rest.strip(), spec)
                media[name] = value
                print(f"(attached {name}: {rest.strip()})")
            elif cmd.startswith("/"):
                print(_HELP)
            else:
                print("m2ugen> ", end="")
                _reply(session, line, media, settings, music, out)
                media = {}
        except M2UGenError as e:  # stay in the conversation after a user mistake
            print(f"error: {e}", file=sys.stderr)
