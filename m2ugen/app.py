"""The Gradio chat app: a multimodal, multi-turn music assistant.

One :class:`AssistantApp` holds the loaded model; everything a visitor owns (their
:class:`~m2ugen.chat.ChatSession`, the messages shown, the music made for them, a private
folder for it) lives in a :class:`VisitorState` kept in `gr.State`, never in module
globals (ORIGINAL_M2UGEN.md §5.5). Generation state travels with each call (DESIGN.md §7,
"Injection as a forward hook"), so one loaded model can serve several visitors at once:
every event that runs the model shares one queue per loaded model, `Limits.concurrency`
requests at a time (`m2ugen app --concurrency N`; default 1, since each request holds its
own activations and KV cache). Message handling is plain functions, testable without a
browser.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import numbers
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from m2ugen.chat import ChatSession, GenerationSettings
from m2ugen.checkpoint import TRAINED_NAME
from m2ugen.conversation import Turn
from m2ugen.errors import (
    ChatError,
    ConfigError,
    M2UGenError,
    MediaError,
    check_number,
    check_seed,
)
from m2ugen.loading import merge_lora_for_inference
from m2ugen.media import MediaSpec, guess_modality, load_attachment, save_audio
from m2ugen.model import M2UGen
from m2ugen.modules.decoders import EDIT_STRENGTH, SCHEDULERS
from m2ugen.modules.quantize import check_quantize, quantize_llm
from m2ugen.music import MAX_SECONDS, MUSIC_MODES, RERANKERS, MusicResult, MusicSettings

log = logging.getLogger("m2ugen")

TITLE = "M2UGen — chat about music, make music from text, images or video"
TINY_NOTICE = (
    "**This is the tiny smoke-test model: random, untrained weights.** Its text is gibberish "
    "and its music is noise; it only shows that every code path works. README.md → "
    "*Real weights* explains how to run a trained model (`m2ugen app --model DIR`)."
)
TINY_TRAINED_NOTICE = (
    "**This is the tiny-trained model: tiny components trained here on synthetic data "
    "only.** It knows what that data holds: 5 instruments (piano, organ, strings, bass, "
    "drums and bass), tempos 80–140 BPM and 24 keys in music; 8 colours (red, green, blue, "
    "yellow, purple, orange, white, black) and 3 shapes in pictures; 4 directions (left to "
    "right, right to left, upward, downward) in videos — ask it the questions of the "
    "examples below, about media like theirs (`m2ugen synth-data`). `m2ugen eval synth` "
    "measures how often it is right on held-out media: instrument 100 %, the shape's colour "
    "93 %, the background's 96 %, direction 85 %; tempo and key hardly better than chance "
    "(README.md says why). Its music decoder is an untrained random MusicGen: "
    "the music is noise. README.md → *Real weights* explains how to run a real model "
    "(`m2ugen app --model DIR`)."
)
UNTRAINED_NOTICE = (
    "**This model has no trained tensors (adapters, gates, projector)**: it ignores your "
    "media. README.md → *Real weights* explains where trained weights come from."
)
EXAMPLES = (  # (prompt, file in the examples folder or None): m2ugen.examples writes them
    ("Compose music that matches the mood of this picture.", "sunset.png"),
    ("Describe this music: instruments, tempo and mood.", "piano_120bpm.wav"),
    ("Write a soundtrack for this video.", "shapes.mp4"),
    ("Compose a calm piano piece for a rainy evening.", None),
)
SYNTH_EXAMPLES = (  # for the tiny-trained preset: held-out synthetic media, its questions
    ("What instrument is playing?", "synth_piano.wav"),
    ("What instrument is playing?", "synth_drums.wav"),
    ("What instrument is playing?", "synth_strings.wav"),
    ("What colour is the shape?", "synth_shape.png"),
    ("What colour is the background?", "synth_shape.png"),
    ("Which way does it move?", "synth_motion.mp4"),
    ("A calm piano arpeggio in C major at 80 BPM.", None),
)
# The settings sliders: field → (label, minimum, maximum). The panel is built from it and
# make_settings enforces the same ranges, since the API can send any JSON value.
SLIDERS: dict[str, tuple[str, float, float]] = {
    "temperature": ("Temperature", 0.0, 2.0),
    "top_p": ("Top-p", 0.05, 1.0),
    "max_new_tokens": ("Max new tokens", 8, 512),
    "seconds": ("Music seconds", 1, MAX_SECONDS),  # past the decoder's window: windowed
    "guidance": ("Guidance", 0.0, 10.0),
    "steps": ("Decoder steps", 0, 200),
    "num_candidates": ("Candidates", 1, 8),
    "edit_strength": ("Edit strength", 0.05, 1.0),
}
LABELS = {**{k: v[0] for k, v in SLIDERS.items()}, "music": "Music", "condition": "Condition",
          "seed": "Seed", "scheduler": "Sampler", "rerank": "Rerank",
          "source": "Hear the source", "stereo": "Stereo"}
_INTEGER_SETTINGS = ("max_new_tokens", "steps", "num_candidates")


@dataclass
class Attachment:
    path: Path
    modality: str  # "audio", "image" or "video"


@dataclass
class VisitorState:
    """One visitor's conversation; lives in `gr.State`, deleted with the browser session."""

    session: ChatSession
    workdir: Path  # this visitor's generated music, under the app's media root
    messages: list[dict[str, Any]] = field(default_factory=list)  # what the chatbot shows
    last_music: Path | None = None  # music of the last reply: the input of an edit follow-up
    turns: int = 0


