"""The evaluation tasks: which records each reads, what the model is asked, and the
resumable generation run that writes one result per item.

| task | data (published format) | the model gets | reference |
|---|---|---|---|
| text2music | MUCaps `{audio_file: caption}` | the caption | the captioned clip |
| image2music | MUImage instruct (image input) | instruction + image | output_file, caption |
| video2music | MUVideo instruct (video input) | instruction + video | output_file, caption |
| edit | MUEdit instruct (audio input) | instruction + source music | output_file, caption |
| musicqa | MusicQA `[{audio_name, conversation}]` | each question + its music | the answer |

`--data` is the JSON file or a dataset spec YAML (`m2ugen synth-data`'s dataset.yaml),
whose entries carry their own roots. A JSON file's media are under `--root` (instruct
references under `--reference-root`, default `--root`); without either, the roots of its
entry in a `dataset.yaml` beside it, else its own folder. Records are read by
`m2ugen.data.formats.read_dataset`.

A run writes into its output folder: `settings.json` (everything that shapes the results),
then per item `music/<id>.wav` and `items/<id>.json` (each atomically, the JSON last, so
an item is done exactly when its JSON exists). A rerun skips finished items; the music of
item i depends only on the settings and on the items of its batch (batches are fixed
slices of the item list), so an interrupted run resumed gives the same files as one that
was never interrupted.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from m2ugen.chat import ChatRequest, open_batch
from m2ugen.checkpoint import atomic_write_text
from m2ugen.data.formats import DatasetEntry, read_dataset
from m2ugen.data.spec import load_spec
from m2ugen.errors import ConfigError
from m2ugen.generate import GenerationSettings
from m2ugen.media import audio_source, resample_audio, save_audio
from m2ugen.modules.decoders import EDIT_STRENGTH, TARGET_SCALE

log = logging.getLogger("m2ugen")


@dataclass(frozen=True)
class Task:
    name: str
    format: str  # the published format its records come in
    modality: str | None  # the input medium (instruct records are filtered by it)
    makes_music: bool
    stage: int  # the stage whose reading of the format gives the fields we need


TASKS: dict[str, Task] = {
    "text2music": Task("text2music", "mucaps", None, True, 1),
    "image2music": Task("image2music", "instruct", "image", True, 3),
    "video2music": Task("video2music", "instruct", "video", True, 3),
    "edit": Task("edit", "instruct", "audio", True, 3),
    "musicqa": Task("musicqa", "musicqa", "audio", False, 3),
}
MODEL_TASKS = tuple(TASKS)
SPEC_NAME = "dataset.yaml"  # a spec beside a data file gives its media roots


@dataclass
class Item:
    """One evaluation query. `n` is its place in the data: ids and seeds derive from it."""

    n: int
    source: str  # "<data file>#<record>"
    prompt: str
    media: dict[str, str] = field(default_factory=dict)  # modality -> absolute path
    caption: str | None = None  # the reference music's caption (CLAP text score)
    reference_audio: str | None = None
    reference_text: str | None = None  # musicqa: the reference answer

    @property
    def id(self) -> str:
        return f"{self.n:05d}"


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; use one of {', '.join(TASKS)}")
    return TASKS[name]


def _entries(task: Task, data: Path, root: Path | None, reference_root: Path | None
             ) -> list[DatasetEntry]:
    if data.suffix.lower() in (".yaml", ".yml"):
        spec = load_spec(data)
        seen: dict[Path, DatasetEntry] = {}
        for stage in (1, 2, 3):
            for entry in spec.entries(stage):
                if entry.format == task.format and entry.file not in seen:
                    seen[entry.file] = entry
        if not seen:
            raise ConfigError(f"{data}: the spec has no {task.format} entry, which "
                              f"{task.name} reads")
        return list(seen.values())
    if not data.is_file():
        raise ConfigError(f"{data}: data file not found (--data takes a {task.format} JSON "
                          "file or a dataset spec YAML; write a sample with "
                          "`m2ugen synth-data DIR`)")
    if root is None and reference_root is None:
        described = _spec_entry(task, data)
        if described is not None:
            return [described]
    root = root or data.parent
    return [DatasetEntry(task.format, data, root=root, input_root=root,
                         output_root=reference_root or root)]


def _spec_entry(task: Task, data: Path) -> DatasetEntry | None:
    """The entry for `data` in the dataset spec beside it (`dataset.yaml`, as `m2ugen
    synth-data` writes), whose roots then apply; None when there is none."""
    spec_file = data.parent / SPEC_NAME
    if not spec_file.is_file():
        return None
    spec = load_spec(spec_file)
    for stage in (1, 2, 3):
        for entry in spec.entries(stage):
            if entry.file == data and entry.format == task.format:
                return entry
    return None


def load_items(task: Task, data: str | Path, root: str | Path | None = None,
               reference_root: str | Path | None = None, skip_bad: bool = False
               ) -> tuple[list[Item], list[str]]:
    """(items in data order, descriptions of skipped bad records)."""
    data = Path(data).expanduser().absolute()
    for name, value in (("--root", root), ("--reference-root", reference_root)):
        if value is not None and not Path(value).is_dir():
            raise ConfigError(f"{name} {value}: not a directory")
    entries = _entries(task, data, Path(root).absolute() if root else None,
                       Path(reference_root).absolute() if reference_root else None)
    items: list[Item] = []
    skipped: list[str] = []
    for entry in entries:
        examples, bad = read_dataset(entry, task.stage)
        if bad and not skip_bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ConfigError(f"bad record {bad[0]}{more}; fix the data, or pass --skip-bad "
                              "to evaluate without it")
        skipped += [str(b) for b in bad]
        for ex in examples:
            item = _item(task, ex, len(items))
            if item is not None:
                items.append(item)
    if not items:
        what = f"{task.modality} " if task.format == "instruct" else ""
        raise ConfigError(f"{data}: no usable {what}{task.format} records for {task.name}")
    return items, skipped


def _item(task: Task, ex, n: int) -> Item | None:
    media = {k: str(v) for k, v in ex.media.items()}
    if task.name == "text2music":
        return Item(n, ex.source, ex.response, media={}, caption=ex.response,
                    reference_audio=media["audio"])
    if task.name == "musicqa":  # each question is asked on its own, with its music
        return Item(n, ex.source, ex.instruction, media=media, reference_text=ex.response)
    if task.modality not in media or ex.music_caption is None:
        return None  # an instruct record of another medium, or one answered in text
    return Item(n, ex.source, ex.instruction, media=media, caption=ex.music_caption,
                reference_audio=str(ex.music_file))


@dataclass
class RunSettings:
    """What shapes a run's outputs (compared on resume) plus what only describes it."""

    task: str
    model: str
    data: str
    seed: int = 0
    seconds: float = 10.0
    guidance: float = 3.5
    steps: int | None = None
    scheduler: str = "dpm++"  # AudioLDM2's sampler (modules/decoders SCHEDULERS)
    condition: str = "embedding"
    batch_size: int = 8
    max_new_tokens: int = 256
    temperature: float = 0.6
    top_p: float = 0.8
    dtype: str = "fp32"  # what the model computed in (--dtype auto resolved)
    source: str = "hear"  # edit: the decoder hears the item's source music (or "ignore")
    edit_strength: float = EDIT_STRENGTH

    def shaping(self) -> dict[str, Any]:
        out = asdict(self)
        if self.task != "edit":  # only edits hear a source: other runs resume as before
            del out["source"], out["edit_strength"]
        return out


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / "settings.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))["generation"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); this folder is not an m2ugen eval run: "
                          "choose another --out") from e
    changed = [f"{k} {old.get(k)!r} → {v!r}" for k, v in settings.items() if old.get(k) != v]
    if changed:
        raise ConfigError(f"{out}: holds results made with other settings ({'; '.join(changed)}"
                          "); use another --out, or the same settings to resume")


