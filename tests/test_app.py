"""The chat app's message handling as plain functions, and its API through gradio_client."""

from __future__ import annotations

import socket
from typing import Any

import gradio as gr
import numpy as np
import pytest
import soundfile as sf
import torch

from m2ugen.app import (
    SYNTH_EXAMPLES,
    TINY_NOTICE,
    TINY_TRAINED_NOTICE,
    AssistantApp,
    Limits,
    VisitorState,
    _examples,
    build_app,
    check_size,
    launch,
    make_settings,
    parse_message,
)
from m2ugen.errors import ChatError, ConfigError, MediaError
from m2ugen.media import load_audio

SETTINGS: dict[str, Any] = dict(temperature=0.6, top_p=0.8, max_new_tokens=24, music="always",
                                seconds=1, guidance=3.5, steps=0, condition="embedding", seed=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tiny_model, tmp_path_factory) -> AssistantApp:
    return AssistantApp(tiny_model, Limits(max_audio_seconds=30),
                        media_root=tmp_path_factory.mktemp("app-media"))


def send(app: AssistantApp, message: Any, state: VisitorState | None = None,
         **overrides: Any) -> tuple[list[dict[str, Any]], VisitorState]:
    """Run one message to the end; returns (chatbot messages, state)."""
    updates = list(app.respond(message, state, **{**SETTINGS, **overrides}))
    assert all(textbox is None for _, textbox, _ in updates)  # the textbox is cleared
    shown, _, final = updates[-1]
    return shown, final


def texts(messages: list[dict[str, Any]], role: str = "assistant") -> list[str]:
    return [m["content"] for m in messages if m["role"] == role and isinstance(m["content"], str)]


def audio_paths(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"].value["path"] if isinstance(m["content"].value, dict)
            else m["content"].value for m in messages
            if m["role"] == "assistant" and not isinstance(m["content"], str | dict)]


def test_parse_message_splits_text_and_files(tmp_path):
    text, files = parse_message({"text": "  hi ", "files": [str(tmp_path / "a.WAV"),
                                                            {"path": str(tmp_path / "b.png")}]})
    assert text == "hi"
    assert [(f.path.name, f.modality) for f in files] == [("a.WAV", "audio"), ("b.png", "image")]
    assert parse_message(None) == ("", [])
    assert parse_message("plain") == ("plain", [])


def test_parse_message_rejects_unknown_types_and_duplicates(tmp_path):
    with pytest.raises(MediaError, match="unknown media extension"):
        parse_message({"text": "x", "files": [str(tmp_path / "notes.txt")]})
    with pytest.raises(MediaError, match="at most one image"):
        parse_message({"text": "x", "files": [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]})


def test_make_settings_and_check_size(tmp_path):
    _, mus = make_settings(0.5, 0.9, 32, "auto", 120, 2.0, 0, "text", -1, "dpm++", 1, "none",
                           0.3, False)  # past the decoder's window: the slider allows it
    assert (mus.seconds, mus.edit_strength, mus.source) == (120, 0.3, "ignore")
    with pytest.raises(ChatError, match=r"Edit strength \(edit_strength\)"):
        make_settings(0.5, 0.9, 32, "auto", 3, 2.0, 0, "text", -1, "dpm++", 1, "none", 0.0)
    with pytest.raises(ChatError, match=r"Hear the source \(source\)='yes'"):
        make_settings(0.5, 0.9, 32, "auto", 3, 2.0, 0, "text", -1, "dpm++", 1, "none", 0.5,
                      "yes")
    gen, mus = make_settings(0.5, 0.9, 32, "never", 3, 2.0, 0, "text", -1)
    assert (gen.seed, mus.seed, mus.steps, gen.max_new_tokens) == (None, None, None, 32)
    gen, mus = make_settings(0.5, 0.9, 32, "auto", 3, 2.0, 25, "embedding", 7)
    assert (gen.seed, mus.seed, mus.steps, mus.scheduler) == (7, 7, 25, "dpm++")
    _, mus = make_settings(0.5, 0.9, 32, "auto", 3, 2.0, 0, "embedding", 7, "ddim")
    assert (mus.scheduler, mus.steps) == ("ddim", None)  # None: the published 200
    with pytest.raises(ChatError, match=r"Sampler \(scheduler\)='pndm': use one of dpm\+\+"):
        make_settings(0.5, 0.9, 32, "auto", 3, 2.0, 0, "embedding", 7, "pndm")
    with pytest.raises(ChatError, match="top_p"):
        make_settings(0.5, 0.0, 32, "auto", 3, 2.0, 0, "embedding", 0)
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * 4096)
    check_size(big, 1)
    with pytest.raises(MediaError, match="over the 0.001 MB upload limit"):
        check_size(big, 0.001)


