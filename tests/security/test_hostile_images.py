"""Hostile webcam frames through the real HTTP face endpoint and a real face worker (FacePool, spawn, dlib).

The corpus is generated here. Every frame we refuse gets a clear 4xx `application/problem+json` whose `code`
and `detail` name what was wrong. Two kinds of file are *valid images that we decode on purpose*, and they get
a 200 decision instead: a CMYK JPEG and a 16-bit-per-channel PNG (both are what some scanners, phones and
imaging tools write; the decoder turns them into 8-bit RGB). Their picture has no face, so the decision is
`no_face`.

Memory: the worker's peak resident memory (VmHWM, reset before each frame, so nothing between samples is
missed) is measured while it handles the largest frame we allow — 25 megapixels in just under 5 MB, with a
face in it so the full pipeline runs, encoding at full resolution included — and decompression bombs.
The bound is derived from the pipeline, see ``memory_bound``.
"""
from __future__ import annotations

import asyncio
import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from core.services import registry
from server.app import create_app
from server.face.image import MAX_BYTES, MAX_PIXELS
from server.face.pool import FacePool
from tests.security.support import peak_rss, rss
from tests.server.conftest import add_visit

pytestmark = pytest.mark.slow  # real face worker processes

API = "/api/v1"
FACES = Path(__file__).parents[1] / "fixtures" / "faces"
PROBLEM = "application/problem+json"
FRAME_BYTES = 3 * MAX_PIXELS  # one decoded 25-megapixel frame, 8-bit RGB: 75 MB
GiB = 2**30


# --- the corpus --------------------------------------------------------------------------------------------

def gradient(width: int = 640, height: int = 480, noise: float = 0.0) -> np.ndarray:
    """A smooth colour gradient (no face anywhere), optionally with Gaussian noise (σ = ``noise``) so it
    compresses less. Built in place, in float32 throughout: the 25-megapixel canvas cost 4.3 s of CPU and ~1 GB
    with whole-frame float64 temporaries."""
    channels = (np.linspace(0, 255, width, dtype=np.float32),
                np.linspace(0, 255, height, dtype=np.float32)[:, None], np.float32(128))
    if not noise:
        rgb = np.empty((height, width, 3), np.uint8)
        for at, channel in enumerate(channels):
            rgb[..., at] = np.clip(channel, 0, 255).astype(np.uint8)
        return rgb
    noisy = np.random.default_rng(7).standard_normal((height, width, 3), dtype=np.float32)
    noisy *= noise
    for at, channel in enumerate(channels):
        noisy[..., at] += channel
    np.clip(noisy, 0, 255, out=noisy)
    return noisy.astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def pillow(rgb: np.ndarray, fmt: str, mode: str = "RGB", **args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buffer, fmt, **args)
    return buffer.getvalue()


