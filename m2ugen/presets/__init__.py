"""Named presets: pure functions returning a config (ORIGINAL_M2UGEN.md §1 hub ids).

The hub presets name the base components only; their trained tensors come from a model
directory (training output or `m2ugen convert-original`). `tiny` is special: it is built
on first use into `<ckpts>/tiny` by `m2ugen.presets.tiny`, random weights, all components local
(`tiny-stereo`, `tiny-melody`: the same with a stereo MusicGen or MusicGen-Melody, into
`<ckpts>/tiny-stereo`, `<ckpts>/tiny-melody`).
`tiny-trained` likewise into `<ckpts>/tiny-trained`: the tiny components trained on
synthetic data (`m2ugen.presets.tiny_trained`; minutes, once).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from m2ugen.config import M2UGenConfig
from m2ugen.errors import ConfigError
from m2ugen.modules.decoders import audioldm2_cond_shape, musicgen_cond_shape
from m2ugen.presets.tiny import ensure_tiny
from m2ugen.presets.tiny_trained import ensure_tiny_trained

_LLAMA2 = "meta-llama/Llama-2-7b-hf"


def _hub(name: str, decoder: str, decoder_path: str,
         cond_shape: tuple[int, int] = musicgen_cond_shape(768)) -> M2UGenConfig:
    projector_tokens, projector_dim = cond_shape
    return M2UGenConfig(name=name, projector_tokens=projector_tokens,
                        projector_dim=projector_dim, llm=_LLAMA2, tokenizer=_LLAMA2,
                        mert="m-a-p/MERT-v1-330M",
                        vit="google/vit-base-patch16-224",
                        vivit="google/vivit-b-16x2-kinetics400",
                        decoder=decoder, decoder_path=decoder_path)


def musicgen_small() -> M2UGenConfig:
    return _hub("musicgen-small", "musicgen", "facebook/musicgen-small")


def musicgen_medium() -> M2UGenConfig:
    return _hub("musicgen-medium", "musicgen", "facebook/musicgen-medium")


def musicgen_large() -> M2UGenConfig:
    return _hub("musicgen-large", "musicgen", "facebook/musicgen-large")


# Stereo MusicGen (transformers: the decoder's audio_channels=2, 8 interleaved codebooks);
# the same T5-base conditioning, so the same projector shape as the mono checkpoints
def musicgen_stereo_small() -> M2UGenConfig:
    return _hub("musicgen-stereo-small", "musicgen", "facebook/musicgen-stereo-small")


def musicgen_stereo_medium() -> M2UGenConfig:
    return _hub("musicgen-stereo-medium", "musicgen", "facebook/musicgen-stereo-medium")


def musicgen_stereo_large() -> M2UGenConfig:
    return _hub("musicgen-stereo-large", "musicgen", "facebook/musicgen-stereo-large")


def musicgen_melody() -> M2UGenConfig:
    # MusicGen-Melody 1.5B: T5-base states (768) too; edits hear the source's chroma
    return _hub("musicgen-melody", "musicgen", "facebook/musicgen-melody")


def audioldm2() -> M2UGenConfig:
    # audioldm2-music: T5 states 1024 wide, GPT-2 states 768 wide
    return _hub("audioldm2", "audioldm2", "cvssp/audioldm2-music",
                cond_shape=audioldm2_cond_shape(1024, 768))


HUB_PRESETS: dict[str, Callable[[], M2UGenConfig]] = {
    "musicgen-small": musicgen_small,
    "musicgen-medium": musicgen_medium,
    "musicgen-large": musicgen_large,
    "musicgen-stereo-small": musicgen_stereo_small,
    "musicgen-stereo-medium": musicgen_stereo_medium,
    "musicgen-stereo-large": musicgen_stereo_large,
    "musicgen-melody": musicgen_melody,
    "audioldm2": audioldm2,
}
PRESET_NAMES = ("tiny", "tiny-audioldm2", "tiny-stereo", "tiny-melody", "tiny-trained",
                *HUB_PRESETS)


def ckpts_dir() -> Path:
    """Where built presets live: $M2UGEN_CKPTS (the Makefile points it at the checkout's
    `ckpts/`), else `ckpts/` under the user cache, $M2UGEN_CACHE (~/.cache/m2ugen). Never
    inside the installed package, which may be read-only."""
    env = os.environ.get("M2UGEN_CKPTS")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("M2UGEN_CACHE") or Path.home() / ".cache" / "m2ugen"
    return Path(cache).expanduser() / "ckpts"


def tiny_dir(decoder: str = "musicgen") -> Path:
    return ckpts_dir() / ("tiny" if decoder == "musicgen" else f"tiny-{decoder}")


def preset_config(name: str) -> M2UGenConfig:
    """The config of a hub preset; raises ConfigError for unknown names."""
    if name not in HUB_PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; presets are {', '.join(PRESET_NAMES)}, "
            "or give a model directory"
        )
    return HUB_PRESETS[name]()


def resolve_model(name_or_dir: str | Path, *,
                  model_cls: type) -> tuple[M2UGenConfig, Path | None]:
    """(config, model directory or None) for a directory path or a preset name; the tiny
    presets are built on first use (`model_cls`: see `tiny.ensure_tiny`)."""
    text = str(name_or_dir)
    if text in ("tiny", "tiny-audioldm2"):
        decoder = "musicgen" if text == "tiny" else "audioldm2"
        path = ensure_tiny(tiny_dir(decoder), decoder=decoder, model_cls=model_cls)
        return M2UGenConfig.load(path), path
    if text in ("tiny-stereo", "tiny-melody"):
        path = ensure_tiny(ckpts_dir() / text, model_cls=model_cls, variant=text[5:])
        return M2UGenConfig.load(path), path
    if text == "tiny-trained":
        path = ensure_tiny_trained(ckpts_dir() / "tiny-trained")
        return M2UGenConfig.load(path), path
    path = Path(text).expanduser()
    if path.is_dir():
        return M2UGenConfig.load(path), path
    if text in HUB_PRESETS:
        return preset_config(text), None
    if path.exists():
        raise ConfigError(f"{path}: is a file; --model takes a model directory or a preset")
    raise ConfigError(f"{text}: no such model directory or preset; presets are "
                      f"{', '.join(PRESET_NAMES)} (tiny builds itself offline)")

