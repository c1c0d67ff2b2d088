"""One frame → a PoseReading: exactly one face, its yaw from five landmarks, its encoding when asked.

Runs inside a face worker. The landmarks are face_recognition's "small" (5-point) model: the 68-point
model's training data forbids commercial use. The pixels are dropped as soon as the reading is made.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from core.liveness import PoseReading
from server.face.image import MAX_BYTES, MAX_PIXELS, decode_frame
from server.face.pipeline import detect_faces

Point = tuple[float, float]


def read_pose(data: bytes, *, encode: bool, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> PoseReading:
    """Decode, require exactly one face, measure its yaw and, if asked, encode it at full resolution.

    Raises :class:`~server.face.image.ImageRejected` when the bytes are not an acceptable image.
    """
    import face_recognition

    rgb = decode_frame(data, max_bytes=max_bytes, max_pixels=max_pixels)
    boxes = detect_faces(rgb)
    if len(boxes) != 1:
        del rgb
        return PoseReading("no_face" if not boxes else "multiple_faces", None, None)
    landmarks = face_recognition.face_landmarks(rgb, face_locations=boxes, model="small")[0]
    encoding = None
    if encode:
        encodings = face_recognition.face_encodings(rgb, known_face_locations=boxes)
        encoding = tuple(float(value) for value in encodings[0])
        del encodings
    del rgb
    yaw_value = yaw(landmarks["left_eye"], landmarks["right_eye"], landmarks["nose_tip"][0])
    del landmarks
    return PoseReading("ok", yaw_value, encoding)


def yaw(image_left_eye: Sequence[Point], image_right_eye: Sequence[Point], nose: Point) -> float:
    """The nose's offset from the eyes' midpoint along the eye axis, in eye distances; positive toward the
    image's right. Scaling or rotating the picture in its plane leaves it unchanged.

    face_recognition's "left_eye" is the one on the image's left (the subject's right eye).
    """
    left_x, left_y = _centre(image_left_eye)
    right_x, right_y = _centre(image_right_eye)
    axis_x, axis_y = right_x - left_x, right_y - left_y
    distance = math.hypot(axis_x, axis_y)
    if distance == 0:
        return 0.0
    mid_x, mid_y = (left_x + right_x) / 2, (left_y + right_y) / 2
    return ((nose[0] - mid_x) * axis_x + (nose[1] - mid_y) * axis_y) / (distance * distance)


def _centre(points: Sequence[Point]) -> Point:
    return sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)
