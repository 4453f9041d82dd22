"""Fast, predictable image decoding: bytes -> (H, W, 3) uint8 RGB.

* Files are read with ``open()`` and decoded with ``cv2.imdecode`` (unicode paths work).
* JPEGs can be decoded at 1/2, 1/4 or 1/8 size by libjpeg's DCT scaling
  (``IMREAD_REDUCED_COLOR_k``), several times cheaper than a full decode followed by a
  resize. The largest reduction whose long side is still >= ``target_size`` is used.
* EXIF orientation is applied by this module itself (OpenCV is told to ignore it) so the
  full and the reduced paths agree on every OpenCV version; width/height of the result
  refer to the *oriented* image, like COCO's ``images[].width/height``.
* Gray, 16-bit and alpha images (PNG, TIFF...) are normalized to RGB uint8 (16-bit is
  scaled by 1/257, alpha is dropped).
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from armbench_segmentation.errors import SampleError

log = logging.getLogger(__name__)

REDUCTIONS = (8, 4, 2)  # libjpeg DCT scaling factors OpenCV exposes
_REDUCED_FLAG = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
# SOFn markers carrying the frame size (not DHT C4, JPG C8, DAC CC)
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class JpegHeader:
    """What the JPEG header says, before any decoding.

    ``height``/``width`` are the stored (un-oriented) frame size; ``orientation`` is the
    EXIF orientation tag (1..8, 1 when absent).
    """

    height: int
    width: int
    orientation: int = 1

    @property
    def transposed(self) -> bool:
        """Orientations 5..8 swap width and height."""
        return self.orientation in (5, 6, 7, 8)

    @property
    def oriented_hw(self) -> tuple[int, int]:
        return (self.width, self.height) if self.transposed else (self.height, self.width)


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _exif_orientation(payload: bytes) -> int:
    """Orientation tag from an APP1 payload (starting after the length field), 1 if absent."""
    if not payload.startswith(b"Exif\x00\x00"):
        return 1
    tiff = payload[6:]
    if len(tiff) < 8:
        return 1
    endian = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if endian is None:
        return 1
    (ifd,) = struct.unpack(endian + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(endian + "H", tiff[ifd : ifd + 2])
    for i in range(count):
        entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        if len(entry) < 12:
            break
        tag, typ, n = struct.unpack(endian + "HHI", entry[:8])
        if tag == 0x0112:
            if typ == 3:  # SHORT, value left-justified in the 4-byte field
                (value,) = struct.unpack(endian + "H", entry[8:10])
            elif typ == 4:  # LONG (non-standard but seen)
                (value,) = struct.unpack(endian + "I", entry[8:12])
            else:
                return 1
            return int(value) if 1 <= value <= 8 else 1
    return 1


def read_jpeg_header(data: bytes) -> JpegHeader | None:
    """Frame size and EXIF orientation from JPEG bytes; None when not parseable."""
    if not is_jpeg(data):
        return None
    pos, n = 2, len(data)
    orientation = 1
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            return None
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and orientation == 1:
            orientation = _exif_orientation(segment)
        elif marker in _SOF_MARKERS:
            if len(segment) < 5:
                return None
            height, width = struct.unpack(">HH", segment[1:5])
            if height == 0 or width == 0:
                return None
            return JpegHeader(int(height), int(width), orientation)
        elif marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1..8 to an (H, W, ...) array (returns a contiguous array)."""
    if orientation == 2:
        out = image[:, ::-1]
    elif orientation == 3:
        out = image[::-1, ::-1]
    elif orientation == 4:
        out = image[::-1]
    elif orientation == 5:
        out = np.swapaxes(image, 0, 1)
    elif orientation == 6:  # rotate 90 degrees clockwise
        out = np.rot90(image, -1)
    elif orientation == 7:
        out = np.swapaxes(image, 0, 1)[::-1, ::-1]
    elif orientation == 8:  # rotate 90 degrees counter-clockwise
        out = np.rot90(image, 1)
    else:
        return image
    return np.ascontiguousarray(out)


def choose_reduction(hw: tuple[int, int], target_size: int | None) -> int:
    """Largest factor in (8, 4, 2) whose reduced long side (ceil) stays >= target_size, else 1."""
    if not target_size:
        return 1
    long_side = max(hw)
    for k in REDUCTIONS:
        if math.ceil(long_side / k) >= target_size:
            return k
    return 1


def reduced_size(hw: tuple[int, int], factor: int) -> tuple[int, int]:
    """Size libjpeg produces for a 1/factor decode: ceil of each side."""
    return math.ceil(hw[0] / factor), math.ceil(hw[1] / factor)


def to_rgb_uint8(image: np.ndarray, bgr: bool = True) -> np.ndarray:
    """Any decoded OpenCV array -> (H, W, 3) uint8 RGB.

    Gray (H, W) or (H, W, 1) is replicated, alpha dropped, 16-bit scaled by 1/257,
    float assumed in [0, 1]. ``image`` is never modified.
    """
    return _to_rgb_uint8(image, bgr, in_place=False)


