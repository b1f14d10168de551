"""Every task end to end on the tiny preset with the tiny embedding models; folders; reports."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from m2ugen.eval import pitch
from m2ugen.eval.report import comparison_table, read_results
from m2ugen.eval.run import FolderRun, ModelRun, evaluate_folder, evaluate_model
from m2ugen.eval.score import METRICS

FAST = dict(seconds=0.5, max_new_tokens=6, batch_size=2)
DATA = {"text2music": "mucaps.json", "image2music": "muimage.json",
        "video2music": "muvideo.json", "edit": "muedit.json", "musicqa": "musicqa.json"}
EXPECTED = {
    "text2music": {"fad_clap", "fad_encodec", "fad_mert", "kl", "inception_score", "clap_score",
                   "clap_score_reference"},
    "musicqa": {"bleu", "bleu_char_published", "meteor", "rouge_l_precision", "rouge_l_recall",
                "rouge_l_f1", "bertscore_precision", "bertscore_recall", "bertscore_f1"},
}
EXPECTED["image2music"] = EXPECTED["video2music"] = EXPECTED["text2music"]
EXPECTED["edit"] = EXPECTED["text2music"] | {"chroma", "chroma_dtw"} | (
    {"melody_dtw", "note_f1"} if pitch.available() else set())


@pytest.mark.parametrize("task", list(DATA))
def test_each_task_writes_results_table_and_plot(task, tiny_model, eval_models, synth,
                                                 tmp_path):
    results = evaluate_model(ModelRun(task=task, model="tiny", data=str(synth / DATA[task]),
                                      out=tmp_path, limit=2, settings=FAST, loaded=tiny_model))
    run = tmp_path / "tiny"
    saved = json.loads((run / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(saved["metrics"]) == EXPECTED[task] and saved["num_items"] == 2
    for name, spec in saved["metrics"].items():
        assert spec["definition"] == METRICS[name].definition
        assert isinstance(spec["value"], float)
        if METRICS[name].role is not None:  # the embedding model's id is recorded
            assert spec["model"] == getattr(eval_models, METRICS[name].role)
    assert saved["eval_models"]["name"] == "tiny"
    assert saved["settings"]["seconds"] == 0.5 and saved["settings"]["seed"] == 0
    per_item = {k for row in saved["items"] for k in row["scores"]}
    assert {"kl", "clap_score"} <= per_item if task != "musicqa" else {"meteor"} <= per_item
    assert {"generation"} | set(saved["metrics"]) - {"inception_score_std"} <= \
        set(saved["seconds_per_item"])
    table = (tmp_path / "table.md").read_text()
    assert "| tiny |" in table and METRICS[sorted(EXPECTED[task])[0]].label in table
    with Image.open(run / "plot.png") as img:
        assert img.format == "PNG" and img.size[0] > 100
    if task != "musicqa":
        assert len(list((run / "music").glob("*.wav"))) == 2


def test_a_second_model_joins_the_table(tiny_model, synth, tmp_path):
    for label in ("first", "second"):
        evaluate_model(ModelRun(task="musicqa", model="tiny", data=str(synth / DATA["musicqa"]),
                                out=tmp_path, limit=2, label=label, settings=FAST,
                                loaded=tiny_model, metrics=["bleu", "rouge_l_f1"]))
    table = (tmp_path / "table.md").read_text()
    assert "| first |" in table and "| second |" in table
    assert "BLEU ↑" in table and "ROUGE-L F1 ↑" in table and "METEOR" not in table
    assert table == "# m2ugen eval\n\n" + comparison_table(read_results(tmp_path))


def test_folder_scores_another_systems_outputs(synth, eval_models, tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    captions = {}
    for i, name in enumerate(["clip_000", "clip_001", "clip_002"]):
        shutil.copy(synth / "audio" / f"{name}.wav", ref / f"{name}.wav")
        shutil.copy(synth / "audio" / f"clip_00{i + 3}.wav", gen / f"{name}.wav")
        captions[f"{name}.wav"] = json.loads((synth / "mucaps.json").read_text())[f"{name}.wav"]
    (tmp_path / "caps.json").write_text(json.dumps(captions))
    results = evaluate_folder(FolderRun(generated=gen, reference=ref, out=tmp_path / "out",
                                        captions=tmp_path / "caps.json", sources=ref,
                                        embeddings="tiny"))
    assert set(results["metrics"]) == EXPECTED["edit"]
    same = evaluate_folder(FolderRun(generated=ref, reference=ref, out=tmp_path / "out",
                                     embeddings="tiny", metrics=["fad_clap", "kl", "chroma"]))
    assert same["metrics"]["fad_clap"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert same["metrics"]["kl"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert same["metrics_not_computed"] == {"chroma": "needs sources"}
    assert "| gen |" in (tmp_path / "out" / "table.md").read_text()
