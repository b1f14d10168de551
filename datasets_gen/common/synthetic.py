"""Synthetic media and tiny random captioners / chat LLM, for tests and offline demos.

The models are the real classes built from tiny configs with random weights, saved with
`save_pretrained` and loaded back by the pipelines through the same `from_pretrained` code
real weights use: their text is nonsense, the plumbing is real.

    python -m datasets_gen.common.synthetic --out /tmp/dg   # media/, models/, audioset/

models/: m2ugen (tiny m2ugen, no music decoder), audio_captioner (Qwen2-Audio), blip,
video_captioner (TimeSformer → GPT-2), chat (LLaMA with a chat template).
"""

from __future__ import annotations

import argparse
import json
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from datasets_gen.common.music_stats import PITCHES, synth_clip
from m2ugen.media import save_audio

SR = 24000
MUSIC_LABEL = "/m/04rlf"  # AudioSet "Music"; its subtree is what MUCaps keeps
ONTOLOGY = [
    {"id": "/m/04rlf", "name": "Music", "child_ids": ["/m/04szw", "/m/0342h"]},
    {"id": "/m/04szw", "name": "Musical instrument", "child_ids": ["/m/05r5c"]},
    {"id": "/m/05r5c", "name": "Piano", "child_ids": []},
    {"id": "/m/0342h", "name": "Guitar", "child_ids": []},
    {"id": "/m/09x0r", "name": "Speech", "child_ids": []},
    {"id": "/m/0jbk", "name": "Animal", "child_ids": []},
]


def clip_spec(i: int) -> tuple[float, str]:
    """(bpm, key) of synthetic clip i: a few tempo/key families so pairs exist."""
    bpm = (80.0, 120.0, 150.0)[i % 3]
    key = f"{PITCHES[(i // 3) % 4 * 2]} {'major' if i % 2 == 0 else 'minor'}"
    return bpm, key


def write_audio(folder: Path, n: int, seconds: float = 2.0, prefix: str = "clip") -> list[Path]:
    paths = []
    for i in range(n):
        bpm, key = clip_spec(i)
        path = folder / f"{prefix}{i:03d}.wav"
        save_audio(path, synth_clip(bpm, key, seconds, SR, seed=i), SR)
        paths.append(path)
    return paths


def write_images(folder: Path, n: int, prefix: str = "clip") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def write_videos(folder: Path, n: int, seconds: float = 1.0, fps: int = 8,
                 prefix: str = "clip", with_audio: bool = True) -> list[Path]:
    """Small mp4 files (mpeg4 video, 64×48; AAC music track when `with_audio`)."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i:03d}.mp4"
        with av.open(str(path), "w") as container:
            video = container.add_stream("mpeg4", rate=fps)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
            audio = container.add_stream("aac", rate=SR) if with_audio else None
            for _ in range(int(seconds * fps)):
                img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                container.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            container.mux(video.encode(None))
            if audio is not None:
                bpm, key = clip_spec(i)
                wav = synth_clip(bpm, key, seconds, SR, seed=i)
                frame_size = 1024
                for s in range(0, len(wav), frame_size):
                    chunk = wav[s:s + frame_size][None, :]
                    frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                    frame.sample_rate, frame.pts = SR, s
                    frame.time_base = Fraction(1, SR)
                    container.mux(audio.encode(frame))
                container.mux(audio.encode(None))
        paths.append(path)
    return paths


def write_audioset(folder: Path, clip_ids: list[str]) -> tuple[Path, Path]:
    """An AudioSet-style segments CSV (every third clip is speech, not music) + ontology."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Segments csv created synthetic", "# YTID, start_seconds, end_seconds, "
             "positive_labels"]
    music = ["/m/05r5c", "/m/0342h", "/m/04rlf"]
    for i, cid in enumerate(clip_ids):
        labels = "/m/09x0r" if i % 3 == 2 else f"{music[i % 3]},/m/0jbk"
        lines.append(f'{cid}, 0.000, 10.000, "{labels}"')
    csv = folder / "segments.csv"
    csv.write_text("\n".join(lines) + "\n")
    onto = folder / "ontology.json"
    onto.write_text(json.dumps(ONTOLOGY))
    return csv, onto


def _corpus(n: int = 400) -> list[str]:
    from m2ugen.presets.tiny import tiny_corpus

    return tiny_corpus(seed=1, n=n)


