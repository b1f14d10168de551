"""Items from the published formats; resumable, batched generation through the public API."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from m2ugen.chat import ChatSession
from m2ugen.errors import ConfigError
from m2ugen.eval import tasks as T
from m2ugen.media import read_audio
from m2ugen.modules.decoders import TARGET_SCALE

FAST = dict(seconds=0.5, max_new_tokens=8, batch_size=2)


def test_items_of_each_task_from_the_synthetic_data(synth):
    text, _ = T.load_items(T.get_task("text2music"), synth / "mucaps.json")
    caps = json.loads((synth / "mucaps.json").read_text())
    assert [it.caption for it in text] == list(caps.values())
    assert text[0].prompt == text[0].caption and text[0].media == {}
    assert text[0].reference_audio == str(synth / "audio" / "clip_000.wav")  # dataset.yaml roots
    image, _ = T.load_items(T.get_task("image2music"), synth / "dataset.yaml")
    assert len(image) == 2 and set(image[0].media) == {"image"}
    assert image[0].reference_audio.startswith(str(synth / "audio"))
    video, _ = T.load_items(T.get_task("video2music"), synth / "dataset.yaml")
    edit, _ = T.load_items(T.get_task("edit"), synth / "muedit.json")
    assert len(video) == 2 and len(edit) == 2
    assert edit[0].media["audio"].startswith(str(synth / "audio"))
    assert edit[0].reference_audio.startswith(str(synth / "audio_edit"))
    qa, _ = T.load_items(T.get_task("musicqa"), synth / "musicqa.json")
    records = json.loads((synth / "musicqa.json").read_text())
    assert len(qa) == sum(len(r["conversation"]) // 2 for r in records)
    assert qa[0].reference_text == records[0]["conversation"][1]["value"]
    assert [it.n for it in qa] == list(range(len(qa)))


def test_data_mistakes_are_one_line_errors(synth, tmp_path):
    task = T.get_task("text2music")
    with pytest.raises(ConfigError, match="data file not found"):
        T.load_items(task, tmp_path / "nope.json")
    bad = tmp_path / "caps.json"  # no dataset.yaml here: media resolve against this folder
    shutil.copy(synth / "audio" / "clip_000.wav", tmp_path / "ok.wav")
    bad.write_text(json.dumps({"ok.wav": "A calm piano.", "gone.wav": "Missing."}))
    with pytest.raises(ConfigError, match=r"bad record .*caps.json#1 .*gone.wav.*--skip-bad"):
        T.load_items(task, bad)
    items, skipped = T.load_items(task, bad, skip_bad=True)
    assert len(items) == 1 and "gone.wav" in skipped[0]
    with pytest.raises(ConfigError, match="unknown task 'txt2music'"):
        T.get_task("txt2music")
    with pytest.raises(ConfigError, match="no usable video instruct records"):
        T.load_items(T.get_task("video2music"), synth / "muimage.json")


def _run(model, items, out, **kw):
    settings = T.RunSettings(task="text2music", model="tiny", data="d", **{**FAST, **kw})
    return T.generate(model, items, out, settings)


def test_batch_of_one_is_what_the_chat_session_renders(tiny_model, synth, tmp_path):
    items, _ = T.load_items(T.get_task("image2music"), synth / "dataset.yaml")
    settings = T.RunSettings(task="image2music", model="tiny", data="d", seed=3,
                             **{**FAST, "batch_size": 1})
    T.generate(tiny_model, items[:1], tmp_path, settings)
    rec = T.read_item(tmp_path, items[0].id)
    expected = ChatSession(tiny_model).send(items[0].prompt, image=items[0].media["image"],
                                            music="always", seconds=0.5, seed=3,
                                            max_new_tokens=8)
    wav, sr = read_audio(tmp_path / rec["music"])
    assert rec["reply"] == expected.text and sr == expected.music.sample_rate
    assert np.allclose(wav, expected.music.waveform, atol=1e-4)  # 16-bit WAV rounding


def test_a_batch_is_generated_together_and_each_reply_is_a_fresh_sessions(tiny_model, synth,
                                                                         tmp_path):
    """Items of one batch (prompts of different lengths, padded left) are answered by one
    batched generation — the LLM runs about as many forwards as for one item, not four
    times as many — and each reply (text, [AUD] states, hence music) is what a fresh chat
    session gives its item."""
    items, _ = T.load_items(T.get_task("text2music"), synth / "mucaps.json")
    items = items[:4]
    assert len({len(it.prompt) for it in items}) > 1
    calls = []
    hook = tiny_model.llm.register_forward_hook(lambda *a: calls.append(1))
    try:
        settings = T.RunSettings(task="text2music", model="tiny", data="d", seed=5,
                                 **{**FAST, "batch_size": 4})
        T.generate(tiny_model, items, tmp_path, settings)
        batched = len(calls)
        calls.clear()
        expected = []
        for it in items:
            session = ChatSession(tiny_model)
            result = session.send(it.prompt, music="never", seed=5 + it.n, max_new_tokens=8)
            expected.append((result.text, session.audio_states(result)))
        single = len(calls)
    finally:
        hook.remove()
    # per item: up to 8 token steps + the [AUD] pass; together: one batch of steps + 4 passes
    assert batched <= single / 2, (batched, single)
    waves = [read_audio(tmp_path / T.read_item(tmp_path, it.id)["music"])[0] for it in items]
    for it, (text, _) in zip(items, expected, strict=True):
        assert T.read_item(tmp_path, it.id)["reply"] == text
    cond = torch.cat([tiny_model.project(h[None]) for _, h in expected]) / TARGET_SCALE
    alone = tiny_model.load_decoder().generate(cond, 0.5, settings.guidance, 5 + items[0].n,
                                               settings.steps, settings.scheduler)
    for got, want in zip(waves, alone, strict=True):
        assert np.allclose(got, want, atol=1e-3)  # 16-bit WAV rounding, [AUD] float rounding


@pytest.mark.parametrize("source", ["hear", "ignore"])
def test_edit_items_hear_their_source_as_the_chat_session_does(tiny_model, synth, tmp_path,
                                                               source):
    """An edit is rendered with the item's source music heard (or not, source=ignore),
    exactly as a chat session renders the same request; old runs of other tasks resume
    (their settings have no source fields)."""
    items, _ = T.load_items(T.get_task("edit"), synth / "muedit.json")
    settings = T.RunSettings(task="edit", model="tiny", data="d", seed=3, source=source,
                             edit_strength=0.5, **{**FAST, "batch_size": 1})
    T.generate(tiny_model, items[:1], tmp_path, settings)
    rec = T.read_item(tmp_path, items[0].id)
    expected = ChatSession(tiny_model).send(items[0].prompt, audio=items[0].media["audio"],
                                            music="always", seconds=0.5, seed=3,
                                            max_new_tokens=8, source=source,
                                            edit_strength=0.5)
    assert expected.music.source_heard == (source == "hear")
    wav, _ = read_audio(tmp_path / rec["music"])
    assert np.allclose(wav, expected.music.waveform, atol=1e-4)  # 16-bit WAV rounding
    assert "source" not in T.RunSettings(task="text2music", model="m", data="d").shaping()


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tiny_model, synth, tmp_path,
                                                                monkeypatch):
    items, _ = T.load_items(T.get_task("text2music"), synth / "mucaps.json")
    items = items[:3]  # batches of 2: [0, 1], [2]
    whole = tmp_path / "whole"
    assert _run(tiny_model, items, whole)["items"] == 3

    resumed = tmp_path / "resumed"
    real, calls = T.atomic_write_text, []

    def dies_on_the_second_item(path, text):
        if "items" in str(path):
            calls.append(path)
            if len(calls) == 2:  # inside the first batch: item 0 is written, item 1 is not
                raise KeyboardInterrupt
        real(path, text)

    monkeypatch.setattr(T, "atomic_write_text", dies_on_the_second_item)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_model, items, resumed)
    monkeypatch.setattr(T, "atomic_write_text", real)
    assert [p.name for p in (resumed / "items").glob("*.json")] == ["00000.json"]
    assert not list(resumed.glob("items/.*"))  # no temporary file left behind
    assert _run(tiny_model, items, resumed)["items"] == 2  # only the missing ones
    assert _run(tiny_model, items, resumed)["items"] == 0
    for it in items:
        a, b = T.read_item(whole, it.id), T.read_item(resumed, it.id)
        assert a["reply"] == b["reply"]
        assert (whole / a["music"]).read_bytes() == (resumed / b["music"]).read_bytes()


def test_resuming_with_other_settings_or_data_is_refused(tiny_model, synth, tmp_path):
    items, _ = T.load_items(T.get_task("text2music"), synth / "mucaps.json")
    _run(tiny_model, items[:2], tmp_path)
    with pytest.raises(ConfigError, match=r"other settings \(seed 0 → 1\)"):
        _run(tiny_model, items[:2], tmp_path, seed=1)
    moved = [T.Item(it.n, it.source + "x", it.prompt) for it in items[:2]]
    with pytest.raises(ConfigError, match="the data changed"):
        _run(tiny_model, moved, tmp_path)
