"""`m2ugen eval`: the M2UGen paper's evaluation on the field's metric packages.

- `tasks.py`   what each task reads and asks; the resumable, batched generation run
- `embeddings.py` CLAP / EnCodec / MERT / AST loaded by hub id or directory (transformers)
- `config.py`  which of those models a run uses (`standard` hub ids, `tiny`, a JSON file)
- `tiny.py`    the tiny offline versions of those models
- `audio_metrics.py`, `text_metrics.py`  the metrics, each computed by its package
- `pitch.py`   melody metrics on basic-pitch's trained transcriber (ONNX, in its wheel)
- `score.py`   every metric's definition; scoring music or replies against references
- `judge.py`   the CLAP judge of best-of-N (`--rerank clap`): the CLAP score per candidate
- `report.py`  results.json, the Markdown comparison table, the PNG plot
- `run.py`     a model on a task, or a folder of music, end to end
"""