def png16(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    assert ok
    return encoded.tobytes()


def png(width: int, height: int, idat: bytes, colour_type: int = 2) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def zero_png(width: int, height: int) -> bytes:
    """A real, fully decodable all-black RGB PNG: it compresses ~1000:1, so it is a small file with many pixels."""
    row = b"\x00" * (1 + 3 * width)  # filter byte + pixels
    squeezer = zlib.compressobj(9)
    body = b"".join(squeezer.compress(row) for _ in range(height)) + squeezer.flush()
    return png(width, height, body)


def app_segment(marker: int, payload: bytes) -> bytes:
    assert len(payload) <= 65533
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_with_metadata_of(total: int) -> bytes:
    """A valid faceless JPEG carrying a real EXIF block, then APP1 (Exif-tagged garbage, as a hostile tool might
    write) and APP2 segments of 64 KB each, until the file is exactly ``total`` bytes."""
    exif = Image.Exif()
    exif[0x0112] = 1  # orientation: upright
    base = pillow(gradient(), "JPEG", quality=90, exif=exif.tobytes())
    rng = np.random.default_rng(11)
    remaining, sizes = total - len(base), []
    while remaining > 0:
        take = min(2 + 2 + 65533, remaining)  # marker, length, payload
        if 0 < remaining - take < 16:  # the leftover could not hold a segment of its own: leave it more
            take -= 16
        sizes.append(take)
        remaining -= take
    segments = []
    for n, size in enumerate(sizes):
        header = b"Exif\x00\x00" if n % 2 == 0 else b"ICC_PROFILE\x00"
        payload = header + rng.integers(0, 256, size - 4 - len(header), dtype=np.uint8).tobytes()
        segments.append(app_segment(0xE1 if n % 2 == 0 else 0xE2, payload))
    data = base[:2] + base[2:2 + _app_prefix_length(base)] + b"".join(segments) + base[2 + _app_prefix_length(base):]
    assert len(data) == total, (len(data), total)
    return data


def _app_prefix_length(jpeg_bytes: bytes) -> int:
    """Bytes of the APPn segments right after SOI (JFIF, the real EXIF): the padding goes after them."""
    at = 2
    while jpeg_bytes[at] == 0xFF and 0xE0 <= jpeg_bytes[at + 1] <= 0xEF:
        at += 2 + struct.unpack(">H", jpeg_bytes[at + 2:at + 4])[0]
    return at - 2


def webp() -> bytes:
    return pillow(gradient(), "WEBP", quality=80)


def largest_allowed_frame() -> bytes:
    """25 megapixels (5000×5000) in just under 5 MB, with a face: obama1.jpg scaled into the middle of a noisy
    background, so detection finds one face and the encoder runs on the full-resolution frame."""
    canvas = gradient(5000, 5000, noise=11.0)
    with Image.open(FACES / "obama" / "obama1.jpg") as face:
        big = np.asarray(face.convert("RGB").resize((1600, 2000), Image.LANCZOS))
    canvas[1500:3500, 1700:3300] = big
    for quality in range(92, 40, -2):  # the best quality that fits: as close to 5 MB as it gets
        data = jpeg(canvas, quality)
        if len(data) <= MAX_BYTES:
            return data
    raise AssertionError("could not fit the 25 MP frame under the byte cap")


# --- the real worker and the app ---------------------------------------------------------------------------

@pytest.fixture
def db_url(tmp_path):
    """SQLite only: this module is about the image path, not the database."""
    return f"sqlite+aiosqlite:///{tmp_path / 'rastau.db'}"


@pytest.fixture(scope="module")
def real_pool():
    pool = FacePool(1, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    asyncio.run(pool.start())
    try:
        yield pool
    finally:
        asyncio.run(pool.close())


def worker_pid(pool: FacePool) -> int:
    (pid,) = pool._executor._processes  # one worker
    return pid


@pytest.fixture
async def frames(aiohttp_client, settings, ctx, real_pool, tenants, conformance):
    app = create_app(settings, ctx=ctx, face_pool=real_pool)
    app.middlewares.insert(0, conformance.middleware())
    client = await aiohttp_client(app)
    a, _ = tenants
    await registry.record_consent(ctx, a.clinic_id, a.patient_ids[0], "Nurse")
    await registry.enrol_face(ctx, a.clinic_id, a.patient_ids[0], [tuple(0.05 for _ in range(128))])

    async def send(data, content_type: str = "image/jpeg"):
        visit = await add_visit(ctx, a)  # a fresh visit each time: failed attempts never lock this test out
        return await client.post(f"{API}/visits/{visit.id}/face", data=data,
                                 headers={**a.h("webcam"), "Content-Type": content_type})
    return send


# --- refusals: a clear 4xx naming what was wrong ------------------------------------------------------------

def _truncated_jpeg() -> bytes:
    return (FACES / "obama" / "obama1.jpg").read_bytes()[:6000]


def _wrong_magic() -> bytes:
    data = bytearray(jpeg(gradient()))
    data[:4] = b"\x00\x00\x00\x00"
    return bytes(data)


REFUSED = {
    "truncated-jpeg": (_truncated_jpeg, "image/jpeg", 422, "image_unreadable", "truncated"),
    "zero-bytes": (lambda: b"", "image/jpeg", 422, "image_empty", "0 bytes"),
    "wrong-magic-bytes": (_wrong_magic, "image/jpeg", 415, "image_unsupported_format", "not a recognised image"),
    "png-header-30000x30000": (lambda: png(30_000, 30_000, zlib.compress(b"\x00" * 64)), "image/png", 413,
                               "image_too_many_pixels", "the limit is 25"),
    "bomb-png-30mp-real-data": (lambda: zero_png(6_000, 5_000), "image/png", 413, "image_too_many_pixels",
                                "30 megapixels; the limit is 25"),
    "gif": (lambda: pillow(gradient(), "GIF"), "image/jpeg", 415, "image_unsupported_format", "GIF"),
    "webp": (webp, "image/jpeg", 415, "image_unsupported_format", "WebP"),
    "text-file-as-jpeg": (lambda: b"name,iin\nAsel,900101300017\n", "image/jpeg", 415, "image_unsupported_format",
                          "not a recognised image"),
    "gif-declared-as-gif": (lambda: pillow(gradient(), "GIF"), "image/gif", 415, "unsupported_media_type",
                            "image/jpeg"),
    "jpeg-huge-exif-just-over-5mb": (lambda: jpeg_with_metadata_of(MAX_BYTES + 1), "image/jpeg", 413,
                                     "image_too_large", str(MAX_BYTES)),
}


@pytest.mark.parametrize("name", list(REFUSED))
async def test_hostile_frames_are_refused_with_a_clear_problem(frames, name):
    build, content_type, status, code, words = REFUSED[name]
    data = build()
    response = await frames(data, content_type)
    body = await response.json(content_type=None)
    assert response.status == status, (name, body)
    assert response.content_type == PROBLEM
    assert body["code"] == code and body["status"] == status
    assert words in body["detail"], body["detail"]


async def test_a_frame_just_over_the_cap_is_refused_while_streaming_too(frames):
    """Without Content-Length (chunked upload) the cap holds while reading, not only from the header."""
    data = jpeg_with_metadata_of(MAX_BYTES + 1)

    async def chunked():
        for at in range(0, len(data), 256 * 1024):
            yield data[at:at + 256 * 1024]

    response = await frames(chunked())
    body = await response.json(content_type=None)
    assert (response.status, body["code"]) == (413, "image_too_large")


# --- valid images decoded on purpose: a 200 decision ----------------------------------------------------------

ACCEPTED = {
    "cmyk-jpeg": (lambda: pillow(gradient(), "JPEG", mode="CMYK", quality=90), "image/jpeg"),
    "16-bit-png": (lambda: png16(gradient()), "image/png"),
    "jpeg-huge-exif-just-under-5mb": (lambda: jpeg_with_metadata_of(MAX_BYTES), "image/jpeg"),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
async def test_valid_but_unusual_images_are_decoded_and_decided(frames, name):
    """CMYK JPEG and 16-bit PNG are valid images we decode on purpose (to 8-bit RGB); so is a JPEG whose
    metadata fills the byte cap to the last byte. None shows a face: 200 `no_face`, not a refusal."""
    build, content_type = ACCEPTED[name]
    data = build()
    if "exif" in name:
        assert len(data) == MAX_BYTES
    response = await frames(data, content_type)
    assert response.status == 200, await response.text()
    assert await response.json() == {"decision": "no_face"}


# --- memory of the worker --------------------------------------------------------------------------------------

def memory_bound(idle: int) -> int:
    """What the worker may hold at its peak for one frame, from what the pipeline does with it:

    * ``idle``: the worker at rest after warm-up — Python, numpy, OpenCV, dlib and its two models;
    * 2 × 5 MB: the frame's bytes as unpickled from the pool's pipe, and the pickle buffer;
    * 4 × 75 MB (25 MP × 3 bytes): OpenCV's BGR decode and the RGB conversion alive together, plus two more
      full-frame copies of slack for a library converting the array on the way in (dlib's encoder reads the
      full-resolution frame; Pillow's fallback converts CMYK→RGB and then to a numpy array). The detector's
      copies are at most 640 px on the long side (≈1 MB) and are covered by that slack.
    """
    return idle + 2 * MAX_BYTES + 4 * FRAME_BYTES


async def test_worker_memory_stays_bounded_on_the_largest_frame_and_bombs(frames, real_pool):
    pid = worker_pid(real_pool)
    await frames(jpeg(gradient()))  # one ordinary frame first: the worker's steady state
    idle = rss(pid)
    bound = memory_bound(idle)
    assert bound < 1.5 * GiB

    cases = {
        "largest allowed: 25 MP JPEG, ~5 MB, one face": (largest_allowed_frame(), "image/jpeg", 200, "no_match"),
        "bomb within the cap: 25 MP all-black PNG": (zero_png(5000, 5000), "image/png", 200, "no_face"),
        "bomb over the cap: 30 MP all-black PNG": (zero_png(6000, 5000), "image/png", 413, "image_too_many_pixels"),
        "bomb header: 30000x30000 PNG": (png(30_000, 30_000, zlib.compress(b"\x00" * 64)), "image/png", 413,
                                         "image_too_many_pixels"),
    }
    peaks = {}
    for name, (data, content_type, status, expected) in cases.items():
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        response = await frames(data, content_type)
        body = await response.json(content_type=None)
        assert response.status == status, (name, body)
        assert body.get("decision", body.get("code")) == expected, (name, body)
        peaks[name] = peak_rss(pid)
        assert worker_pid(real_pool) == pid  # the same worker: none died and was replaced

    print(f"\nface worker: idle {idle / 2**20:.0f} MiB; bound {bound / 2**20:.0f} MiB "
          f"(idle + 2 × 5 MB + 4 × 75 MB)")
    for name, peak in peaks.items():
        print(f"  {name} ({len(cases[name][0]) / 2**20:.2f} MB file): peak {peak / 2**20:.0f} MiB, "
              f"+{(peak - idle) / 2**20:.0f} MiB over idle")
    assert all(peak < bound for peak in peaks.values()), (idle, bound, peaks)
    # refused bombs are refused from the header: they cost (almost) nothing
    for name in ("bomb over the cap: 30 MP all-black PNG", "bomb header: 30000x30000 PNG"):
        assert peaks[name] - idle < FRAME_BYTES // 4, (name, peaks[name] - idle)
    assert os.path.exists(f"/proc/{pid}")
