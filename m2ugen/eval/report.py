"""Results files: `results.json` per run, Markdown tables across runs, one PNG plot per run.

`results.json` holds every metric's value, definition, direction and embedding model id,
the generation settings, the per-item scores and the seconds each metric took per item.
`comparison_table` lays several runs side by side in the paper's layout: one table per
task, one row per model (or result folder), one column per metric with ↑/↓.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m2ugen.checkpoint import atomic_path, atomic_write_text
from m2ugen.errors import ConfigError
from m2ugen.eval.score import METRICS

RESULTS = "results.json"
# the paper's column order per task (tables 2–5: music QA, text/image/video-to-music, editing)
COLUMNS: dict[str, tuple[str, ...]] = {
    "musicqa": ("bleu", "meteor", "rouge_l_precision", "rouge_l_recall", "rouge_l_f1",
                "bertscore_precision", "bertscore_recall", "bertscore_f1",
                "bleu_char_published"),
    **{t: ("fad_clap", "fad_encodec", "fad_mert", "kl", "inception_score", "clap_score",
           "clap_score_reference") for t in ("text2music", "image2music", "video2music")},
    "edit": ("fad_clap", "fad_encodec", "fad_mert", "kl", "inception_score", "clap_score",
             "chroma", "chroma_dtw", "melody_dtw", "note_f1", "clap_score_reference"),
    "folder": ("fad_clap", "fad_encodec", "fad_mert", "kl", "inception_score", "clap_score",
               "chroma", "chroma_dtw", "melody_dtw", "note_f1", "clap_score_reference"),
}
TITLES = {"musicqa": "Music question answering (MusicQA)", "text2music": "Text-to-music (MUCaps)",
          "image2music": "Image-to-music (MUImage)", "video2music": "Video-to-music (MUVideo)",
          "edit": "Music editing (MUEdit)", "folder": "Folders of generated music"}
# the per-item score each task's plot shows (first one present)
PLOT_METRICS = ("clap_score", "chroma_dtw", "kl", "bertscore_f1", "meteor", "bleu")


def write_results(out: Path, results: dict[str, Any]) -> Path:
    path = out / RESULTS
    atomic_write_text(path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return path


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The results of a run folder, a folder of run folders, or a results.json file."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif (path / RESULTS).is_file():
        files = [path / RESULTS]
    elif path.is_dir():
        files = sorted(path.glob(f"*/{RESULTS}"))
    else:
        raise ConfigError(f"{path}: no such results folder or file")
    if not files:
        raise ConfigError(f"{path}: holds no {RESULTS} (nor do its sub-folders); run "
                          "`m2ugen eval TASK … --out` first")
    out = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{f}: not a readable results file ({e})") from e
        if not isinstance(data, dict) or "metrics" not in data or "task" not in data:
            raise ConfigError(f"{f}: not an m2ugen eval results file")
        out.append(data)
    return out


def number(name: str, value: float) -> str:
    """A metric value as tables show it: BLEU (0-100) to 2 decimals, others to 3; values
    too small for that in scientific notation (a near-zero FAD is not zero)."""
    if value != 0 and abs(value) < 5e-4:
        return f"{value:.2e}"
    return f"{value:.2f}" if name == "bleu" else f"{value:.3f}"


def _cell(name: str, value: float | None, std: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{number(name, value)} ± {std:.3f}" if std else number(name, value)


def comparison_table(runs: Sequence[dict[str, Any]]) -> str:
    """Markdown: per task, one row per run and the metrics any run of that task has."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_task.setdefault(r["task"], []).append(r)
    parts = []
    for task in sorted(by_task, key=lambda t: list(TITLES).index(t) if t in TITLES else 99):
        group = by_task[task]
        cols = [c for c in COLUMNS.get(task, tuple(METRICS))
                if any(c in r["metrics"] for r in group)]
        head = "| Model | " + " | ".join(
            f"{METRICS[c].label} {'↑' if METRICS[c].higher_is_better else '↓'}" for c in cols)
        lines = [f"### {TITLES.get(task, task)}", "", head + " | N |",
                 "|---|" + "---|" * (len(cols) + 1)]
        for r in group:
            m = r["metrics"]
            cells = [_cell(c, m[c]["value"] if c in m else None,
                           m[c].get("std") if c in m else None) for c in cols]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r['num_items']} |")
        used: dict[str, set[str]] = {}
        for r in group:
            for name in cols:
                spec = r["metrics"].get(name, {})
                if "model" in spec:
                    used.setdefault(spec["model"], set()).add(METRICS[name].label)
        if used:
            lines += ["", "Models behind the metrics: " + "; ".join(
                f"{ref} ({', '.join(sorted(labels))})" for ref, labels in sorted(used.items()))
                + "."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_table(path: Path, runs: Sequence[dict[str, Any]]) -> Path:
    atomic_write_text(path, "# m2ugen eval\n\n" + comparison_table(runs))
    return path


def plot_metric(results: dict[str, Any]) -> str | None:
    present = {k for row in results["items"] for k in row.get("scores", {})}
    return next((m for m in PLOT_METRICS if m in present), None)


def write_plot(path: Path, runs: Sequence[dict[str, Any]]) -> Path | None:
    """A histogram of one per-item score per run (CLAP score for music tasks, BERTScore F1
    for MusicQA), the runs overlaid; None when no run has per-item scores."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    name = next((m for r in runs if (m := plot_metric(r))), None)
    if name is None:
        return None
    per_run = [[row["scores"][name] for row in r["items"] if name in row.get("scores", {})]
               for r in runs]
    everything = [v for scores in per_run for v in scores]
    edges = np.histogram_bin_edges(everything, bins=min(30, max(5, len(everything) // 2)))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        for r, scores in zip(runs, per_run, strict=True):
            if scores:  # the same bins for every run, so the runs compare
                ax.hist(scores, bins=edges, alpha=0.6,
                        label=f"{r['label']} (mean {np.mean(scores):.3f}, n={len(scores)})")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        arrow = "higher is better" if METRICS[name].higher_is_better else "lower is better"
        ax.set_xlabel(f"{METRICS[name].label} per item ({arrow})")
        ax.set_ylabel("items")
        ax.set_title(f"{TITLES.get(runs[0]['task'], runs[0]['task'])}: {METRICS[name].label}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path
