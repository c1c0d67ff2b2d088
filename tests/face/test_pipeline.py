"""analyse_frame on real photos: the decisions the threshold is built on, and exactly-one-face."""
from __future__ import annotations

import math
from functools import cache

import cv2
import face_recognition
import numpy as np
import pytest

from server.face import pipeline
from server.face.pipeline import FaceAnalysis, analyse_frame
from tests.face.conftest import gradient_frame, jpeg, photo, pixels

THRESHOLD = 0.5  # RASTAU_FACE_THRESHOLD's default; docs/face-threshold.md shows how it was chosen


@cache
def encoding(name: str) -> tuple[float, ...]:
    analysis = analyse_frame(photo(name))
    assert analysis.outcome == "ok", f"{name}: {analysis.outcome}"
    return analysis.encoding


def test_an_encoding_is_128_plain_floats():
    analysis = analyse_frame(photo("obama/obama1.jpg"))
    assert isinstance(analysis, FaceAnalysis)
    assert len(analysis.encoding) == 128 and all(type(v) is float for v in analysis.encoding)


@pytest.mark.parametrize("other", ["obama/obama2.jpg", "obama/obama4.jpg", "edge/obama_small.jpg",
                                   "edge/obama_partial_face.jpg", "edge/rgba_32bit.png"])
def test_the_same_person_matches_at_the_default_threshold(other):
    assert math.dist(encoding("obama/obama1.jpg"), encoding(other)) <= THRESHOLD


@pytest.mark.parametrize("a, b", [("obama/obama1.jpg", "biden/biden2.jpg"),
                                  ("obama/obama2.jpg", "biden/biden1.jpg"),
                                  ("kit_harington/kit2.jpg", "rose_leslie/rose2.jpg"),
                                  ("alex_lacamoire/alex1.jpg", "edge/lin_manuel_miranda.png")])
def test_different_people_do_not_match(a, b):
    assert math.dist(encoding(a), encoding(b)) > THRESHOLD


@pytest.mark.parametrize("name", ["multi/kit_with_rose.jpg", "multi/obama_and_biden.jpg", "multi/two_people.jpg"])
def test_two_people_in_the_frame_is_multiple_faces(name):
    assert analyse_frame(photo(name)) == FaceAnalysis("multiple_faces", None)


def test_a_frame_without_a_face_is_no_face():
    assert analyse_frame(gradient_frame()) == FaceAnalysis("no_face", None)


def test_a_large_frame_is_detected_small_and_encoded_at_full_resolution(monkeypatch):
    small = pixels("obama/obama1.jpg")
    large = cv2.resize(small, (small.shape[1] * 4, small.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    seen = {}
    real_detect, real_encode = face_recognition.face_locations, face_recognition.face_encodings

    def detect(image, *args, **kwargs):
        seen.setdefault("detected_on", []).append(image.shape)
        return real_detect(image, *args, **kwargs)

    def encode(image, known_face_locations=None, *args, **kwargs):
        seen["encoded_on"], seen["box"] = image.shape, known_face_locations
        return real_encode(image, known_face_locations, *args, **kwargs)

    monkeypatch.setattr(face_recognition, "face_locations", detect)
    monkeypatch.setattr(face_recognition, "face_encodings", encode)
    analysis = analyse_frame(jpeg(large))

    assert [max(shape[:2]) for shape in seen["detected_on"]] == [pipeline.QUICK_SIDE]  # the quick pass found it
    assert seen["encoded_on"] == large.shape
    (top, right, bottom, left), = seen["box"]
    assert 0 <= left < right <= large.shape[1] and 0 <= top < bottom <= large.shape[0]
    assert bottom - top > 4 * 60  # a box in full-resolution pixels, not detection pixels
    assert math.dist(analysis.encoding, encoding("obama/obama1.jpg")) <= THRESHOLD


def test_a_small_frame_is_not_upscaled_for_detection(monkeypatch):
    shapes = []
    real_detect = face_recognition.face_locations
    monkeypatch.setattr(face_recognition, "face_locations",
                        lambda image, *a, **k: shapes.append(image.shape) or real_detect(image, *a, **k))
    assert analyse_frame(photo("edge/obama_small.jpg")).outcome == "ok"
    assert all(shape == (240, 320, 3) for shape in shapes) and shapes


def test_a_detected_box_is_mapped_back_inside_the_frame():
    frame = np.zeros((1000, 1300, 3), np.uint8)
    frame[100:580, 100:484] = pixels("obama/obama1.jpg")
    (top, right, bottom, left), = pipeline.detect_faces(frame)
    assert 100 <= left < right <= 484 + 20 and 100 <= top < bottom <= 580 + 20


def test_a_face_too_small_for_the_quick_pass_is_still_found_by_the_thorough_one(monkeypatch):
    """A far-away face: the quick pass sees nobody, so the frame is looked at again before "no face"."""
    frame = np.full((960, 1280, 3), 90, np.uint8)
    face = cv2.resize(pixels("obama/obama1.jpg"), (240, 300), interpolation=cv2.INTER_AREA)
    frame[330:630, 520:760] = face
    shapes = []
    real_detect = face_recognition.face_locations
    monkeypatch.setattr(face_recognition, "face_locations",
                        lambda image, *a, **k: shapes.append(image.shape) or real_detect(image, *a, **k))
    analysis = analyse_frame(jpeg(frame))
    assert [max(s[:2]) for s in shapes] == [pipeline.QUICK_SIDE, pipeline.DETECT_MAX_SIDE]
    assert analysis.outcome == "ok"
    assert math.dist(analysis.encoding, encoding("obama/obama2.jpg")) <= THRESHOLD
