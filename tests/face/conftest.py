"""Real photos (small copies of ../shared/faces) and byte-level builders for the images we must refuse."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

FACES = Path(__file__).parents[1] / "fixtures" / "faces"


def photo(name: str) -> bytes:
    """A fixture by its path under tests/fixtures/faces, e.g. ``obama/obama1.jpg``."""
    return (FACES / name).read_bytes()


def pixels(name: str) -> np.ndarray:
    """A fixture's RGB pixels, decoded independently of the code under test."""
    with Image.open(FACES / name) as image:
        return np.asarray(image.convert("RGB"))


def jpeg(rgb: np.ndarray, **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90, **save_args)
    return buffer.getvalue()


def gradient_frame(width: int = 640, height: int = 480) -> bytes:
    """A smooth colour gradient: a valid photo with nothing in it that looks like a face."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                    np.full((height, width), 128, np.float32)], axis=-1).astype(np.uint8)
    return jpeg(rgb)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose IHDR claims width×height: a decompression bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def png16(rgb: np.ndarray) -> bytes:
    """The same picture as a 16-bit-per-channel PNG."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    assert ok
    return encoded.tobytes()