def item_done(out: Path, item: Item) -> bool:
    return (out / "items" / f"{item.id}.json").is_file()


def read_item(out: Path, item_id: str) -> dict[str, Any]:
    return json.loads((out / "items" / f"{item_id}.json").read_text(encoding="utf-8"))


def _batches(items: list[Item], size: int) -> list[list[Item]]:
    """Fixed slices of the item list by position in the data: n // size."""
    groups: dict[int, list[Item]] = {}
    for it in items:
        groups.setdefault(it.n // size, []).append(it)
    return list(groups.values())


def _replies(model, batch: list[Item], s: RunSettings) -> list[tuple[Any, torch.Tensor | None]]:
    """The model's replies to a batch of items, generated together (`chat.open_batch`:
    each what a fresh conversation answers, seeded `seed + n`) and, for music tasks, their
    [AUD] hidden states (appended after the text when a reply has none)."""
    settings = GenerationSettings(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                  top_p=s.top_p)  # seeds: per request
    requests = [ChatRequest(it.prompt, seed=s.seed + it.n, **it.media) for it in batch]
    music = TASKS[s.task].makes_music
    return [(result, session.audio_states(result) if music else None)
            for session, result in open_batch(model, requests, settings, len(batch))]


def _render(model, batch: list[Item], replies: list[tuple[Any, torch.Tensor]], s: RunSettings,
            seed: int):
    """One decoder call for a batch of replies → waveforms (B, samples).

    Exactly what `ChatSession.send(music="always")` renders for one reply: the projector
    output ÷ 10 (condition="embedding") or the reply text (condition="text"; an empty
    reply, which the chat refuses, prompts with the item's own prompt instead).
    """
    decoder = model.load_decoder()
    sources = None
    if s.source == "hear" and all("audio" in it.media for it in batch):  # the edit task
        spec = model.media_spec
        sources = [resample_audio(*audio_source(it.media["audio"], spec), decoder.sample_rate)
                   for it in batch]
    edit = {"sources": sources, "edit_strength": s.edit_strength}
    if s.condition == "text":
        texts = [r.text if r.text.strip() else it.prompt
                 for it, (r, _) in zip(batch, replies, strict=True)]
        return decoder.generate_from_text(texts, s.seconds, s.guidance, seed, s.steps,
                                          s.scheduler, **edit)
    with torch.no_grad():
        cond = torch.cat([model.project(h[None]) for _, h in replies]) / TARGET_SCALE
    return decoder.generate(cond, s.seconds, s.guidance, seed, s.steps, s.scheduler, **edit)


def _check_done(out: Path, items: list[Item]) -> None:
    """Finished items must be the same queries as now (the data file may have changed)."""
    for it in items:
        if item_done(out, it):
            rec = read_item(out, it.id)
            if rec.get("source") != it.source or rec.get("prompt") != it.prompt:
                raise ConfigError(f"{out}: item {it.id} was made from another record "
                                  f"({rec.get('source')}, now {it.source}); the data changed: "
                                  "use another --out")


def check_resume(out: Path, settings: RunSettings, items: list[Item]) -> None:
    """ConfigError when `out` holds a run this one cannot continue (other settings or data)."""
    _check_settings(out, settings.shaping())
    _check_done(out, items)


def generate(model, items: list[Item], out: Path, settings: RunSettings,
             describe: dict[str, Any] | None = None) -> dict[str, float]:
    """Generate every item not yet in `out`; returns {"items": n done now, "seconds": …}.

    `describe` (model id, data, embedding models …) is saved with the settings.
    """
    shaping = settings.shaping()
    check_resume(out, settings, items)
    out.mkdir(parents=True, exist_ok=True)
    record = {"generation": shaping, **(describe or {})}
    atomic_write_text(out / "settings.json", json.dumps(record, indent=2) + "\n")
    task = TASKS[settings.task]
    todo = [b for b in _batches(items, settings.batch_size)
            if any(not item_done(out, it) for it in b)]
    pending = sum(1 for b in todo for it in b if not item_done(out, it))
    start, made = time.perf_counter(), 0
    bar = tqdm(total=pending, desc=f"{settings.task}: generating", unit="item")
    for batch in todo:
        t0 = time.perf_counter()
        replies = _replies(model, batch, settings)
        waves = _render(model, batch, replies, settings, settings.seed + batch[0].n) \
            if task.makes_music else None
        per_item = (time.perf_counter() - t0) / len(batch)
        for j, (it, (result, _)) in enumerate(zip(batch, replies, strict=True)):
            if item_done(out, it):
                continue
            rec = {**asdict(it), "id": it.id, "reply": result.text, "seed": settings.seed + it.n,
                   "seconds_per_item": per_item}
            if waves is not None:
                rel = f"music/{it.id}.wav"
                save_audio(out / rel, waves[j], model.decoder.sample_rate)
                rec["music"] = rel
            atomic_write_text(out / "items" / f"{it.id}.json",
                              json.dumps(rec, indent=2, ensure_ascii=False) + "\n")
            made += 1
            bar.update(1)
    bar.close()
    return {"items": made, "seconds": time.perf_counter() - start}