@dataclass
class Limits:
    max_upload_mb: float = 200.0
    max_audio_seconds: float = 300.0
    max_video_seconds: float = 600.0
    concurrency: int = 1  # requests one loaded model serves at once (the chat event's limit)


def parse_message(value: dict[str, Any] | str | None) -> tuple[str, list[Attachment]]:
    """A MultimodalTextbox value → (text, attachments); unknown file types raise MediaError."""
    if value is None:
        return "", []
    if isinstance(value, str):
        return value.strip(), []
    files: list[Attachment] = []
    for item in value.get("files") or []:
        raw = item.get("path") if isinstance(item, dict) else item
        if not raw:
            raise MediaError(f"unreadable attachment {item!r}; attach the file again")
        path = Path(raw)
        files.append(Attachment(path, guess_modality(path)))
    seen = [a.modality for a in files]
    for modality in set(seen):
        if seen.count(modality) > 1:
            raise MediaError(f"{seen.count(modality)} {modality} files attached; attach at most "
                             f"one {modality} file per message")
    return (value.get("text") or "").strip(), files


def check_size(path: Path, max_mb: float) -> None:
    """Refuse files over `max_mb` megabytes (the server's own limit guards uploads too)."""
    size = path.stat().st_size if path.is_file() else 0
    if size > max_mb * 1024 * 1024:
        raise MediaError(f"{path.name}: {size / 2**20:.1f} MB is over the {max_mb:g} MB upload "
                         "limit; send a shorter or smaller file")


def load_attachments(files: Sequence[Attachment], spec: MediaSpec,
                     max_upload_mb: float) -> dict[str, Any]:
    """Load each attachment as `spec` asks (`load_attachment`: audio at its own rate)
    → {"audio"|"image"|"video": data}."""
    media: dict[str, Any] = {}
    for a in files:
        check_size(a.path, max_upload_mb)
        media[a.modality] = load_attachment(a.modality, a.path, spec)
    return media


def setting_name(field: str) -> str:
    """A setting as the visitor knows it: the panel label, plus the API parameter name
    where it differs ("Top-p (top_p)")."""
    label = LABELS.get(field, field)
    return label if label.lower() == field else f"{label} ({field})"


