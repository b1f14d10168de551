"""Best-of-N with a judge (`--num-candidates N --rerank clap`): the candidates come back best
first by the CLAP judge's score, checked against scores recomputed with transformers' own
ClapModel and ClapProcessor (not our embedder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from transformers import ClapModel, ClapProcessor

from m2ugen.chat import ChatSession
from m2ugen.cli import main
from m2ugen.errors import ChatError
from m2ugen.eval.judge import ClapJudge
from m2ugen.music import MusicResult, MusicSettings, rank_candidates

REQUEST = "A calm piano piece for a rainy evening"


@pytest.fixture(scope="module")
def judge(eval_models) -> ClapJudge:
    return ClapJudge.load(eval_models.clap)


def clap_cosines(ref: str, text: str, waves: np.ndarray, sr: int) -> np.ndarray:
    """Each waveform's CLAP cosine with `text`, through transformers' API alone."""
    model, processor = ClapModel.from_pretrained(ref).eval(), ClapProcessor.from_pretrained(ref)
    rate = processor.feature_extractor.sampling_rate
    audio = [soxr.resample(w, sr, rate, quality="HQ").astype(np.float32) for w in waves]
    inputs = processor(text=[text], audio=audio, sampling_rate=rate, return_tensors="pt",
                       padding=True)
    with torch.no_grad():
        out = model(**inputs)
    return (out.audio_embeds @ out.text_embeds.T)[:, 0].numpy()  # both L2-normalised


def test_candidates_come_back_in_the_judges_order(judge, eval_models):
    sr = 32000
    t = np.arange(sr // 2) / sr
    rng = np.random.default_rng(0)
    waves = np.stack([0.5 * np.sin(2 * np.pi * 440 * t),
                      0.3 * rng.standard_normal(t.size),
                      np.sign(np.sin(2 * np.pi * 3 * t)) * 0.8,
                      0.5 * np.sin(2 * np.pi * 55 * t) * np.exp(-3 * t)]).astype(np.float32)
    truth = clap_cosines(eval_models.clap, REQUEST, waves, sr)
    worst_first = waves[np.argsort(truth)]  # rendered worst first: ranking must reverse it
    result = rank_candidates(MusicResult(worst_first, sr, "embedding", 0.5, 0), judge, REQUEST)
    assert result.ranking == (3, 2, 1, 0)
    np.testing.assert_array_equal(result.waveforms, worst_first[list(result.ranking)])
    np.testing.assert_allclose(result.scores, np.sort(truth)[::-1], atol=1e-5)
    assert (result.judge, result.judged_text) == (eval_models.clap, REQUEST)


def test_a_session_reranks_its_batched_render(tiny_model, judge, eval_models):
    session = ChatSession(tiny_model, judge=judge)
    reply = session.send(REQUEST, max_new_tokens=3, temperature=0, seed=2)
    opts = dict(music="always", seconds=0.3, num_candidates=3, seed=2)
    plain = session.render(reply, MusicSettings(**opts))
    music = session.render(reply, MusicSettings(rerank="clap", **opts))
    assert plain.scores is None and plain.ranking is None
    assert sorted(music.ranking) == [0, 1, 2]
    np.testing.assert_array_equal(music.waveforms, plain.waveforms[list(music.ranking)])
    assert np.all(np.diff(music.scores) <= 0)
    truth = clap_cosines(eval_models.clap, REQUEST, music.waveforms, music.sample_rate)
    np.testing.assert_allclose(music.scores, truth, atol=1e-5)
    assert np.all(np.diff(truth) <= 1e-6)
    # against the reply text instead: other scores for the same waveforms
    against = session.render(reply, MusicSettings(rerank="clap", rerank_against="reply",
                                                  **opts))
    assert against.judged_text == reply.text != REQUEST == music.judged_text
    np.testing.assert_allclose(
        against.scores, clap_cosines(eval_models.clap, reply.text, against.waveforms,
                                     against.sample_rate), atol=1e-5)
    assert not np.allclose(np.sort(against.scores), np.sort(music.scores), atol=1e-4)


def test_rerank_needs_candidates_and_a_judge(tiny_model):
    with pytest.raises(ChatError, match="num_candidates is 1; raise num_candidates to 2"):
        MusicSettings(rerank="clap").validate()
    for field, value in (("rerank", "mulan"), ("rerank_against", "caption")):
        with pytest.raises(ChatError, match=f"{field}='.*': use one of"):
            MusicSettings(num_candidates=2, **{field: value}).validate()
    with pytest.raises(ChatError, match="needs a clap judge and the session has none"):
        ChatSession(tiny_model).send("hi", music="always", seconds=0.3, num_candidates=2,
                                     rerank="clap", max_new_tokens=2)


def test_cli_writes_the_candidates_best_first_and_prints_the_ranking(
        tiny_dir, tiny_model, judge, eval_models, tmp_path, capsys):
    out = tmp_path / "song.wav"
    code = main(["chat", "--model", str(tiny_dir), "--music", "always", "--seconds", "0.3",
                 "--num-candidates", "3", "--rerank", "clap", "--judge", eval_models.clap,
                 "--seed", "2", "--temperature", "0", "--max-new-tokens", "3",
                 "--dtype", "fp32", "--out", str(out), REQUEST])
    err = capsys.readouterr().err
    assert code == 0, err
    paths = [out, tmp_path / "song-2.wav", tmp_path / "song-3.wav"]
    lines = [line for line in err.splitlines() if line.lstrip()[:2] in ("1.", "2.", "3.")]
    assert [line.split()[1] for line in lines] == [str(p) for p in paths]
    printed = [float(line.split("  score ")[1].split()[0]) for line in lines]
    api = ChatSession(tiny_model, judge=judge).send(
        REQUEST, music="always", seconds=0.3, num_candidates=3, rerank="clap", seed=2,
        max_new_tokens=3, temperature=0).music
    np.testing.assert_allclose(printed, api.scores, atol=1e-4)
    assert [f"candidate {i + 1})" in line for i, line in zip(api.ranking, lines,
                                                              strict=True)] == [True] * 3
    files = np.stack([sf.read(p, dtype="float32")[0] for p in paths])
    np.testing.assert_allclose(files, api.waveforms, atol=1e-4)  # 16-bit WAV
    # the files' own scores, recomputed from disk, keep the printed order
    truth = clap_cosines(eval_models.clap, REQUEST, files, api.sample_rate)
    assert np.all(np.diff(truth) <= 1e-4)


def test_cli_batch_records_scores_and_ranking(tiny_dir, eval_models, tmp_path, capsys):
    batch = tmp_path / "requests.jsonl"
    batch.write_text(json.dumps({"prompt": REQUEST, "seed": 2}) + "\n")
    code = main(["chat", "--model", str(tiny_dir), "--music", "always", "--seconds", "0.3",
                 "--num-candidates", "2", "--rerank", "clap", "--judge", eval_models.clap,
                 "--max-new-tokens", "3", "--batch", str(batch), "--out-dir",
                 str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "replies.jsonl").read_text())
    assert sorted(record["ranking"]) == [0, 1] and len(record["wavs"]) == 2
    assert record["scores"][0] >= record["scores"][1]


@pytest.mark.parametrize("extra, expect", [
    (["--rerank", "clap", "--num-candidates", "2", "--judge", "{tmp}/no-such-clap"],
     "CLAP judge (--judge) '{tmp}/no-such-clap' could not be loaded"),
    (["--rerank", "clap"], "--num-candidates is 1; raise --num-candidates to 2 or more"),
    (["--judge", "tiny", "--num-candidates", "2"], "--judge tiny: judges only with --rerank"),
])
def test_cli_rerank_mistakes_are_one_line(tiny_dir, tmp_path, capsys, extra, expect):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    code = main(["chat", "--model", str(tiny_dir), "--music", "always", "--out",
                 str(tmp_path / "x.wav"), *argv, "hi"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert expect.replace("{tmp}", str(tmp_path)) in err
    assert not (tmp_path / "x.wav").exists()


def test_the_app_shows_the_winner_first_and_lets_one_play_the_others(tiny_model, eval_models,
                                                                     tmp_path):
    from m2ugen.app import AssistantApp

    app = AssistantApp(tiny_model, media_root=tmp_path, judge=eval_models.clap)
    settings = dict(temperature=0, top_p=0.8, max_new_tokens=8, music="always", seconds=1,
                    guidance=3.5, steps=0, condition="embedding", seed=2, scheduler="dpm++",
                    num_candidates=2, rerank="clap")
    shown, _, state = list(app.respond(REQUEST, None, **settings))[-1]
    players = [m["content"] for m in shown[-2:]]
    assert all(type(p).__name__ == "Audio" for p in players)
    labels = [p.label for p in players]
    assert labels[0].startswith("best of 2 · score") and labels[1].startswith("2 of 2")
    assert type(shown[-3]["content"]).__name__ != "Audio"  # no third player
    shown_scores = [float(label.split("score ")[1].split()[0]) for label in labels]
    assert shown_scores == sorted(shown_scores, reverse=True)
    paths = [p.value["path"] if isinstance(p.value, dict) else p.value for p in players]
    # gradio serves copies of the files; an edit follow-up edits the winner
    assert [Path(p).name for p in paths] == ["m2ugen-001.wav", "m2ugen-001-2.wav"]
    assert state.last_music.name == "m2ugen-001.wav"
    files = np.stack([sf.read(p, dtype="float32")[0] for p in paths])
    truth = clap_cosines(eval_models.clap, REQUEST, files, 32000)
    np.testing.assert_allclose(truth, shown_scores, atol=2e-4)  # 16-bit WAV, 4 decimals
    # a judge that cannot load is a chat message; the conversation goes on
    bad = AssistantApp(tiny_model, media_root=tmp_path, judge=str(tmp_path / "no-clap"))
    shown, _, _ = list(bad.respond(REQUEST, None, **settings))[-1]
    assert "CLAP judge (--judge)" in shown[-1]["content"] and "no-clap" in shown[-1]["content"]
