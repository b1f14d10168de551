"""`m2ugen eval`'s two jobs end to end: a model on a task, and a folder of music.

Each writes a run folder `<out>/<label>/` (settings.json, music/, items/, results.json,
plot.png) and refreshes `<out>/table.md`, which compares every run folder in `<out>`.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from m2ugen.errors import ConfigError, check_device
from m2ugen.eval import tasks as T
from m2ugen.eval.config import EvalModels, resolve_eval_models
from m2ugen.eval.embeddings import ClipFiles
from m2ugen.eval.report import RESULTS, read_results, write_plot, write_results, write_table
from m2ugen.eval.score import (
    METRICS,
    MUSIC_METRICS,
    TEXT_METRICS,
    Scores,
    choose_metrics,
    describe,
    score_music,
    score_text,
)
from m2ugen.loading import choose_dtype, dtype_name, merge_lora_for_inference
from m2ugen.media import AUDIO_EXTENSIONS
from m2ugen.model import M2UGen

log = logging.getLogger("m2ugen")


def _version() -> str:
    try:
        return version("m2ugen")
    except PackageNotFoundError:
        return "unknown"


def task_metrics(task: str) -> tuple[str, ...]:
    if task == "musicqa":
        return TEXT_METRICS
    if task == "edit":
        return MUSIC_METRICS
    return tuple(m for m in MUSIC_METRICS if "sources" not in METRICS[m].needs)


def model_label(model: str) -> str:
    return Path(str(model)).expanduser().name or str(model)


@dataclass
class ModelRun:
    """Options of `m2ugen eval TASK` for one model (see the CLI's help for each)."""

    task: str
    model: str
    data: str
    out: Path
    root: str | None = None
    reference_root: str | None = None
    limit: int | None = None
    device: str = "cpu"
    embeddings: str | None = None
    model_overrides: dict[str, str | None] = field(default_factory=dict)
    metrics: list[str] | None = None
    skip_bad: bool = False
    label: str | None = None
    trust_remote_code: bool = False
    dtype: str | None = None  # as --dtype; None: the library default (fp32 on the CPU)
    settings: dict[str, Any] = field(default_factory=dict)  # RunSettings fields
    loaded: M2UGen | None = None  # `model` already loaded (on `device`)


def _results(task: str, label: str, scores: Scores, metrics: list[str], models: EvalModels,
             rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    described = describe([m for m in metrics if m in scores.values], models, scores.notes)
    for name, entry in described.items():
        entry["value"] = scores.values[name]
        if f"{name}_std" in scores.values:
            entry["std"] = scores.values[f"{name}_std"]
    for row, s in zip(rows, scores.items, strict=True):
        row["scores"] = s
    return {"task": task, "label": label, "num_items": len(rows), "metrics": described,
            "metrics_not_computed": scores.not_computed,
            "eval_models": models.as_dict(), "seconds_per_item": scores.seconds_per_item,
            "items": rows, "m2ugen_version": _version(), **extra}


def _check_label(label: str) -> str:
    """A row name, which is also the run's folder under --out: one plain path component."""
    if not label.strip() or label in (".", "..") or Path(label).name != label or "\\" in label:
        raise ConfigError(f"--label {label!r}: the row name is also its folder under --out; "
                          "use a plain name without / (e.g. my-system)")
    return label


def _check_table(out: Path) -> None:
    """The runs in `out` that its table.md will compare, read before the slow work: a
    foreign or damaged results.json there would otherwise stop the run at its very end."""
    for f in sorted(out.glob(f"*/{RESULTS}")):
        try:
            read_results(f)
        except ConfigError as e:
            raise ConfigError(f"{e}; --out {out} holds it, and its table.md compares every "
                              "run there: move it away or choose another --out") from e


def _finish(out: Path, run_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    write_results(run_dir, results)
    write_plot(run_dir / "plot.png", [results])
    runs = read_results(out)
    write_table(out / "table.md", runs)
    return results


def evaluate_model(run: ModelRun) -> dict[str, Any]:
    """Generate (resumably) and score one model on one task; returns the results."""
    task = T.get_task(run.task)
    device = check_device(run.device, "--device")
    metrics = choose_metrics(run.metrics, task_metrics(task.name))
    items, skipped = T.load_items(task, run.data, run.root, run.reference_root, run.skip_bad)
    if run.limit is not None:
        items = items[:run.limit]
    label = run.label or model_label(run.model)
    run_dir = Path(run.out) / label
    dtype = run.loaded.dtype if run.loaded is not None else choose_dtype(run.dtype, device)
    settings = T.RunSettings(task=task.name, model=str(run.model),
                             data=str(Path(run.data).absolute()), dtype=dtype_name(dtype),
                             **run.settings)
    T.check_resume(run_dir, settings, items)  # before the slow model load
    _check_table(Path(run.out))
    model = run.loaded
    if model is None:
        model = M2UGen.from_pretrained(run.model, device=device, dtype=dtype,
                                       decoder=task.makes_music,
                                       trust_remote_code=run.trust_remote_code)
        merge_lora_for_inference(model)  # generation only: where it pays (logged)
    default = "tiny" if "tiny_version" in model.config.extra else "standard"
    models = resolve_eval_models(run.embeddings, run.model_overrides, default=default)
    T.generate(model, items, run_dir, settings,
               describe={"model": str(run.model), "label": label, "data": str(run.data),
                         "device": str(device), "m2ugen_version": _version(),
                         "num_items": len(items), "skipped_records": skipped,
                         "eval_models": models.as_dict()})
    del model
    free_memory()
    rows = [T.read_item(run_dir, it.id) for it in items]
    if task.makes_music:
        scores = score_music(
            ClipFiles([run_dir / r["music"] for r in rows]), metrics, models, device,
            references=ClipFiles([r["reference_audio"] for r in rows]),
            captions=[r["caption"] for r in rows],
            sources=ClipFiles([r["media"]["audio"] for r in rows]) if task.name == "edit"
            else None, seed=settings.seed)
    else:
        scores = score_text([r["reply"] for r in rows], [r["reference_text"] for r in rows],
                            metrics, models, device)
    gen_time = sum(r["seconds_per_item"] for r in rows) / len(rows)
    scores.seconds_per_item = {"generation": gen_time, **scores.seconds_per_item}
    results = _results(task.name, label, scores, metrics, models, rows,
                       {"model": str(run.model), "data": str(run.data),
                        "skipped_records": skipped, "settings": settings.shaping()})
    return _finish(Path(run.out), run_dir, results)


def _audio_files(folder: Path, flag: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise ConfigError(f"{flag} {folder}: no such folder")
    files = {p.stem: p for p in sorted(folder.iterdir())
             if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS}
    if not files:
        raise ConfigError(f"{flag} {folder}: holds no audio files "
                          f"({', '.join(sorted(e.lstrip('.') for e in AUDIO_EXTENSIONS))})")
    return files


def _captions(path: Path) -> dict[str, str]:
    """A MUCaps-format file {audio file name: caption}, keyed by the name's stem."""
    import json

    if not path.is_file():
        raise ConfigError(f"--captions {path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--captions {path}: not valid UTF-8 JSON ({e})") from e
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"--captions {path}: must map audio file names to captions "
                          "(the MUCaps format)")
    return {Path(k).stem: v for k, v in data.items()}


@dataclass
class FolderRun:
    """Options of `m2ugen eval folder`."""

    generated: Path
    reference: Path
    out: Path
    captions: Path | None = None
    sources: Path | None = None
    label: str | None = None
    device: str = "cpu"
    embeddings: str | None = None
    model_overrides: dict[str, str | None] = field(default_factory=dict)
    metrics: list[str] | None = None
    seed: int = 0


def evaluate_folder(run: FolderRun) -> dict[str, Any]:
    """Score a folder of generated clips against references (matched by file stem for the
    paired metrics: KL, CLAP with --captions, chroma with --sources)."""
    device = check_device(run.device, "--device")
    metrics = choose_metrics(run.metrics, MUSIC_METRICS)
    label = _check_label(run.label) if run.label is not None else \
        Path(run.generated).absolute().name
    gen = _audio_files(Path(run.generated), "--generated")
    ref = _audio_files(Path(run.reference), "--reference")
    missing = sorted(set(gen) - set(ref))
    if missing:
        raise ConfigError(f"--generated {run.generated}: {len(missing)} file(s) have no "
                          f"reference of the same name in {run.reference} (e.g. "
                          f"{gen[missing[0]].name}); name each generated clip after its "
                          "reference")
    names = sorted(gen)
    captions = None
    if run.captions is not None:
        table = _captions(Path(run.captions))
        lacking = [n for n in names if n not in table]
        if lacking:
            raise ConfigError(f"--captions {run.captions}: no caption for {lacking[0]} "
                              f"({len(lacking)} clip(s) lack one)")
        captions = [table[n] for n in names]
    sources = None
    if run.sources is not None:
        src = _audio_files(Path(run.sources), "--sources")
        lacking = [n for n in names if n not in src]
        if lacking:
            raise ConfigError(f"--sources {run.sources}: no source for {lacking[0]}")
        sources = ClipFiles([src[n] for n in names])
    _check_table(Path(run.out))
    models = resolve_eval_models(run.embeddings, run.model_overrides)
    scores = score_music(ClipFiles([gen[n] for n in names]), metrics, models, device,
                         references=ClipFiles([ref[n] for n in names]), captions=captions,
                         sources=sources, seed=run.seed)
    rows = [{"id": n, "music": str(gen[n]), "reference_audio": str(ref[n]),
             **({"caption": captions[i]} if captions else {})} for i, n in enumerate(names)]
    results = _results("folder", label, scores, metrics, models, rows,
                       {"generated": str(run.generated), "reference": str(run.reference),
                        "captions": str(run.captions) if run.captions else None,
                        "sources": str(run.sources) if run.sources else None})
    run_dir = Path(run.out) / label
    run_dir.mkdir(parents=True, exist_ok=True)
    return _finish(Path(run.out), run_dir, results)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