def build_tiny_blip(out: Path, seed: int = 0) -> Path:
    """BlipForConditionalGeneration + BlipProcessor (BERT WordPiece tokenizer), tiny."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    torch.manual_seed(seed)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_corpus(), WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece()
    tokenizer = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    size = 32
    text = {"vocab_size": tok.get_vocab_size(), "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "encoder_hidden_size": 32,
            "bos_token_id": cls_id, "pad_token_id": tok.token_to_id("[PAD]"),
            "sep_token_id": sep_id, "eos_token_id": sep_id, "max_position_embeddings": 64}
    vision = {"hidden_size": 32, "image_size": size, "patch_size": 8, "num_hidden_layers": 2,
              "num_attention_heads": 2, "intermediate_size": 64}
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision,
                                                    projection_dim=32))
    model.save_pretrained(out)
    processor = BlipProcessor(BlipImageProcessorPil(size={"height": size, "width": size}),
                              tokenizer)
    processor.save_pretrained(out)
    return out


def build_tiny_video_captioner(out: Path, seed: int = 0, encoder: str = "timesformer") -> Path:
    """VisionEncoderDecoderModel → GPT-2 with a LLaMA-style tokenizer; the encoder is a
    TimeSformer (4 frames: a video encoder) or, with encoder="vit", a ViT (an image
    encoder: the captioner gives it one frame)."""
    import torch
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        TimesformerConfig,
        VideoMAEImageProcessorPil,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessorPil,
    )

    from m2ugen.presets.tiny import _train_tokenizer

    torch.manual_seed(seed)
    _train_tokenizer(_corpus(), out, vocab_size=400)
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    sizes = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 64}
    enc = ViTConfig(**sizes) if encoder == "vit" else TimesformerConfig(num_frames=4, **sizes)
    dec = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                     add_cross_attention=True, is_decoder=True, bos_token_id=1, eos_token_id=2)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id = tokenizer.bos_token_id
    config.pad_token_id = config.eos_token_id = tokenizer.eos_token_id
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    if encoder == "vit":
        ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)
    else:
        VideoMAEImageProcessorPil(size={"shortest_edge": 32},
                                  crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def build_tiny_chat_llm(out: Path, seed: int = 0) -> Path:
    """LlamaForCausalLM + sentencepiece tokenizer with a chat template, tiny."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from m2ugen.presets.tiny import _train_tokenizer

    torch.manual_seed(seed)
    _train_tokenizer(_corpus(), out, vocab_size=400)
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
                      initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


AUDIO_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'audio' %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}")


def build_tiny_audio_captioner(out: Path, seed: int = 0, window_seconds: int = 4) -> Path:
    """Qwen2AudioForConditionalGeneration + Qwen2AudioProcessor, tiny: a byte-level BPE
    trained here with Qwen2-Audio's special tokens, a 128-mel Whisper feature extractor
    with a `window_seconds` window (the real one: 30 s), a 2-layer encoder and LM."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Tokenizer,
        WhisperFeatureExtractor,
    )

    torch.manual_seed(seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>",
                "<|audio_eos|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = Qwen2Tokenizer(tokenizer_object=tok, unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000,
                                        chunk_length=window_seconds, return_attention_mask=True)
    Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer,
                        chat_template=AUDIO_CHAT_TEMPLATE).save_pretrained(out)
    # the encoder takes exactly the window's mel frames: 100 per second, halved by its conv
    audio = {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2,
             "encoder_ffn_dim": 64, "num_mel_bins": 128,
             "max_source_positions": window_seconds * 50}
    text = {"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "max_position_embeddings": 1024,
            "initializer_range": 0.2}  # varied random replies, rarely an immediate end
    config = Qwen2AudioConfig(audio_config=audio, text_config=text,
                              audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    return out


def build_tiny_music_captioner(out: Path, seed: int = 0) -> Path:
    """The tiny m2ugen model (`m2ugen.presets.tiny.build_tiny`) without its music decoder: the
    captioner and the encoders never load the decoder, and skipping it saves time."""
    from m2ugen.model import M2UGen
    from m2ugen.presets import tiny

    return tiny.build_tiny(out, seed=seed, model_cls=M2UGen, with_decoder=False)


def build_demo(out: Path, n: int = 6, seed: int = 0) -> dict[str, Path]:
    """Everything an offline run of the four pipelines needs, under `out`."""
    random.seed(seed)
    audio = out / "media" / "audio"
    write_audio(audio, n)
    write_images(out / "media" / "images", n)
    write_videos(out / "media" / "videos", n)
    csv, onto = write_audioset(out / "audioset", [f"clip{i:03d}" for i in range(n)])
    models = out / "models"
    return {"audio": audio, "images": out / "media" / "images",
            "videos": out / "media" / "videos", "labels": csv, "ontology": onto,
            "blip": build_tiny_blip(models / "blip", seed),
            "video_captioner": build_tiny_video_captioner(models / "video_captioner", seed),
            "chat": build_tiny_chat_llm(models / "chat", seed),
            "m2ugen": build_tiny_music_captioner(models / "m2ugen", seed),
            "audio_captioner": build_tiny_audio_captioner(models / "audio_captioner", seed)}


def load_with_training_reader(entry_file: Path, stage: int) -> tuple[list, list]:
    """Read a pipeline's `<Dataset>.dataset.json` entry with the training code's reader
    (m2ugen.data.formats) -> (examples, bad records)."""
    from m2ugen.data.formats import DatasetEntry, read_dataset

    raw = json.loads(entry_file.read_text(encoding="utf-8"))
    paths = {k: Path(v) for k, v in raw.items() if k != "format" and v is not None}
    return read_dataset(DatasetEntry(format=raw["format"], **paths), stage)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num", type=int, default=6, help="clips per modality")
    for name, path in build_demo(parser.parse_args().out, parser.parse_args().num).items():
        print(f"{name}: {path}")