def make_settings(temperature: Any, top_p: Any, max_new_tokens: Any, music: Any,
                  seconds: Any, guidance: Any, steps: Any, condition: Any,
                  seed: Any, scheduler: Any = "dpm++", num_candidates: Any = 1,
                  rerank: Any = "none", edit_strength: Any = EDIT_STRENGTH,
                  hear_source: Any = True) -> tuple[GenerationSettings, MusicSettings]:
    """The settings panel's values → validated settings; seed < 0 or empty = random,
    steps 0 = the sampler's default (AudioLDM2: 20 with dpm++, 200 with ddim).

    The values arrive unprocessed (the chat event turns gradio's preprocessing off), so an
    API call may send anything JSON holds — NaN, strings, null, huge numbers: each is
    checked here against the panel's ranges and by the settings' own `validate`, and a
    mistake is one ChatError naming the setting, shown in the chat.
    """
    values = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
              "seconds": seconds, "guidance": guidance, "steps": steps,
              "num_candidates": num_candidates, "edit_strength": edit_strength}
    for key, value in values.items():
        _, low, high = SLIDERS[key]
        values[key] = check_number(value, setting_name(key), minimum=low, maximum=high,
                                   integer=key in _INTEGER_SETTINGS, error=ChatError)
    random_seed = seed is None or seed == "" or (
        isinstance(seed, numbers.Real) and not isinstance(seed, bool) and math.isfinite(seed)
        and seed < 0)
    seed_value = None if random_seed else check_seed(seed, setting_name("seed"), ChatError)
    gen = GenerationSettings(max_new_tokens=values["max_new_tokens"],
                             temperature=values["temperature"], top_p=values["top_p"],
                             seed=seed_value)
    mus = MusicSettings(music=music, condition=condition, seconds=values["seconds"],
                        guidance=values["guidance"], steps=values["steps"] or None,
                        scheduler=scheduler, seed=seed_value,
                        num_candidates=values["num_candidates"], rerank=rerank,
                        edit_strength=values["edit_strength"],
                        source="hear" if _flag(hear_source, "source") else "ignore")
    gen.validate(setting_name)
    mus.validate(setting_name)
    return gen, mus


def _flag(value: Any, field: str) -> bool:
    """A checkbox's value, which an API call may send as anything: a bool or a ChatError."""
    if not isinstance(value, bool):
        raise ChatError(f"{setting_name(field)}={value!r}: use true or false")
    return value


def user_messages(text: str, files: Sequence[Attachment]) -> list[dict[str, Any]]:
    """The chatbot messages showing what the visitor sent: each file, then the text."""
    shown: list[dict[str, Any]] = [{"role": "user", "content": {"path": str(a.path)}}
                                   for a in files]
    if text:
        shown.append({"role": "user", "content": text})
    return shown


def error_message(error: M2UGenError) -> dict[str, Any]:
    return {"role": "assistant", "content": f"⚠️ {error}"}


def music_message(path: Path, label: str | None = None) -> dict[str, Any]:
    return {"role": "assistant",
            "content": gr.Audio(value=str(path), buttons=["download"],
                                show_label=label is not None, label=label or "music",
                                interactive=False)}


def candidate_labels(rendered: MusicResult) -> list[str] | None:
    """The players' labels of several candidates, best first when ranked ("best of 3 · CLAP
    score +0.312", "2 of 3 · …"); None for a single waveform (shown unlabelled)."""
    n = len(rendered.waveforms)
    if n == 1:
        return None
    if rendered.scores is None:
        return [f"candidate {k} of {n}" for k in range(1, n + 1)]
    return [f"{'best' if k == 1 else k} of {n} · score {score:+.4f} (rendered as {i + 1})"
            for k, (score, i) in enumerate(zip(rendered.scores, rendered.ranking,
                                               strict=True), 1)]


