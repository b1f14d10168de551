"""`m2ugen eval` from the command line: the files it writes and its one-line mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from m2ugen.cli import main

FAST = ["--limit", "2", "--seconds", "0.5", "--max-new-tokens", "6", "--batch-size", "2",
        "--metrics", "fad_clap,clap_score"]  # every metric runs in test_run.py


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_text2music_on_the_tiny_preset_then_report(tiny_dir, eval_models, synth,
                                                       tmp_path, capsys):
    out = tmp_path / "t2m"
    code, stdout, _ = _run(capsys, "eval", "text2music", "--model", "tiny", "--data",
                           synth / "mucaps.json", "--out", out, *FAST)
    assert code == 0, stdout
    assert "text2music · tiny · 2 items: FAD-CLAP" in stdout
    for name in ("tiny/results.json", "tiny/plot.png", "tiny/settings.json", "table.md"):
        assert (out / name).is_file()
    settings = json.loads((out / "tiny" / "settings.json").read_text())
    assert settings["generation"]["batch_size"] == 2 and settings["eval_models"]["name"] == "tiny"
    # --dtype auto, resolved: bf16 on a CPU that computes it natively; another dtype is
    # another run (refused in one line before the model loads)
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() \
        else set()
    auto = "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "fp32"
    assert settings["generation"]["dtype"] == auto
    other = "fp32" if auto == "bf16" else "bf16"
    code, _, err = _run(capsys, "eval", "text2music", "--model", "tiny", "--data",
                        synth / "mucaps.json", "--out", out, *FAST, "--dtype", other)
    assert code == 2 and f"dtype {auto!r} → {other!r}" in err
    code, again, _ = _run(capsys, "eval", "text2music", "--model", "tiny", "--data",
                          synth / "mucaps.json", "--out", out, *FAST)
    assert code == 0 and again.splitlines()[0] == stdout.splitlines()[0]  # resumed: same scores
    report = tmp_path / "cmp.md"
    code, stdout, _ = _run(capsys, "eval", "report", out, out / "tiny", "--out", report)
    assert code == 0 and report.is_file() and report.with_suffix(".png").is_file()
    assert report.read_text().count("| tiny |") == 2
    code, stdout, _ = _run(capsys, "eval", "report", out / "tiny" / "results.json")
    assert code == 0 and "### Text-to-music (MUCaps)" in stdout


@pytest.mark.parametrize("argv, expect", [
    (["text2music", "--data", "{tmp}/none.json"], "none.json: data file not found"),
    (["text2music", "--data", "{tmp}/caps.json"], "bad record"),
    (["musicqa", "--data", "{synth}/musicqa.json", "--limit", "0"],
     "--limit must be an integer >= 1, got 0"),
    (["musicqa", "--data", "{synth}/musicqa.json", "--metrics", "fad_clap"],
     "--metrics: fad_clap not available here"),
    (["edit", "--data", "{synth}/muedit.json", "--out", "{tmp}/o", "--model", "{tmp}/m",
      "--model", "{tmp}/x/m"], "two models share the folder name"),
    (["edit", "--data", "{synth}/muedit.json", "--edit-strength", "1.5"],
     "--edit-strength must be"),
    (["folder", "--generated", "{tmp}/missing", "--reference", "{tmp}"],
     "--generated {tmp}/missing: no such folder"),
    (["report", "{tmp}"], "holds no results.json"),
])
def test_mistakes_are_one_line_exit_2(argv, expect, synth, tmp_path, capsys):
    (tmp_path / "caps.json").write_text(json.dumps({"gone.wav": "A calm piano."}))
    fill = {"tmp": tmp_path, "synth": synth}
    code, out, err = _run(capsys, "eval", *[a.format(**fill) for a in argv])
    assert code == 2 and expect.format(**fill) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_unknown_task_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "txt2music", "--data", "x.json"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'txt2music'" in err
    assert len(err.strip().splitlines()) == 1
