"""`m2ugen chat --batch requests.jsonl --out-dir DIR` (cli/batch.py): replies in order, the
same as one `m2ugen chat` per line; every bad line is one line naming FILE:LINE, before the
model loads."""

from __future__ import annotations

import json

import pytest

from m2ugen.cli import main

COMMON = ["--max-new-tokens", "12", "--temperature", "0.7", "--seconds", "0.5",
          "--dtype", "fp32"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_batch_file_gives_the_replies_of_one_chat_per_line(tiny_dir, media, tmp_path, capsys):
    (tmp_path / "pic.png").write_bytes((media / "sunset.png").read_bytes())
    lines = [{"prompt": "Compose music for this picture", "image": "pic.png", "seed": 1,
              "music": "always"},
             {"prompt": "Describe a calm song", "seed": 2},
             {"prompt": "Hi", "seed": 3, "music": "never"}]
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(lines[0]) + "\n\n" + "\n".join(map(json.dumps, lines[1:])))
    out_dir = tmp_path / "out"
    code, _, err = _run(capsys, "chat", "--model", str(tiny_dir), "--batch", str(requests),
                        "--out-dir", str(out_dir), "--batch-size", "2", *COMMON)
    assert code == 0, err
    assert "3 replies, 1 with music" in err
    replies = [json.loads(x) for x in (out_dir / "replies.jsonl").read_text().splitlines()]
    assert [r["line"] for r in replies] == [1, 3, 4]  # the blank line is skipped
    assert [r["prompt"] for r in replies] == [x["prompt"] for x in lines]
    assert [r["seed"] for r in replies] == [1, 2, 3]
    assert replies[0]["image"] == "pic.png" and replies[0]["wav"] == str(out_dir /
                                                                         "reply-0001.wav")
    assert "wav" not in replies[1] and "wav" not in replies[2]  # auto: no [AUD] tokens here
    assert sorted(p.name for p in out_dir.iterdir()) == ["batch.json", "replies.jsonl",
                                                         "reply-0001.wav"]
    for line, reply in zip(lines, replies, strict=True):
        one = tmp_path / "one.wav"
        argv = ["chat", "--model", str(tiny_dir), "--seed", str(line["seed"]), "--music",
                line.get("music", "auto"), "--out", str(one), *COMMON, line["prompt"]]
        if "image" in line:
            argv[1:1] = ["--image", str(tmp_path / "pic.png")]
        code, out, err = _run(capsys, *argv)
        assert code == 0, err
        assert out.rstrip("\n") == reply["text"]
        if "wav" in reply:
            assert one.read_bytes() == (out_dir / "reply-0001.wav").read_bytes()


@pytest.mark.parametrize("content, expect", [
    ('{"prompt": "hi"}\n{"prompt": "hi", ', ":2: not JSON"),
    ('{"prompt": "hi"}\n\n["hi"]\n', ":3: a line must be a JSON object"),
    ('{"prompt": ""}\n', ':1: "prompt" is missing or empty'),
    ('{"text": "hi"}\n', ":1: unknown key(s) 'text'; a line takes prompt, audio"),
    ('{"prompt": "hi", "seed": -1}\n', ':1: "seed"'),
    ('{"prompt": "hi", "music": "loud"}\n', ':1: "music": \'loud\': use one of auto'),
    ('{"prompt": "hi", "audio": "nowhere.wav"}\n', ":1: "),
    ('{"prompt": "hi", "audio": "pic.png"}\n', ":1: "),
    ("\n\n", "no requests in it"),
])
def test_a_bad_line_is_one_line_naming_file_and_line(tmp_path, media, capsys, monkeypatch,
                                                      content, expect):
    import m2ugen.model

    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded before the file was checked")

    monkeypatch.setattr(m2ugen.model.M2UGen, "from_pretrained", no_load)
    (tmp_path / "pic.png").write_bytes((media / "sunset.png").read_bytes())
    requests = tmp_path / "requests.jsonl"
    requests.write_text(content)
    code, out, err = _run(capsys, "chat", "--batch", str(requests), "--out-dir",
                          str(tmp_path / "out"))
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"m2ugen: error: {requests}") or \
        err.startswith("m2ugen: error: --batch"), err
    assert expect in err, err
    assert "nowhere.wav" in err or "nowhere" not in content
    assert not (tmp_path / "out").exists()


def test_batch_option_mistakes_are_one_line(tmp_path, capsys):
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"prompt": "hi"}\n')
    for argv, expect in (
            (["--batch", str(requests)], "--batch needs --out-dir"),
            (["--batch", str(requests), "--out-dir", str(requests)], "is a file"),
            (["--batch", str(requests), "--out-dir", str(tmp_path), "hello"],
             "drop PROMPT"),
            (["--batch", str(tmp_path / "no.jsonl"), "--out-dir", str(tmp_path)],
             "file not found"),
            (["--batch", str(requests), "--out-dir", str(tmp_path), "--batch-size", "0"],
             "--batch-size 0"),
            (["--batch", str(requests), "--out-dir", str(tmp_path), "--compile"],
             "--compile needs --cache static")):
        code, _, err = _run(capsys, "chat", *argv)
        assert code == 2 and err.count("\n") == 1 and expect in err, (argv, err)


def test_a_stopped_batch_continues_where_it_stopped(tiny_dir, tmp_path, capsys, monkeypatch):
    """Stopped after its first batch (Ctrl-C), the run has written that batch's replies;
    the same command again answers only the rest, and the file equals an uninterrupted
    run's. Another batch (here: other settings) in the same DIR is refused before the model
    loads, and a finished batch is not answered again."""
    import m2ugen.chat

    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"prompt": p, "seed": k}) + "\n" for k, p in
                                enumerate(["Hi", "Describe a calm song", "Name a tempo"], 1)))
    argv = ["chat", "--model", str(tiny_dir), "--batch", str(requests), "--batch-size", "2",
            "--music", "never", *COMMON]
    whole = tmp_path / "whole"
    assert _run(capsys, *argv, "--out-dir", str(whole))[0] == 0

    real, calls = m2ugen.chat.send_batch, []

    def stopped_after_one_batch(model, requests, *args, **kwargs):
        calls.append(len(requests))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, requests, *args, **kwargs)

    monkeypatch.setattr(m2ugen.chat, "send_batch", stopped_after_one_batch)
    out = tmp_path / "out"
    code, _, err = _run(capsys, *argv, "--out-dir", str(out))
    assert code == 130 and "interrupted" in err, err
    assert len((out / "replies.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(m2ugen.chat, "send_batch", lambda *a, **k: (calls.append(
        len(a[1])), real(*a, **k))[1])
    code, _, err = _run(capsys, *argv, "--out-dir", str(out))
    assert code == 0, err
    assert calls == [2, 1, 1]  # batch 2 (request 3) stopped; the rerun answered only it
    assert "2 of 3 replies already there" in err
    assert (out / "replies.jsonl").read_text() == (whole / "replies.jsonl").read_text()

    import m2ugen.model

    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(m2ugen.model.M2UGen, "from_pretrained", no_load)
    code, _, err = _run(capsys, *argv, "--out-dir", str(out))
    assert code == 0 and "all 3 replies are already there" in err, err
    code, _, err = _run(capsys, *argv, "--max-new-tokens", "5", "--out-dir", str(out))
    assert code == 2 and err.count("\n") == 1 and "of another batch" in err, err