class AssistantApp:
    """The loaded model and the per-visitor chat logic around it."""

    def __init__(self, model: M2UGen, limits: Limits | None = None,
                 media_root: Path | None = None, judge: str | None = None,
                 cache: str = "dynamic", compile: bool = False) -> None:
        self.model = model
        # how every reply decodes (chat's --cache / --compile), checked now
        self.decoding = {"cache": cache, "compile": compile}
        GenerationSettings(**self.decoding).validate()
        self.judge_ref = judge  # the --rerank judge, loaded when first asked for
        self._judge = None
        self._judge_lock = threading.Lock()
        self.limits = limits or Limits()
        self.concurrency = check_number(self.limits.concurrency, "concurrency", integer=True,
                                        minimum=1)
        # the model's encoders' needs, within the app's length limits
        self.media_spec = dataclasses.replace(
            model.media_spec, max_audio_seconds=self.limits.max_audio_seconds,
            max_video_seconds=self.limits.max_video_seconds)
        # Generated music goes under Gradio's temp dir, which it may serve from.
        parent = Path(media_root or gr.utils.get_upload_folder())
        parent.mkdir(parents=True, exist_ok=True)
        self._media_root = tempfile.TemporaryDirectory(prefix="m2ugen-app-", dir=parent)
        self.media_root = Path(self._media_root.name)
        # every event that runs the model joins this queue: `concurrency` requests at a time
        self.concurrency_id = f"m2ugen-model-{id(model)}"

    @property
    def trained_tiny(self) -> bool:
        """The tiny-trained preset (or a model built by its recipe)."""
        return "tiny_trained_version" in self.model.config.extra

    @property
    def notice(self) -> str | None:
        if self.trained_tiny:
            return TINY_TRAINED_NOTICE
        if "tiny_version" in self.model.config.extra:
            return TINY_NOTICE
        base = self.model.base_dir
        if base is None or not (Path(base) / TRAINED_NAME).is_file():
            return UNTRAINED_NOTICE
        return None

    def judge(self):
        """The CLAP judge of `rerank` (hub id or directory `judge_ref`; None: the one
        `m2ugen eval` uses), loaded once, by the first visitor who asks for reranking."""
        from m2ugen.eval.judge import ClapJudge

        with self._judge_lock:
            if self._judge is None:
                self._judge = ClapJudge.load(self.judge_ref, self.model.device)
            return self._judge

    def new_state(self) -> VisitorState:
        workdir = Path(tempfile.mkdtemp(prefix="visitor-", dir=self.media_root))
        return VisitorState(session=ChatSession(self.model), workdir=workdir)

    @staticmethod
    def discard_state(state: VisitorState | None) -> None:
        """`gr.State` delete callback: drop the visitor's generated files."""
        if state is not None and state.workdir.exists():
            shutil.rmtree(state.workdir)

    def reset(self, state: VisitorState | None) -> tuple[list[dict[str, Any]], VisitorState]:
        self.discard_state(state)
        fresh = self.new_state()
        return fresh.messages, fresh

    def respond(self, message: dict[str, Any] | str | None, state: VisitorState | None,
                temperature: float, top_p: float, max_new_tokens: float, music: str,
                seconds: float, guidance: float, steps: float, condition: str,
                seed: float | None, scheduler: str = "dpm++", num_candidates: float = 1,
                rerank: str = "none", edit_strength: float = EDIT_STRENGTH,
                hear_source: bool = True, stereo: bool = True,
                progress: gr.Progress = gr.Progress(),  # noqa: B008
                ) -> Iterator[tuple[list[dict[str, Any]], None, VisitorState]]:
        """Handle one visitor message; yields (chatbot messages, textbox value, state).

        User mistakes (bad file, bad setting, prompt too long) become a chat message.
        """
        state = state or self.new_state()
        shown = state.messages
        try:
            text, files = parse_message(message)
        except MediaError as e:  # the files cannot be shown; the text still is
            raw = message.get("text") if isinstance(message, dict) else message
            shown.extend(user_messages(str(raw or "").strip(), []))
            shown.append(error_message(e))
            yield shown, None, state
            return
        shown.extend(user_messages(text, files))
        try:
            gen, mus = make_settings(temperature, top_p, max_new_tokens, music, seconds,
                                     guidance, steps, condition, seed, scheduler,
                                     num_candidates, rerank, edit_strength, hear_source)
            mono = not _flag(stereo, "stereo")
            gen = dataclasses.replace(gen, **self.decoding)
            media = load_attachments(files, self.media_spec, self.limits.max_upload_mb)
            if not files and state.last_music is not None:
                # an edit follow-up: the music this visitor was just given is the input
                media["audio"] = load_attachment("audio", state.last_music, self.media_spec)
                shown.append({"role": "assistant",
                              "content": "Editing the music of my last reply.",
                              "metadata": {"title": "🎼 input: previous music"}})
        except M2UGenError as e:
            shown.append(error_message(e))
            yield shown, None, state
            return
        yield shown, None, state
        yield from self._reply(state, text, media, gen, mus, progress, mono)

    def _reply(self, state: VisitorState, text: str, media: dict[str, Any],
               gen: GenerationSettings, mus: MusicSettings, progress: gr.Progress,
               mono: bool = False,
               ) -> Iterator[tuple[list[dict[str, Any]], None, VisitorState]]:
        shown = state.messages
        try:
            stream = state.session.stream(text, settings=gen, **media)
        except M2UGenError as e:
            shown.append(error_message(e))
            yield shown, None, state
            return
        reply = {"role": "assistant", "content": ""}
        shown.append(reply)
        try:
            for piece in stream:
                reply["content"] += piece
                yield shown, None, state
        except GeneratorExit:  # Stop: the model's history keeps what the visitor saw
            stream.close()
            reply["content"] += " (stopped)"
            state.session.history.append(Turn(text, str(reply["content"])))
            raise
        result = stream.result
        assert result is not None
        if not result.text:
            reply["content"] = "(no text in this reply)"
        state.last_music = None
        if mus.music == "never" or (mus.music == "auto" and not result.has_audio_tokens):
            yield shown, None, state
            return
        progress((0, None), desc=f"rendering {mus.seconds:g} s of music…")
        shown.append({"role": "assistant", "content": f"🎵 rendering {mus.seconds:g} s of music…"})
        delivered = False  # the players were yielded: a Stop after that takes nothing back
        try:
            yield shown, None, state
            try:
                if mus.rerank != "none":
                    state.session.judge = self.judge()
                rendered = state.session.render(result, mus)
                assert rendered is not None
                # the winner (or the only one) first, then the other candidates
                paths = [state.workdir / f"m2ugen-{state.turns + 1:03d}"
                         f"{'' if k == 0 else f'-{k + 1}'}.wav"
                         for k in range(len(rendered.waveforms))]
                for p, wave in zip(paths, rendered.waveforms, strict=True):
                    if mono and wave.ndim == 2:  # a stereo decoder, Stereo off: the mix
                        wave = wave.mean(axis=-1)
                    save_audio(p, wave, rendered.sample_rate)  # e.g. disk full
            except M2UGenError as e:
                shown[-1] = error_message(e)
                yield shown, None, state
                return
            state.turns += 1
            labels = candidate_labels(rendered) or [None]
            shown[-1:] = [music_message(p, label)
                          for p, label in zip(paths, labels, strict=True)]
            state.last_music = paths[0]
            delivered = True
            yield shown, None, state
        except GeneratorExit:  # Stop before the music was shown: the visitor has none
            if not delivered:
                shown[-1] = {"role": "assistant", "content": "(music stopped)"}
                state.last_music = None
            raise