def _to_rgb_uint8(image: np.ndarray, bgr: bool, in_place: bool) -> np.ndarray:
    """``to_rgb_uint8``; with ``in_place`` a contiguous (H, W, 3) uint8 BGR array (a fresh
    decode nobody else holds) is converted in its own memory (no 4 MB allocation)."""
    img = image
    if (img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (3, 4) and img.size and bgr
            and img.flags.c_contiguous):  # the usual case: one SIMD pass of OpenCV, not numpy's strided copy
        if img.shape[2] == 4:
            return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img if in_place else None)
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"unsupported image dtype {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if channels == 2:  # gray + alpha
        return np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2))
    if channels >= 3:
        img = img[:, :, :3]
        return np.ascontiguousarray(img[:, :, ::-1] if bgr else img)
    raise ValueError(f"unsupported channel count {channels}")


def _read_bytes(path: Path, sample_id: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise SampleError(sample_id, f"image file {path.name} not found at {path}") from None
    except IsADirectoryError:
        raise SampleError(sample_id, f"image path {path} is a directory, not an image file") from None
    except OSError as exc:
        raise SampleError(sample_id, f"cannot read image file {path.name}: {exc.strerror}") from None


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decode result: ``image`` (h, w, 3) uint8 RGB, the reduction ``factor`` (1, 2, 4, 8)
    and ``full_hw``, the oriented full-resolution (H, W) the file stores (from the JPEG
    header for a reduced decode). ``image`` has size ``ceil(H / factor), ceil(W / factor)``."""

    image: np.ndarray
    factor: int
    full_hw: tuple[int, int]


def decode_bytes(data: bytes, target_size: int | None = None, sample_id: str = "", name: str = "<bytes>") -> DecodedImage:
    """Decode image bytes (see :func:`decode_image`)."""
    if not data:
        raise SampleError(sample_id, f"image file {name} is empty")
    buf = np.frombuffer(data, dtype=np.uint8)
    header = read_jpeg_header(data)
    if header is not None:
        if b"\xff\xd9" not in data[-4096:]:  # libjpeg would decode a truncated file with gray filler
            raise SampleError(sample_id, f"image file {name} is truncated (no JPEG end marker)")
        factor = choose_reduction((header.height, header.width), target_size)
        flag = _REDUCED_FLAG.get(factor, cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
        img = cv2.imdecode(buf, flag)
        if img is None:
            raise SampleError(sample_id, f"image file {name} is corrupt or not a readable JPEG")
        stored_hw = (header.height, header.width)
        if img.shape[:2] != reduced_size(stored_hw, factor):  # defensive: a decoder that did not scale as asked
            log.debug("%s: decoded %s, expected %s at 1/%d", name, img.shape[:2], reduced_size(stored_hw, factor), factor)
            factor = next((k for k in (1, *REDUCTIONS) if reduced_size(stored_hw, k) == img.shape[:2]), factor)
        img = apply_orientation(img, header.orientation)  # still ours: converted in place
        return DecodedImage(_to_rgb_uint8(img, True, in_place=True), factor, header.oriented_hw)
    # not a JPEG (or an unusual header): decode everything as stored, normalize ourselves
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise SampleError(sample_id, f"image file {name} is corrupt or in an unsupported format")
    try:
        rgb = _to_rgb_uint8(img, True, in_place=True)
    except ValueError as exc:
        raise SampleError(sample_id, f"image file {name}: {exc}") from None
    return DecodedImage(rgb, 1, (int(rgb.shape[0]), int(rgb.shape[1])))


def decode_image_scaled(path: Path, target_size: int | None = None, sample_id: str = "") -> DecodedImage:
    """Like :func:`decode_image` but also returns the reduction factor and the full size."""
    path = Path(path)
    sid = sample_id or path.stem
    return decode_bytes(_read_bytes(path, sid), target_size, sid, path.name)


def decode_image(path: Path, target_size: int | None = None, sample_id: str = "") -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, EXIF orientation applied.

    Args:
        path: image file (any path; confinement is the caller's job).
        target_size: the size the image will be resized to (e.g. 640). When given, a
            JPEG may be decoded at 1/2, 1/4 or 1/8 size, keeping the long side >= it.
        sample_id: used in error messages (defaults to the file stem).
    Returns:
        (H, W, 3) uint8 RGB, or (ceil(H/k), ceil(W/k), 3) for a reduced decode.
    Raises:
        SampleError: missing, unreadable or corrupt file (the message names the file).
    """
    return decode_image_scaled(path, target_size, sample_id).image


def read_image_size(path: Path, sample_id: str = "") -> tuple[int, int] | None:
    """Oriented (H, W) of a JPEG from its header only (no decode); None for other formats."""
    header = read_jpeg_header(_read_bytes(Path(path), sample_id or Path(path).stem))
    return None if header is None else header.oriented_hw
