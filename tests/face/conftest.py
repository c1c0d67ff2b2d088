"""Real photos (small copies of ../shared/faces), byte-level builders for the images we must refuse, and
rastau-enrol run in process (`enrol`)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from server import bulk_enrol
from server.face.pool import FacePool
from tests.commands import run_command_async

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


def enrol_env(settings) -> dict[str, str]:
    """rastau-enrol's environment: production mode with the test database's secrets."""
    return {"RASTAU_MODE": "production", "RASTAU_DATABASE_URL": settings.database_url,
            "RASTAU_CODE_HMAC_KEY": settings.code_hmac_key.get_secret_value(),
            "RASTAU_TEMPLATE_KEY": settings.template_key.get_secret_value(),
            "RASTAU_API_KEY_PEPPER": settings.api_key_pepper.get_secret_value()}


class _Started:
    """The module's face pool handed to each in-process run: started once (spawning a worker that loads dlib
    costs seconds), so a run's start and close leave it running."""

    def __init__(self, pool: FacePool):
        self._pool = pool

    async def start(self) -> None:
        assert self._pool.ready

    async def close(self) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(self._pool, name)


@pytest.fixture
def enrol(started_pool, monkeypatch):
    """rastau-enrol in this process, its face work in the module's pool: the command's arguments, settings, report
    and exit statuses are what is tested (tests/face/test_bulk_enrol.py runs the installed script once, as a
    process)."""
    def one_worker(workers: int, **limits) -> _Started:
        assert workers == 1, "the tests ask for one face worker"
        return _Started(started_pool)

    monkeypatch.setattr(bulk_enrol, "FacePool", one_worker)

    async def run(settings, cwd: Path, *args: str, without: str = "") -> tuple[int, str, str]:
        env = {name: value for name, value in enrol_env(settings).items() if name != without}
        done = await run_command_async(bulk_enrol.main, "rastau-enrol", env, *args, cwd=cwd)
        return done.returncode, done.stdout, done.stderr
    return run