def _slider(field: str, **kwargs: Any) -> gr.Slider:
    label, low, high = SLIDERS[field]
    return gr.Slider(low, high, label=label, **kwargs)


def _settings_panel() -> list[gr.components.Component]:
    """The settings components, in the order `AssistantApp.respond` takes them."""
    with gr.Accordion("Settings", open=False, elem_id="settings"):
        with gr.Row():
            temperature = _slider("temperature", value=0.6, step=0.05)
            top_p = _slider("top_p", value=0.8, step=0.05)
            max_new = _slider("max_new_tokens", value=128, step=8)
        with gr.Row():
            music = gr.Radio(list(MUSIC_MODES), value="auto", label="Music",
                             info="auto: when the reply asks for it", elem_id="music-mode")
            condition = gr.Radio(["embedding", "text"], value="embedding", label="Condition",
                                 info="embedding: what the model understood; text: the reply")
        with gr.Row():
            seconds = _slider("seconds", value=10, step=1, elem_id="music-seconds")
            guidance = _slider("guidance", value=3.5, step=0.5)
            steps = _slider("steps", value=0, step=5, info="AudioLDM2 only; 0 = default")
            seed = gr.Number(value=-1, label="Seed", info="-1 = random")
            scheduler = gr.Radio(list(SCHEDULERS), value="dpm++", label="Sampler",
                                 info="AudioLDM2 only: dpm++ (20 steps) or ddim (published, 200)")
        with gr.Row():
            candidates = _slider("num_candidates", value=1, step=1, elem_id="candidates",
                                 info="versions rendered at once")
            rerank = gr.Radio(list(RERANKERS), value="none", label="Rerank",
                              elem_id="rerank", info="clap: best first by a CLAP judge's "
                              "score against your message (2+ candidates)")
        with gr.Row():
            strength = _slider("edit_strength", value=EDIT_STRENGTH, step=0.05,
                               elem_id="edit-strength",
                               info="edits of music: how much is new (1 = a new piece)")
            hear = gr.Checkbox(value=True, label=LABELS["source"], elem_id="hear-source",
                               info="the music decoder hears the music you attached, so an "
                                    "edit keeps the song; off: the published text-only edit")
            stereo = gr.Checkbox(value=True, label=LABELS["stereo"], elem_id="stereo",
                                 info="stereo decoders (musicgen-stereo-*) only; off: mono")
    return [temperature, top_p, max_new, music, seconds, guidance, steps, condition, seed,
            scheduler, candidates, rerank, strength, hear, stereo]


