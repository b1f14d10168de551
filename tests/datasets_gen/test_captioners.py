"""datasets_gen.common.captioners: the image and video captioners on tiny random models of
the real classes (BLIP; VisionEncoderDecoder with a video or an image encoder), batched,
with a bad file failing only itself. The music captioners: test_audio_language.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # datasets_gen lives beside the m2ugen package, not inside it
    sys.path.insert(0, str(ROOT))

from datasets_gen.common import synthetic  # noqa: E402
from datasets_gen.common.captioners import ImageCaptioner, VideoCaptioner  # noqa: E402


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("captioner_media")
    broken = root / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"\x89PNG not really")
    (broken / "bad.mp4").write_bytes(b"not a video")
    return {"images": synthetic.write_images(root / "images", 3),
            "videos": synthetic.write_videos(root / "videos", 2, with_audio=False),
            "bad_image": broken / "bad.png", "bad_video": broken / "bad.mp4"}


def assert_batch_is_items_and_bad_fails_alone(captioner, good: list[Path], bad: Path) -> None:
    batch = captioner([good[0], bad, *good[1:]])
    assert isinstance(batch[1], Exception) and bad.name in str(batch[1])
    alone = [captioner([g])[0] for g in good]
    assert all(isinstance(c, str) and c for c in alone)
    assert [batch[0], *batch[2:]] == alone


def test_blip_image_captioner(media, tmp_path):
    captioner = ImageCaptioner(str(synthetic.build_tiny_blip(tmp_path / "blip")), "cpu",
                               max_new_tokens=5, num_beams=2)
    assert_batch_is_items_and_bad_fails_alone(captioner, media["images"], media["bad_image"])


@pytest.mark.parametrize("encoder,frames", [("timesformer", 4), ("vit", None)])
def test_video_captioner_with_a_video_or_an_image_encoder(media, tmp_path, encoder, frames):
    path = synthetic.build_tiny_video_captioner(tmp_path / encoder, encoder=encoder)
    captioner = VideoCaptioner(str(path), "cpu", max_new_tokens=5, num_beams=1)
    assert captioner.num_frames == frames  # None: the middle frame goes to the image encoder
    clip = captioner._frames(media["videos"][0])
    assert (len(clip) == 4) if frames else (clip.size == (64, 48))
    assert_batch_is_items_and_bad_fails_alone(captioner, media["videos"], media["bad_video"])
