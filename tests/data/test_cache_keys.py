"""Feature-cache keys name what a cached value depends on, weights included: a component
folder overwritten with other weights must not hand back the old features or targets."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from m2ugen.checkpoint import EMPTY_FINGERPRINT, fingerprint
from m2ugen.data.dataset import TrainDataset
from m2ugen.data.example import Example
from m2ugen.model import M2UGen
from m2ugen.presets.tiny import build_tiny


def _keys(model_dir, example) -> tuple[str, str]:
    model = M2UGen.from_pretrained(model_dir, decoder=False)
    data = TrainDataset([example], model, max_len=256)
    return data.feature_key(example, "audio"), data.target_key(example)


def test_keys_follow_the_weights_not_only_the_path(tmp_path):
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(8000, dtype=np.float32), 16000)
    example = Example("Compose.", "Here it is.", audio=clip, music_caption="A calm piano.")
    build_tiny(tmp_path / "m", seed=5, model_cls=M2UGen)
    first = _keys(tmp_path / "m", example)
    assert _keys(tmp_path / "m", example) == first  # stable while nothing changes
    build_tiny(tmp_path / "m", seed=6, model_cls=M2UGen)  # same paths, other weights
    again = _keys(tmp_path / "m", example)
    assert again[0] != first[0] and again[1] != first[1]


def test_a_pipeline_folder_is_fingerprinted_by_its_subfolders(tmp_path):
    """A diffusers pipeline keeps its weights in subfolders: they count (before, every
    such folder had the same, empty, fingerprint)."""
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text("{}")
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 100)
    first = fingerprint(pipe)
    assert first != EMPTY_FINGERPRINT
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\1" * 100)
    assert fingerprint(pipe) != first


def test_a_fingerprint_recorded_before_subfolders_counted_warns_of_nothing(tiny_audioldm2_dir,
                                                                          tmp_path, caplog):
    """Model directories written by the first version hold the empty fingerprint for an
    AudioLDM2 folder: it means "not recorded", not "changed"."""
    saved = M2UGen.from_pretrained(tiny_audioldm2_dir, decoder=False).save_pretrained(
        tmp_path / "run")
    cfg = json.loads((saved / "m2ugen.json").read_text())
    assert cfg["base_fingerprints"]["decoder_path"] not in ("", EMPTY_FINGERPRINT)
    cfg["base_fingerprints"]["decoder_path"] = EMPTY_FINGERPRINT
    (saved / "m2ugen.json").write_text(json.dumps(cfg))
    caplog.clear()
    M2UGen.from_pretrained(saved, decoder=False)
    assert "trained on" not in caplog.text
    cfg["base_fingerprints"]["decoder_path"] = "0" * 20  # a real mismatch still warns
    (saved / "m2ugen.json").write_text(json.dumps(cfg))
    M2UGen.from_pretrained(saved, decoder=False)
    assert "is not the decoder_path this model was trained on" in caplog.text


def test_a_target_key_names_the_caption_the_decoder_and_the_target_format(monkeypatch):
    """Each caption has its own target; a bumped TARGET_FORMAT (the target's meaning
    changed) must not read the targets cached under the old one."""
    from m2ugen.data import cache

    key = cache.caption_key("A calm piano.", "musicgen:/m/decoder|abc")
    assert key == cache.caption_key("A calm piano.", "musicgen:/m/decoder|abc")
    assert key != cache.caption_key("Loud rock.", "musicgen:/m/decoder|abc")
    assert key != cache.caption_key("A calm piano.", "musicgen:/m/decoder|abd")
    monkeypatch.setattr(cache, "TARGET_FORMAT", cache.TARGET_FORMAT + 1)
    assert cache.caption_key("A calm piano.", "musicgen:/m/decoder|abc") != key


def _changed(folder, edit) -> bool:
    before = fingerprint(folder)
    edit()
    return fingerprint(folder) != before


def test_a_fingerprint_sees_the_start_middle_and_end_of_a_weight_file_and_its_configs(
        tmp_path):
    """Two checkpoints of one architecture have files of the same names and sizes: a
    change at the start, in the middle or at the end of a large weight file, in a `.bin`
    file or in a config.json is another component."""
    folder = tmp_path / "c"
    (folder / "text_encoder").mkdir(parents=True)
    weights = folder / "text_encoder" / "model.safetensors"
    size = 5 * 65536
    weights.write_bytes(b"\0" * size)
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 1000)
    (folder / "config.json").write_text('{"d_model": 8}')

    def poke(path, offset):
        def edit():
            data = bytearray(path.read_bytes())
            data[offset] ^= 1
            path.write_bytes(bytes(data))
        return edit

    for offset in (0, size // 2 + 10, size - 1):
        assert _changed(folder, poke(weights, offset)), offset
    assert _changed(folder, poke(folder / "pytorch_model.bin", 500))
    assert _changed(folder, lambda: (folder / "config.json").write_text('{"d_model": 16}'))


def test_a_fingerprint_tells_which_subfolder_holds_the_weights(tmp_path):
    """The same weight file in another component's subfolder (the VAE's weights where the
    UNet's were) is another pipeline, though no file's bytes or size changed."""
    pipe = tmp_path / "pipe"
    for sub in ("unet", "vae"):
        (pipe / sub).mkdir(parents=True)
    (pipe / "unet" / "w.safetensors").write_bytes(b"\1" * 64)
    assert _changed(pipe, lambda: (pipe / "unet" / "w.safetensors").rename(
        pipe / "vae" / "w.safetensors"))


def test_the_empty_fingerprint_is_what_a_folder_without_top_level_weights_gave(tmp_path):
    """EMPTY_FINGERPRINT stands for what the first version recorded for a pipeline folder
    (its weights all in subfolders, it hashed nothing): the fingerprint of no files."""
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "model_index.json").write_text("{}")
    assert fingerprint(empty) == EMPTY_FINGERPRINT
    assert fingerprint(tmp_path / "absent") is None


def test_one_unrecorded_fingerprint_does_not_hide_a_changed_component(tiny_audioldm2_dir,
                                                                     tmp_path, caplog):
    """A component recorded with the empty fingerprint is skipped, not the check: a
    component recorded after it whose weights changed still warns."""
    saved = M2UGen.from_pretrained(tiny_audioldm2_dir, decoder=False).save_pretrained(
        tmp_path / "run")
    cfg = json.loads((saved / "m2ugen.json").read_text())
    keys = list(cfg["base_fingerprints"])
    assert len(keys) > 1
    for key in keys[:-1]:
        cfg["base_fingerprints"][key] = EMPTY_FINGERPRINT
    cfg["base_fingerprints"][keys[-1]] = "0" * 20
    (saved / "m2ugen.json").write_text(json.dumps(cfg))
    caplog.clear()
    M2UGen.from_pretrained(saved, decoder=False)
    assert f"is not the {keys[-1]} this model was trained on" in caplog.text


def test_targets_cached_before_format_2_are_not_read():
    """Caches filled before TARGET_FORMAT 2 (masked-out padding; AudioLDM2 captions encoded
    together) hold keys `target-sha1(decoder|v1|caption)`: none of them is read."""
    import hashlib

    from m2ugen.data import cache

    decoder, caption = "audioldm2:/m/decoder|abc", "A calm piano."
    old = "target-" + hashlib.sha1(f"{decoder}|v1|{caption}".encode()).hexdigest()
    assert cache.TARGET_FORMAT >= 2
    assert cache.caption_key(caption, decoder) != old