def _examples(examples_dir: Path, examples=EXAMPLES) -> list[dict[str, Any]]:
    out = []
    for prompt, name in examples:
        if name is None:
            out.append({"text": prompt, "files": []})
        elif (examples_dir / name).is_file():
            out.append({"text": prompt, "files": [str(examples_dir / name)]})
        else:
            log.warning("example %s missing from %s (m2ugen.examples.make_examples writes "
                        "them)", name, examples_dir)
    return out


def build_app(model: str | Path | M2UGen = "tiny", *, device: str = "cpu",
              dtype: str | None = "auto", trust_remote_code: bool = False,
              limits: Limits | None = None, examples_dir: Path | None = None,
              judge: str | None = None, cache: str = "dynamic", compile: bool = False,
              quantize: str | None = None) -> gr.Blocks:
    """The chat UI around `model` (a model directory, a preset name or a loaded M2UGen);
    `dtype` as --dtype (`loading.choose_dtype`; unused for a loaded model); `examples_dir`
    holds the media of the examples offered (None: no examples); `judge` the CLAP of
    Rerank (hub id, directory or "tiny"; None: the evaluation's), loaded when first used.
    `cache`, `compile` and `quantize` are chat's --cache, --compile, --quantize: how every
    reply is decoded (static cache, the compiled step; a torchao-quantized LLM).

    The AssistantApp is kept on the returned Blocks as `.assistant`.
    """
    if not isinstance(model, M2UGen):
        model = M2UGen.from_pretrained(model, device=device, dtype=dtype,
                                       trust_remote_code=trust_remote_code)
        merge_lora_for_inference(model)  # generation only: where it pays (logged)
    if quantize:
        check_quantize(quantize, model.device, model.dtype)
        quantize_llm(model.llm, quantize)
    app = AssistantApp(model, limits, judge=judge, cache=cache, compile=compile)
    # delete_cache: Gradio's copies of uploads and music older than a day, checked daily
    with gr.Blocks(title="M2UGen", delete_cache=(86400, 86400),
                   analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}")
        if app.notice:
            gr.Markdown(app.notice, elem_id="model-notice")
        state = gr.State(None, delete_callback=app.discard_state)
        chatbot = gr.Chatbot(label="Conversation", height=480, elem_id="chatbot")
        textbox = gr.MultimodalTextbox(
            file_types=["audio", "image", "video"], file_count="multiple", show_label=False,
            placeholder="Ask about music, or attach music, an image or a video…",
            elem_id="message")
        with gr.Row():
            stop = gr.Button("Stop", variant="stop", elem_id="stop")
            new_chat = gr.Button("New conversation", elem_id="new-chat")
        settings = _settings_panel()
        offered = SYNTH_EXAMPLES if app.trained_tiny else EXAMPLES
        if examples_dir is not None and (examples := _examples(Path(examples_dir), offered)):
            gr.Examples(examples=examples, inputs=[textbox], label="Examples")
        # preprocess=False: the settings reach make_settings as sent, so a bad API value
        # (NaN, a string, out of range) is our one-line chat message, not a gradio error;
        # uploads are still moved into gradio's cache and checked before the handler runs
        submit = textbox.submit(
            app.respond, [textbox, state, *settings], [chatbot, textbox, state],
            api_name="chat", concurrency_limit=app.concurrency,
            concurrency_id=app.concurrency_id,
            show_progress="minimal", preprocess=False)
        stop.click(None, cancels=[submit])
        new_chat.click(app.reset, [state], [chatbot, state], cancels=[submit],
                       api_name="reset")
        chatbot.clear(app.reset, [state], [chatbot, state], cancels=[submit],
                      api_visibility="private")
    demo.queue(max_size=32)
    demo.assistant = app  # type: ignore[attr-defined]
    return demo