def test_image_to_music_then_edit_follow_up(app, media):
    shown, state = send(app, {"text": "Make music for this picture.",
                              "files": [str(media / "sunset.png")]})
    roles = [m["role"] for m in shown]
    assert roles[:2] == ["user", "user"] and roles[2:] == ["assistant", "assistant"]
    assert shown[0]["content"] == {"path": str(media / "sunset.png")}
    assert texts(shown)[0]  # a reply (the tiny model's text is nonsense: check structure)
    [wav] = audio_paths(shown)
    assert state.last_music is not None and state.last_music.is_file()
    assert state.last_music.parent == state.workdir and state.workdir.parent == app.media_root
    info = sf.info(str(state.last_music))  # 1 s of music was asked for
    assert info.frames == pytest.approx(info.samplerate, abs=info.samplerate // 10)
    assert set(state.session.media) == {"image"}
    assert len(state.session.history) == 1 and "[AUD0]" in state.session.history[0].assistant

    first = state.last_music
    shown, state = send(app, {"text": "Make it faster.", "files": []}, state)
    # the music this visitor just got is the audio input of the edit, in this session only
    sr = app.model.encoders["audio"].sample_rate
    np.testing.assert_array_equal(state.session.media["audio"], load_audio(first, sr=sr))
    assert any(m.get("metadata") for m in shown)
    assert len(state.session.history) == 2  # the conversation goes to the model
    assert len(audio_paths(shown)) == 2 and state.last_music != first

    other = send(app, "Make it faster.")[1]  # another visitor: no music of anybody else's
    assert "audio" not in other.session.media and other.workdir != state.workdir


def test_an_edit_follow_up_hears_the_music_unless_told_not_to(app, media):
    """The follow-up's decoder hears the music of the last reply (MusicGen: its audio
    prompt), so the edit starts as the decoder hears that music; with "Hear the source"
    off it is a new piece."""
    _, state = send(app, {"text": "Make music for this picture.",
                          "files": [str(media / "sunset.png")]})
    first = state.last_music
    decoder = app.model.load_decoder()
    sr = decoder.sample_rate
    heard = decoder.reconstruct([load_audio(first, sr)], 1.0)[0]
    head = int(0.25 * sr)  # kept: the first (1 - 0.5) s, less EnCodec's look-ahead
    edits = {}
    for hear in (True, False):
        _, after = send(app, {"text": "Make it faster.", "files": []}, state,
                        edit_strength=0.5, hear_source=hear)
        edits[hear] = load_audio(after.last_music, sr)
        after.last_music = first  # the next follow-up edits the same music
    assert np.abs(edits[True][:head] - heard[:head]).max() < 1e-3  # 16-bit WAV rounding
    assert np.abs(edits[False][:head] - heard[:head]).max() > 1e-2


def test_music_never_and_auto_without_tokens(app):
    shown, state = send(app, "Describe jazz.", music="never")
    assert texts(shown) and not audio_paths(shown) and state.last_music is None
    assert len(state.session.history) == 1


@pytest.mark.parametrize("case", ["unsupported", "corrupt", "too-large", "too-long",
                                  "too-long-video", "empty", "bad-setting"])
def test_bad_input_becomes_a_chat_message_and_the_session_goes_on(app, media,
                                                                 tmp_path, case):
    message: dict[str, Any] = {"text": "What is this?", "files": []}
    overrides: dict[str, Any] = {}
    expect = {"unsupported": "unknown media extension", "corrupt": "cannot decode image",
              "too-large": "upload limit", "too-long": "over the 2 s limit",
              "too-long-video": "video is 2.0 s long, over the 1 s limit",
              "empty": "the message is empty", "bad-setting": "top_p"}[case]
    limits = Limits(max_audio_seconds=30)
    if case == "unsupported":
        (tmp_path / "notes.txt").write_text("hello")
        message["files"] = [str(tmp_path / "notes.txt")]
    elif case == "corrupt":
        (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        message["files"] = [str(tmp_path / "broken.png")]
    elif case == "too-large":
        message["files"] = [str(media / "piano_120bpm.wav")]
        limits = Limits(max_upload_mb=0.01)
    elif case == "too-long":
        message["files"] = [str(media / "piano_120bpm.wav")]  # 6 s
        limits = Limits(max_audio_seconds=2)
    elif case == "too-long-video":
        message["files"] = [str(media / "shapes.mp4")]  # 2 s
        limits = Limits(max_video_seconds=1)
    elif case == "empty":
        message["text"] = "   "
    else:
        overrides["top_p"] = 0.0
    strict = AssistantApp(app.model, limits, media_root=app.media_root)
    shown, state = send(strict, message, **overrides)
    assert shown[-1]["role"] == "assistant" and expect in shown[-1]["content"]
    assert shown[-1]["content"].startswith("⚠️")
    assert state.session.history == []  # nothing went to the model
    shown, state = send(strict, "Compose a short tune.", state, music="never")
    assert len(state.session.history) == 1 and shown[-1]["role"] == "assistant"


def test_stop_keeps_the_shown_partial_reply_in_the_history(app):
    updates = app.respond("Tell me a long story about music.", None,
                          **{**SETTINGS, "max_new_tokens": 200, "temperature": 1.0})
    shown, _, state = next(updates)  # the user's message
    for shown, _, _state in updates:
        if shown[-1]["role"] == "assistant" and shown[-1]["content"]:
            break
    else:
        pytest.fail("the reply never streamed a piece")
    updates.close()  # what Gradio does when Stop cancels the event
    assert torch.is_grad_enabled()  # the stopped generator left no global state behind
    assert shown[-1]["content"].endswith("(stopped)")
    assert state.session.history[-1].assistant == shown[-1]["content"]
    assert state.last_music is None


def test_stop_while_music_renders_leaves_no_music_to_edit(app):
    updates = app.respond("A march.", None, **SETTINGS)
    shown, _, state = next(updates)
    while "rendering" not in str(shown[-1]["content"]):
        shown, _, state = next(updates)
    updates.close()
    assert shown[-1]["content"] == "(music stopped)" and state.last_music is None


def test_stop_after_the_music_was_shown_keeps_it(app):
    """A Stop that reaches the last update (the players already shown) takes nothing back:
    the player stays in the conversation and the music can still be edited."""
    updates = app.respond("A march.", None, **SETTINGS)
    for update in updates:
        shown, _, state = update
        if state.last_music is not None:
            break
    else:
        pytest.fail("no music was shown")
    player = shown[-1]
    updates.close()
    assert shown[-1] is player and isinstance(player["content"], gr.Audio)
    assert state.last_music is not None and state.last_music.is_file()
    assert len(state.session.history) == 1  # the text reply itself was complete


def test_reset_and_discard_remove_the_visitors_files(app):
    _, state = send(app, "A waltz please.")
    assert state.last_music is not None and state.workdir.is_dir()
    shown, fresh = app.reset(state)
    assert shown == [] and fresh.session.history == [] and not state.workdir.exists()
    app.discard_state(fresh)
    assert not fresh.workdir.exists()


def test_attachments_load_with_the_models_spec_within_the_apps_limits(tiny_model, tmp_path):
    app = AssistantApp(tiny_model, Limits(max_audio_seconds=7, max_video_seconds=9),
                       media_root=tmp_path)
    spec = tiny_model.media_spec
    assert (app.media_spec.sample_rate, app.media_spec.num_frames) == (spec.sample_rate,
                                                                        spec.num_frames)
    assert (app.media_spec.max_audio_seconds, app.media_spec.max_video_seconds) == (7, 9)


def test_two_visitors_at_once_get_the_replies_they_get_alone(tiny_model, media, tmp_path,
                                                            lockstep):
    """Concurrency 2: the model serves two visitors at the same time (generation state
    travels with each call). Their messages, streamed step against step from two threads,
    get exactly the text and music each gets alone."""
    app = AssistantApp(tiny_model, Limits(max_audio_seconds=30, concurrency=2),
                       media_root=tmp_path)
    jobs = [({"text": "Make music for this picture.", "files": [str(media / "sunset.png")]}, 11),
            ({"text": "Describe this music.", "files": [str(media / "piano_120bpm.wav")]}, 12)]

    def visit(i: int, step=None):
        message, seed = jobs[i]
        updates: list[Any] = []
        for update in app.respond(message, None, **{**SETTINGS, "temperature": 0.9,
                                                    "seed": seed}):
            updates.append(update)
            if step is not None:  # one update each at a time: the two replies interleave
                step()
        shown, _, state = updates[-1]
        assert state.session.history  # the reply went through the model
        return texts(shown), [sf.read(path)[0] for path in audio_paths(shown)]

    alone = [visit(0), visit(1)]
    assert alone[0][0] != alone[1][0] and all(music for _, music in alone)
    together = lockstep(visit)
    for (text, music), (text_together, music_together) in zip(alone, together, strict=True):
        assert text_together == text
        assert len(music_together) == len(music)
        for a, b in zip(music, music_together, strict=True):
            np.testing.assert_array_equal(a, b)


def _chat_event(demo):
    [event] = [fn for fn in demo.fns.values() if fn.api_name == "chat"]
    return event


def test_the_chat_event_serves_concurrency_requests_per_model(tiny_model, tmp_path):
    demo = build_app(tiny_model, limits=Limits(concurrency=2))
    event = _chat_event(demo)
    assert event.concurrency_limit == 2
    assert event.concurrency_id == demo.assistant.concurrency_id == f"m2ugen-model-{id(tiny_model)}"
    assert demo.analytics_enabled is False  # no telemetry, without editing os.environ
    assert _chat_event(build_app(tiny_model)).concurrency_limit == 1  # the default
    with pytest.raises(ConfigError, match="concurrency must be an integer >= 1, got 0"):
        AssistantApp(tiny_model, Limits(concurrency=0), media_root=tmp_path)


def test_gradio_client_drives_the_chat_endpoint(tiny_model, media):
    from gradio_client import Client, handle_file

    demo = build_app(tiny_model, examples_dir=media)
    assert demo.assistant.notice == TINY_NOTICE
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True, examples_dir=media)
    try:
        url = f"http://127.0.0.1:{port}/"
        client = Client(url, verbose=False)
        args = dict(SETTINGS)
        shown, textbox = client.predict(
            {"text": "Make music for this picture.",
             "files": [handle_file(str(media / "sunset.png"))]},
            *args.values(), api_name="/chat")
        assert textbox == {"text": "", "files": []}
        assert [m["role"] for m in shown] == ["user", "user", "assistant", "assistant"]
        assert shown[0]["content"][0]["type"] == "file"
        [audio] = shown[-1]["content"]
        assert audio["type"] == "component" and audio["component"] == "audio"
        # the same client is one session: its follow-up edits its own music
        shown, _ = client.predict({"text": "Make it faster.", "files": []}, *args.values(),
                                  api_name="/chat")
        assert any(m["metadata"] for m in shown) and len(shown) == 8
        # a second client is a second visitor: nothing of the first one's conversation
        other = Client(url, verbose=False)
        shown, _ = other.predict({"text": "Make it faster.", "files": []}, *args.values(),
                                 api_name="/chat")
        assert [m["role"] for m in shown] == ["user", "assistant", "assistant"]
        assert not any(m["metadata"] for m in shown)
    finally:
        demo.close()


def test_the_tiny_trained_preset_says_what_it_knows(tiny_model, monkeypatch, tmp_path):
    from m2ugen.examples import make_examples

    monkeypatch.setitem(tiny_model.config.extra, "tiny_trained_version", 1)  # its recipe's mark
    app = AssistantApp(tiny_model, media_root=tmp_path)
    assert app.trained_tiny and app.notice == TINY_TRAINED_NOTICE
    for fact in ("5 instruments", "8 colours", "4 directions", "noise", "Real weights"):
        assert fact in app.notice
    make_examples(tmp_path / "media")  # its examples ask about held-out synthetic media
    offered = _examples(tmp_path / "media", SYNTH_EXAMPLES)
    assert len(offered) == len(SYNTH_EXAMPLES)
    assert all((tmp_path / "media").joinpath(n).is_file() for _, n in SYNTH_EXAMPLES if n)


def test_the_app_loads_its_model_in_the_dtype_asked_for(tiny_dir):
    """`m2ugen app --dtype bf16` (build_app's dtype) is the weights the visitors chat with."""
    model = build_app(tiny_dir, dtype="bf16").assistant.model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(m.merged for m in model.llm._mergeable())  # CPU: LoRA kept separate


def test_the_app_decodes_as_asked(tiny_dir, monkeypatch, tmp_path, capsys):
    """`m2ugen app --cache static --quantize int8` (build_app's cache / compile / quantize):
    the LLM is quantized when it loads and every reply decodes with the static cache; a
    combination the chat refuses is refused before anything loads."""
    from m2ugen.chat import ChatSession
    from m2ugen.cli import main

    demo = build_app(str(tiny_dir), dtype="fp32", cache="static", quantize="int8")
    app = demo.assistant
    weight = app.model.llm.layers[0].self_attn.q_proj.get_base_layer().weight
    assert weight.qdata.dtype == torch.int8
    used = []
    real = ChatSession.stream

    def stream(self, message, **kwargs):
        used.append(kwargs["settings"].cache)
        return real(self, message, **kwargs)

    monkeypatch.setattr(ChatSession, "stream", stream)
    shown, _ = send(app, "Describe a calm piano piece.", music="never")
    assert used == ["static"] and texts(shown)[0]
    demo.close()
    capsys.readouterr()  # the load's progress bars (shown unless an earlier test hid them)
    code = main(["app", "--model", str(tiny_dir), "--compile", "--port", "7869"])
    err = capsys.readouterr().err
    assert code == 2 and "--compile" in err and "static" in err and len(err.splitlines()) == 1
