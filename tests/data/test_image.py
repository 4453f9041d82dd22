"""Image decoding: reduced JPEG decode, EXIF orientation, normalization to RGB uint8, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from armbench_segmentation.data.image import (
    choose_reduction, decode_bytes, decode_image, decode_image_scaled, read_image_size, read_jpeg_header,
)
from armbench_segmentation.errors import SampleError


def blocks(h: int = 96, w: int = 160) -> np.ndarray:
    """RGB image of 4 flat quadrants with very different colours (JPEG-safe comparisons)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 255, 0)
    img[h // 2 :, : w // 2] = (0, 0, 255)
    img[h // 2 :, w // 2 :] = (255, 255, 255)
    return img


# orientation -> how a viewer shows the stored image (written independently with cv2 ops)
ORIENT = {
    1: lambda im: im,
    2: lambda im: cv2.flip(im, 1),
    3: lambda im: cv2.rotate(im, cv2.ROTATE_180),
    4: lambda im: cv2.flip(im, 0),
    5: lambda im: cv2.transpose(im),
    6: lambda im: cv2.rotate(im, cv2.ROTATE_90_CLOCKWISE),
    7: lambda im: cv2.flip(cv2.transpose(im), -1),
    8: lambda im: cv2.rotate(im, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_full_and_reduced(tmp_path, make_exif_jpeg, orientation):
    stored = blocks()
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(make_exif_jpeg(stored, orientation))
    expected = ORIENT[orientation](stored)

    full = decode_image(path)
    assert full.shape == expected.shape and full.dtype == np.uint8
    assert np.abs(full.astype(int) - expected).mean() < 4
    # agrees with OpenCV's own orientation handling of a full decode
    opencv = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert np.abs(full.astype(int) - opencv).max() <= 1

    # reduced path: long side 160 -> target 40 allows 1/4; orientation must still be applied
    dec = decode_image_scaled(path, target_size=40)
    assert dec.factor == 4
    assert dec.full_hw == expected.shape[:2]
    assert dec.image.shape[:2] == (expected.shape[0] // 4, expected.shape[1] // 4)
    small_expected = cv2.resize(expected, dec.image.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(dec.image.astype(int) - small_expected).mean() < 8
    assert read_image_size(path) == expected.shape[:2]


def test_header_parse():
    ok, buf = cv2.imencode(".jpg", np.zeros((30, 50, 3), np.uint8))
    header = read_jpeg_header(buf.tobytes())
    assert (header.height, header.width, header.orientation) == (30, 50, 1)
    assert read_jpeg_header(b"not a jpeg") is None


@pytest.mark.parametrize(
    "hw,target,factor",
    [((2048, 2448), 640, 2),   # 1224 >= 640 but 612 < 640
     ((2448, 2048), 640, 2),   # portrait: long side decides
     ((4000, 5200), 640, 8),   # 650 >= 640
     ((3000, 2600), 640, 4),   # 750
     ((1224, 1000), 640, 1),   # 612 < 640
     ((640, 640), 640, 1),
     ((2048, 2448), None, 1)],
)
def test_choose_reduction(hw, target, factor):
    assert choose_reduction(hw, target) == factor


def test_reduced_decode_size_is_ceil(tmp_path):
    img = np.full((1101, 1301, 3), 128, np.uint8)  # odd sizes: libjpeg rounds up
    ok, buf = cv2.imencode(".jpg", img)
    dec = decode_bytes(buf.tobytes(), target_size=640)
    assert dec.factor == 2
    assert dec.image.shape == (551, 651, 3)
    assert dec.full_hw == (1101, 1301)
    assert decode_bytes(buf.tobytes()).image.shape == (1101, 1301, 3)


def test_png_normalization(tmp_path):
    gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    out = decode_image(tmp_path / "gray.png")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert (out == gray[:, :, None]).all()

    g16 = np.full((10, 12), 257 * 100, np.uint16)
    g16[0, 0] = 65535
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    out = decode_image(tmp_path / "g16.png")
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert out[5, 5].tolist() == [100, 100, 100] and out[0, 0].tolist() == [255, 255, 255]

    bgra = np.zeros((8, 9, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 0  # B, G, R, alpha
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    out = decode_image(tmp_path / "rgba.png")
    assert out.shape == (8, 9, 3)
    assert out[0, 0].tolist() == [30, 20, 10]  # RGB, alpha dropped

    rgb16 = np.zeros((4, 5, 3), np.uint16)
    rgb16[..., 2] = 65535  # red in BGR order
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16)
    assert decode_image(tmp_path / "rgb16.png")[0, 0].tolist() == [255, 0, 0]


def test_gray_jpeg_becomes_rgb(tmp_path):
    cv2.imwrite(str(tmp_path / "g.jpg"), np.full((16, 16), 200, np.uint8))
    out = decode_image(tmp_path / "g.jpg")
    assert out.shape == (16, 16, 3)
    assert abs(int(out[8, 8, 0]) - 200) <= 2


def test_unicode_path(tmp_path):
    folder = tmp_path / "bilder-ü-图像"
    folder.mkdir()
    ok, buf = cv2.imencode(".jpg", np.zeros((12, 14, 3), np.uint8))
    (folder / "tôte.jpg").write_bytes(buf.tobytes())
    assert decode_image(folder / "tôte.jpg").shape == (12, 14, 3)


def test_missing_and_corrupt_files_raise_sample_error(tmp_path):
    with pytest.raises(SampleError, match="nope.jpg"):
        decode_image(tmp_path / "nope.jpg", sample_id="nope")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 10)
    with pytest.raises(SampleError, match="bad.jpg") as info:
        decode_image(tmp_path / "bad.jpg", sample_id="bad")
    assert info.value.sample_id == "bad"
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "cut.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])  # truncated: OpenCV alone would accept it
    with pytest.raises(SampleError, match="cut.jpg.*truncated"):
        decode_image(tmp_path / "cut.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(SampleError, match="empty.png"):
        decode_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(SampleError, match="text.png"):
        decode_image(tmp_path / "text.png")