def check_port(host: str, port: Any) -> None:
    """ConfigError unless the app can listen on (host, port): checked before the model
    loads, so a busy port costs a second rather than a model load."""
    port = check_number(port, "--port", integer=True, minimum=1, maximum=65535)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--host {host}: not a known host name or address; use 127.0.0.1 "
                          "(this machine only) or 0.0.0.0 (every interface)") from e
    with socket.socket(family, kind, proto) as probe:
        # as servers bind: a port left in TIME_WAIT by an earlier run is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise _port_error(host, port, e) from e


def _port_error(host: str, port: int, e: OSError) -> ConfigError:
    if e.errno == errno.EADDRINUSE:
        return ConfigError(f"port {port} is in use; pass --port N (another program, or an "
                           "earlier m2ugen app, is listening on it)")
    if e.errno == errno.EACCES:
        return ConfigError(f"port {port} needs administrator rights; pass --port 1024 or above")
    if e.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"--host {host}: not an address of this machine; use 127.0.0.1 or "
                           "0.0.0.0")
    return ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another "
                       "--host or --port")


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           max_upload_mb: float = 200.0, examples_dir: Path | None = None,
           **kwargs: Any) -> Any:
    """Serve `demo`: loopback only and no public link unless asked. A port that cannot be
    listened on is a ConfigError."""
    check_port(host, port)
    allowed = [str(Path(examples_dir).resolve())] if examples_dir is not None else []
    try:
        return demo.launch(server_name=host, server_port=port, share=share,
                           max_file_size=f"{max_upload_mb:g}mb", allowed_paths=allowed,
                           ssr_mode=False, run_history=False, mcp_server=False, **kwargs)
    except OSError as e:
        # taken between our check and gradio's bind: gradio says "Cannot find empty port"
        if "port" not in str(e).lower():
            raise
        raise ConfigError(f"port {port} is in use; pass --port N") from e
