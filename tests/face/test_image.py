"""decode_frame: what is refused (and why, in words), what decodes, and that nothing touches the disk."""
from __future__ import annotations

import builtins
import io
import os
import tempfile

import face_recognition  # noqa: F401 - it loosens Pillow globally on import; every rejection must hold anyway
import numpy as np
import pytest
from PIL import Image, ImageOps

from server.face.image import MAX_PIXELS, ImageRejected, decode_frame
from server.face.pipeline import analyse_frame
from tests.face.conftest import gradient_frame, jpeg, photo, pixels, png16, png_claiming


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, "GIF")
    return buffer.getvalue()


@pytest.mark.parametrize("data, limits, reason, words", [
    (b"", {}, "empty", "0 bytes"),
    (b"\xff\xd8\xff" + b"\x00" * (5 * 1024 * 1024), {}, "too_large", "the limit is 5.0 MB (5,242,880 bytes)"),
    (photo("obama/obama1.jpg"), {"max_bytes": 10_000}, "too_large", "(10,000 bytes)"),
    (png_claiming(30_000, 30_000), {}, "too_many_pixels", "900 megapixels; the limit is 25"),
    (png_claiming(6_000, 5_000), {}, "too_many_pixels", "6000x5000 = 30 megapixels; the limit is 25"),
    (photo("obama/obama1.jpg"), {"max_pixels": 100_000}, "too_many_pixels", "384x480"),
    (_gif(), {}, "unsupported_format", "GIF"),
    (b"name,iin\nAsel,900101300017\n", {}, "unsupported_format", "not a recognised image"),
    (photo("obama/obama1.jpg")[:9_000], {}, "unreadable", "truncated"),
    (photo("edge/rgba_32bit.png")[:50_000], {}, "unreadable", "damaged or truncated"),
    (b"\xff\xd8\xff\xe0" + b"garbage" * 20, {}, "unreadable", "header is damaged"),
], ids=["zero-bytes", "over-5mb", "over-custom-limit", "png-bomb-header", "png-30mp-header", "over-custom-pixels",
        "gif", "text", "truncated-jpeg", "truncated-png", "corrupt-jpeg-header"])
def test_rejections_name_the_reason_in_words(data, limits, reason, words):
    with pytest.raises(ImageRejected) as caught:
        decode_frame(data, **limits)
    assert caught.value.reason == reason
    assert words in caught.value.message
    assert str(caught.value) == caught.value.message


def test_a_bomb_header_is_refused_before_any_pixel_is_allocated(monkeypatch):
    monkeypatch.setattr("cv2.imdecode", lambda *a, **k: pytest.fail("pixels were decoded"))
    with pytest.raises(ImageRejected, match="the limit is 25"):
        decode_frame(png_claiming(30_000, 30_000), max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("name", ["obama/obama1.jpg", "edge/rgba_32bit.png", "alex_lacamoire/alex3.png"])
def test_jpeg_and_rgba_png_decode_to_rgb(name):
    rgb = decode_frame(photo(name))
    expected = pixels(name)
    assert rgb.dtype == np.uint8 and rgb.shape == expected.shape
    assert np.abs(rgb.astype(int) - expected).mean() < 2  # same colours in the same (RGB) order


def test_16_bit_greyscale_and_cmyk_images_decode_and_show_a_face():
    rgb = pixels("obama/obama1.jpg")
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG", quality=90)
    for data in (png16(rgb), jpeg(grey), cmyk.getvalue()):
        decoded = decode_frame(data)
        assert decoded.dtype == np.uint8 and decoded.shape == rgb.shape
        assert analyse_frame(data).outcome == "ok"


def test_exif_orientation_is_applied():
    upright = Image.fromarray(pixels("obama/obama1.jpg"))
    stored_sideways = upright.rotate(90, expand=True)  # as a phone stores it; the tag says how to turn it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    tagged = jpeg(np.asarray(stored_sideways), exif=exif.tobytes())
    untagged = jpeg(np.asarray(stored_sideways))

    decoded = decode_frame(tagged)
    assert decoded.shape == np.asarray(upright).shape
    with Image.open(io.BytesIO(tagged)) as reference:
        assert np.abs(decoded.astype(int) - np.asarray(ImageOps.exif_transpose(reference))).mean() < 2
    assert analyse_frame(untagged).outcome == "no_face"  # the detector needs the face upright...
    assert analyse_frame(tagged).outcome == "ok"  # ...and gets it once the tag is honoured


def test_no_file_is_created_or_opened_while_analysing(tmp_path, monkeypatch):
    analyse_frame(photo("obama/obama2.jpg"))  # models loaded before the guard goes up
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(scratch)

    def refuse(*args, **kwargs):
        raise AssertionError(f"the face pipeline tried to open a file: {args[:1]}")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(os, "open", refuse)
    outcomes = [analyse_frame(data).outcome for data in
                (photo("obama/obama2.jpg"), photo("multi/two_people.jpg"), gradient_frame())]
    for bad in (b"", photo("obama/obama1.jpg")[:9_000], png_claiming(30_000, 30_000), _gif()):
        with pytest.raises(ImageRejected):
            analyse_frame(bad)
    monkeypatch.undo()
    assert outcomes == ["ok", "multiple_faces", "no_face"]
    assert list(scratch.iterdir()) == []
