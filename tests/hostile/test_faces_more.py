"""The newer faces fed mistakes: `chat --batch` files and flags, `chat`'s ranking options,
`eval` output folders, `train-decoder` / `train` overrides and `info`. Each mistake is one
line naming the culprit and the fix, exit 2, found before the model loads; a valid request
(a BOM-led batch file, an evaluation of one item) is served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from m2ugen.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_model_load(monkeypatch):
    """A mistake must be found before the (slow) model load: loading fails the test."""
    import m2ugen.model

    def refuse(*args, **kwargs):
        raise AssertionError("the model loaded before the mistake was found")

    monkeypatch.setattr(m2ugen.model.M2UGen, "from_pretrained", refuse)


# ---- m2ugen chat --batch ---------------------------------------------------------------
@pytest.mark.parametrize("line, shown", [
    ('{"prompt": 5}', "(got 5)"), ('{"prompt": null}', '"prompt" is missing'),
    ('{"prompt": "hi", "prompt": ["x"]}', "(got ['x'])"),
])
def test_batch_prompt_not_a_string_names_the_line_once(tmp_path, one_line_error, no_model_load,
                                                         line, shown):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(line + "\n")
    err = one_line_error(["chat", "--batch", str(requests), "--out-dir",
                          str(tmp_path / "out")])
    assert err.startswith(f'm2ugen: error: {requests}:1: "prompt"'), err
    assert err.count(str(requests)) == 1 and shown in err, err  # FILE:LINE once, not twice
    assert not (tmp_path / "out").exists()


def test_batch_file_opening_with_a_bom_is_read(tmp_path, one_line_error, no_model_load):
    """Notepad and PowerShell write UTF-8 with a BOM: line 1 is read, so the mistake found
    is line 2's (the file is valid UTF-8 JSONL, not 'not JSON' at line 1)."""
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes('\ufeff{"prompt": "hi"}\n{"prompt": "yo", "seed": "x"}\n'
                         .encode("utf-8"))
    err = one_line_error(["chat", "--batch", str(requests), "--out-dir",
                          str(tmp_path / "out")])
    assert f"{requests}:2: " in err and '"seed"' in err, err


def test_batch_refuses_out_which_it_would_ignore(tmp_path, one_line_error, no_model_load):
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"prompt": "hi"}\n')
    err = one_line_error(["chat", "--batch", str(requests), "--out-dir",
                          str(tmp_path / "out"), "--out", str(tmp_path / "mine.wav")])
    assert "drop --out" in err and "--out-dir" in err, err


# ---- m2ugen chat: ranking options --------------------------------------------------------
def test_rerank_against_without_rerank_is_refused(tmp_path, one_line_error, no_model_load):
    err = one_line_error(["chat", "--music", "always", "--rerank-against", "reply",
                          "--out", str(tmp_path / "m.wav"), "hi"])
    assert "--rerank-against reply" in err and "--rerank clap" in err, err


def test_edit_strength_without_music_to_edit_is_refused(tmp_path, one_line_error, no_model_load):
    err = one_line_error(["chat", "--music", "always", "--edit-strength", "0.3",
                          "--out", str(tmp_path / "m.wav"), "hi"])
    assert "--edit-strength 0.3" in err and "--audio" in err, err


# ---- m2ugen eval -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_small(tmp_path_factory) -> Path:
    from m2ugen.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, seed=0, n_audio=2, n_images=1, n_videos=1)
    return out


def _eval(data: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "text2music", "--model", "tiny", "--data", str(data / "dataset.yaml"),
            "--out", str(out), "--seconds", "0.5", "--max-new-tokens", "2",
            "--embeddings", "tiny", *extra]


def test_eval_foreign_results_in_out_refused_before_the_run(tmp_path, one_line_error, synth_small,
                                                            no_model_load):
    """table.md compares every run folder in --out: a results.json there that is not ours
    used to stop the evaluation only at its very end, after generating and scoring."""
    foreign = tmp_path / "runs" / "notes" / "results.json"
    foreign.parent.mkdir(parents=True)
    foreign.write_text('{"x": 1}\n')
    err = one_line_error(_eval(synth_small, tmp_path / "runs", "--limit", "2"))
    assert str(foreign) in err and "choose another --out" in err, err
    assert not (tmp_path / "runs" / "tiny").exists()


def test_eval_of_one_item(tmp_path, capsys, tiny_dir, synth_small):
    """--limit 1: the KL of one pair came back from torchmetrics as a scalar (TypeError)."""
    code = main(_eval(synth_small, tmp_path / "runs", "--limit", "1", "--metrics", "kl"))
    err = capsys.readouterr().err
    assert code == 0, err
    results = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    assert results["num_items"] == 1 and "kl" in results["metrics"]
    assert len(results["items"]) == 1 and "kl" in results["items"][0]["scores"]


