"""Untrusted image bytes → an RGB pixel array, entirely in memory.

Size and header dimensions are checked before any pixel is decoded, so a small file that claims to be
enormous (a decompression bomb) is refused without allocating its pixels.

OpenCV, numpy and Pillow are imported where they decode, in the face workers: the server's own process imports
this module only for :class:`ImageRejected` and the limits, and so never loads them (~0.2 s of CPU and ~40 MB
of memory at every start).
"""
from __future__ import annotations

import io
import re
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

MAX_BYTES = 5 * 1024 * 1024
MAX_PIXELS = 25_000_000

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_OTHER_FORMATS = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
                  (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"))
_JPEG_EOI, _JPEG_SOS = b"\xff\xd9", b"\xff\xda"


class ImageRejected(Exception):
    """The bytes are not an image we accept; ``reason`` is stable for machines, ``message`` is for people."""

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message)  # both in args, so the exception survives pickling out of a worker
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


def decode_frame(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Validate and decode a JPEG or PNG into an RGB ``uint8`` array (H×W×3), EXIF orientation applied."""
    if not data:
        raise ImageRejected("empty", "the image is empty (0 bytes); send a JPEG or PNG photo")
    if len(data) > max_bytes:
        raise ImageRejected("too_large", f"image is {_mb(len(data))} MB ({len(data):,} bytes); "
                                         f"the limit is {_mb(max_bytes)} MB ({max_bytes:,} bytes)")
    kind = _sniff(data)
    width, height = _header_size(data, kind, max_pixels)
    if width * height > max_pixels:
        raise ImageRejected("too_many_pixels", f"image is {width}x{height} = {_mp(width * height)} megapixels; "
                                               f"the limit is {_mp(max_pixels)}")
    if kind == "JPEG" and data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
        raise ImageRejected("unreadable", "the JPEG is truncated (it ends before the image data does); "
                                          "send the whole file again")
    rgb = _decode_with_opencv(data)
    return rgb if rgb is not None else _decode_with_pillow(data, kind)


def _sniff(data: bytes) -> str:
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    named = next((name for magic, name in _OTHER_FORMATS if data.startswith(magic)), None)
    if named is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        named = "WebP"
    if named is None and data[4:8] == b"ftyp":
        named = "HEIC/MP4"
    found = f"this is a {named} file" if named else "these bytes are not a recognised image"
    raise ImageRejected("unsupported_format", f"only JPEG and PNG images are accepted; {found}")


def _header_size(data: bytes, kind: str, max_pixels: int) -> tuple[int, int]:
    """Read the dimensions from the header only (Pillow's ``open`` is lazy: no pixels are decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=(kind,)) as image:
                return image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{_mp(int(claimed.group(1)))} megapixels" if claimed else "far too many pixels"
        raise ImageRejected("too_many_pixels", f"image header claims {size}; the limit is {_mp(max_pixels)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected("unreadable", f"the {kind} header is damaged and cannot be read ({exc}); "
                                          "send the photo again") from None


def _decode_with_opencv(data: bytes) -> np.ndarray | None:
    """IMREAD_COLOR gives 8-bit BGR for 16-bit, grey and RGBA input and applies JPEG EXIF orientation."""
    import cv2
    import numpy as np

    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode_with_pillow(data: bytes, kind: str) -> np.ndarray:
    """Fallback for the rare files OpenCV refuses (e.g. some CMYK JPEGs); corrupt data ends here.

    face_recognition switches on Pillow's global LOAD_TRUNCATED_IMAGES when imported; a truncated upload
    must still be refused, so it is off for this decode (a worker decodes one frame at a time).
    """
    import numpy as np
    from PIL import Image, ImageFile, ImageOps

    tolerant, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with Image.open(io.BytesIO(data), formats=(kind,)) as image:
            upright = ImageOps.exif_transpose(image)
            return np.asarray(upright.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected("unreadable", f"the image data is damaged or truncated and cannot be decoded ({exc}); "
                                          "send the photo again") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = tolerant


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f}"


def _mp(pixels: int) -> str:
    return f"{pixels / 1_000_000:g}" if pixels % 100_000 == 0 else f"{pixels / 1_000_000:.1f}"
