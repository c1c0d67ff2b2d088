"""One frame → one face encoding, or the reason there is none. Runs inside a face worker process.

``face_recognition`` is imported lazily: importing it loads the dlib models (~100 MB), which only the
worker processes need, never the web server's own process; so are OpenCV and numpy (the server's process imports
this module for :class:`FaceAnalysis` alone). ``warm_up`` loads them all in each worker at its start.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.face.image import MAX_BYTES, MAX_PIXELS, decode_frame

if TYPE_CHECKING:
    import numpy as np

# Detection runs in two passes, because HOG cost grows with pixels and a webcam face is large:
QUICK_SIDE = 320       # 1st: a copy at most 320 px long, no upsampling — finds a face ≥ ~80 px there in ~6 ms
DETECT_MAX_SIDE = 640  # 2nd, only when the 1st found nobody: at most 640 px, upsampled once, as thorough as
                       # face_recognition's default on a 640×480 frame, before the answer may be "no face"


@dataclass(frozen=True)
class FaceAnalysis:
    outcome: str  # "ok" | "no_face" | "multiple_faces"
    encoding: tuple[float, ...] | None  # 128 floats when outcome == "ok"


def analyse_frame(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> FaceAnalysis:
    """Decode, require exactly one face, and encode it from the full-resolution frame.

    Raises :class:`~server.face.image.ImageRejected` when the bytes are not an acceptable image.
    """
    import face_recognition

    rgb = decode_frame(data, max_bytes=max_bytes, max_pixels=max_pixels)
    boxes = detect_faces(rgb)
    if len(boxes) != 1:
        del rgb
        return FaceAnalysis("no_face" if not boxes else "multiple_faces", None)
    encodings = face_recognition.face_encodings(rgb, known_face_locations=boxes)
    del rgb
    encoding = tuple(float(value) for value in encodings[0])
    del encodings
    return FaceAnalysis("ok", encoding)


def detect_faces(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """HOG detection on small copies: the quick pass, then the thorough one if the quick pass saw no face.

    Returns (top, right, bottom, left) boxes in full-frame pixels, ready for encoding at full resolution.
    A second face too small for the quick pass (under ~1/4 of the frame's long side) is not counted when
    the quick pass found one: the face that fills the webcam is the one compared.
    """
    return _detect(rgb, QUICK_SIDE, upsample=0) or _detect(rgb, DETECT_MAX_SIDE, upsample=1)


def _detect(rgb: np.ndarray, max_side: int, upsample: int) -> list[tuple[int, int, int, int]]:
    import cv2
    import face_recognition

    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        located: list[tuple[int, int, int, int]] = face_recognition.face_locations(
            rgb, number_of_times_to_upsample=upsample)
        return located
    small = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    found = face_recognition.face_locations(small, number_of_times_to_upsample=upsample)
    del small
    return [(max(0, round(top / scale)), min(width, round(right / scale)),
             min(height, round(bottom / scale)), max(0, round(left / scale)))
            for top, right, bottom, left in found]


def warm_up() -> None:
    """Run the detector and the encoder once so a worker's first real frame is not slowed by lazy set-up."""
    import cv2  # noqa: F401 - loaded here, at the worker's start, rather than by its first frame
    import face_recognition
    import numpy as np
    from PIL import Image, ImageOps  # noqa: F401 - as cv2

    blank = np.zeros((64, 64, 3), dtype=np.uint8)
    face_recognition.face_locations(blank)
    face_recognition.face_encodings(blank, known_face_locations=[(8, 56, 56, 8)])