@pytest.mark.parametrize("label", ["../escaped", "a/b", "..", ""])
def test_eval_folder_label_stays_inside_out(tmp_path, one_line_error, media, label):
    """--label names the run's folder under --out: '../escaped' wrote the results beside
    --out, then failed with 'holds no results.json'."""
    err = one_line_error(["eval", "folder", "--generated", str(media), "--reference",
                          str(media), "--label", label, "--out", str(tmp_path / "out"),
                          "--embeddings", "tiny", "--metrics", "kl"])
    assert f"--label {label!r}" in err and "plain name" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_eval_metrics_naming_none_is_refused(tmp_path, one_line_error, media):
    err = one_line_error(["eval", "folder", "--generated", str(media), "--reference",
                          str(media), "--metrics", " , ", "--out", str(tmp_path / "o"),
                          "--embeddings", "tiny"])
    assert "--metrics ' , '" in err and "names no metric" in err, err
    assert not (tmp_path / "o").exists()

# ---- training overrides --------------------------------------------------------------------
@pytest.mark.parametrize("value", ["bogus", "{tmp}/embeddings.json"])
def test_decoder_eval_embeddings_checked_before_training(tmp_path, one_line_error, value):
    """With eval_metrics=true a bad eval_embeddings used to surface at the first scored
    evaluation, eval_every steps into the run, and named --embeddings (an eval flag)."""
    (tmp_path / "embeddings.json").write_text('{"colour": "red"}')
    err = one_line_error([
        "train-decoder", "--config", str(REPO / "configs/decoder_musicgen.yaml"),
        f"out={tmp_path / 'run'}", "eval_metrics=true",
        f"eval_embeddings={value.format(tmp=tmp_path)}"])
    assert "eval_embeddings (command line)" in err and "--embeddings" not in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [
    ["train", "--config", str(REPO / "configs/stage1.yaml"), "--dry-run", "=5"],
    ["train-decoder", "--config", str(REPO / "configs/decoder_musicgen.yaml"), " =true"],
])
def test_override_without_a_key(one_line_error, argv):
    err = one_line_error(argv)
    assert f"override {argv[-1]!r}: write key=value" in err, err


# ---- m2ugen synth-data -------------------------------------------------------------------
def test_synth_data_keeps_the_users_own_files(tmp_path, capsys, one_line_error):
    """A folder of the user's own data (its mucaps.json) is not overwritten; a folder an
    earlier synth-data wrote is rewritten as before."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "mucaps.json").write_text('{"song.wav": "my caption"}')
    err = one_line_error(["synth-data", str(mine), "--n-audio", "1", "--n-images",
                          "1", "--n-videos", "1"])
    assert f"{mine / 'mucaps.json'}: already there" in err and "choose a new" in err, err
    assert (mine / "mucaps.json").read_text() == '{"song.wav": "my caption"}'
    assert not (mine / "dataset.yaml").exists() and not (mine / "audio").exists()
    ours = ["synth-data", str(tmp_path / "ours"), "--n-audio", "1", "--n-images", "1",
            "--n-videos", "1"]
    assert main(ours) == 0 and main(ours) == 0, capsys.readouterr().err

# ---- m2ugen info -----------------------------------------------------------------------------
@pytest.mark.parametrize("make, what", [(lambda p: None, "no such directory"),
                                        (lambda p: p.write_text("x"), "is a file")])
def test_info_on_what_is_not_a_directory_names_the_fix(tmp_path, one_line_error, make, what):
    target = tmp_path / "thing"
    make(target)
    err = one_line_error(["info", str(target)])
    assert f"{target}: not a model directory ({what})" in err and "m2ugen.json" in err, err


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_a_stage_scripts_mistake_is_one_line_not_a_torchrun_traceback(stage, tmp_path):
    """`./train_stageN.sh max_steps=1`: the shipped warmup is longer than one step. Under
    torchrun every rank printed the error and torchrun added its ChildFailedError
    traceback; the script now checks the config first (`m2ugen train --check`)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DATA": str(tmp_path / "dataset.yaml"),
           "OUT": str(tmp_path / "run"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([str(REPO / f"train_stage{stage}.sh"), "max_steps=1"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "warmup_steps (command line)" not in done.stderr  # the config's own value
    assert "max_steps 1" in done.stderr and "warmup_steps=0" in done.stderr
    assert not (tmp_path / "run").exists()
