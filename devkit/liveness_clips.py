"""Webcam-like frame sequences for a liveness challenge, built from the real photos in tests/fixtures/faces.

Genuine clips are real photos of one person at different head angles, and their mirror images (a mirrored
real head turned one way is a real head turned the other way), in the challenge's order. Attack clips put
one flat photo in front of the "camera": still, moved/scaled/rotated in the image plane, or tilted about its
vertical axis (a perspective warp: a print held at an angle). No turned head is ever fabricated from a flat
photo: that is exactly the attack.

Every frame is what a 640×480 webcam would send: the photo placed with its face near the middle at a
webcam's size, sensor noise, a pixel or two of hand shake, JPEG. The tests, the demo, the corpus
(scripts/measure_liveness.py) and the browser test use these.
"""
from __future__ import annotations

import functools
import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from core.liveness import Pose

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "faces"
FRAME_WIDTH, FRAME_HEIGHT = 640, 480
FACE_HEIGHT = 200          # a face at arm's length from a laptop webcam, in pixels of a 640×480 frame
FRAMES_PER_STEP = 3        # frames showing each step's pose (the page sends a few per second)
FRAME_SECONDS = 0.25       # 4 frames a second
MAX_TILT_DEGREES = 40.0

# Head poses of the fixture photos as a person sees them (looked at, not measured): which way the nose points.
STRAIGHT_PHOTOS = {
    "obama": ("obama/obama1.jpg", "obama/obama_240p.jpg"),
    "alex_lacamoire": ("alex_lacamoire/alex1.jpg", "alex_lacamoire/alex2.jpg"),
    "kit_harington": ("kit_harington/kit1.jpg",),
    "biden": ("biden/biden2.jpg",),
    "rose_leslie": ("rose_leslie/rose1.jpg", "rose_leslie/rose2.jpg"),
}
NOSE_TO_IMAGE_RIGHT = {    # the person turned to their own left
    "obama": ("obama/obama3.jpg", "obama/obama4.jpg"),
    "kit_harington": ("kit_harington/kit3.jpg",),
    "alex_lacamoire": ("alex_lacamoire/alex3.png",),
}
NOSE_TO_IMAGE_LEFT = {     # the person turned to their own right
    "obama": ("obama/obama2.jpg",),
    "kit_harington": ("kit_harington/kit2.jpg",),
}
TURNING_PEOPLE = tuple(sorted(set(NOSE_TO_IMAGE_RIGHT) | set(NOSE_TO_IMAGE_LEFT)))

Clip = list[tuple[float, bytes]]   # (seconds since the session started, JPEG bytes), in sending order


@dataclass(frozen=True)
class Shot:
    """One photo as the camera would see the head: as taken or mirrored."""
    photo: str
    mirrored: bool = False


def shots(person: str, pose: Pose) -> list[Shot]:
    """Every real picture of ``person`` in ``pose``: photos as taken, and mirrored ones turned the other way."""
    if pose is Pose.STRAIGHT:
        return [Shot(photo, mirrored) for photo in STRAIGHT_PHOTOS.get(person, ()) for mirrored in (False, True)]
    same_way = NOSE_TO_IMAGE_RIGHT if pose is Pose.LEFT else NOSE_TO_IMAGE_LEFT
    other_way = NOSE_TO_IMAGE_LEFT if pose is Pose.LEFT else NOSE_TO_IMAGE_RIGHT
    return ([Shot(photo) for photo in same_way.get(person, ())]
            + [Shot(photo, True) for photo in other_way.get(person, ())])


def genuine_clip(poses: Sequence[Pose], person: str, rng: random.Random, *,
                 step_gap: float = 0.0, turned_by: str | None = None) -> Clip:
    """The person's real photos in the challenge's order, FRAMES_PER_STEP frames per step.

    ``step_gap`` seconds pass between steps (a slow patient); ``turned_by`` takes the turned frames from
    another person (the turned-face attack).
    """
    clip: Clip = []
    at = 0.0
    for pose in poses:
        who = turned_by if turned_by is not None and pose is not Pose.STRAIGHT else person
        shot = rng.choice(shots(who, pose))
        for _ in range(FRAMES_PER_STEP):
            clip.append((at, camera_frame(shot, rng)))
            at += FRAME_SECONDS
        at += step_gap
    return clip


def photo_clip(poses: Sequence[Pose], shot: Shot, rng: random.Random, *, motion: str = "still",
               tilt_degrees: float = MAX_TILT_DEGREES, tilt_scale: float = 2.0) -> Clip:
    """One flat photo held in front of the camera for as long as the challenge takes.

    ``motion``: "still"; "moved" (shifted, scaled and rotated in the image plane, a new place every frame);
    "tilted" (turned about its vertical axis by ``tilt_degrees`` (less up to 4° of unsteady hand) toward the
    side each step asks, straight for the straight steps: the attacker sees the challenge on the page; held
    close, the face ``tilt_scale`` × FACE_HEIGHT tall, where the perspective is strongest).
    """
    clip: Clip = []
    at = 0.0
    for pose in poses:
        for _ in range(FRAMES_PER_STEP):
            if motion == "moved":
                frame = camera_frame(shot, rng, shift=(rng.uniform(-100, 100), rng.uniform(-60, 60)),
                                     scale=rng.uniform(0.75, 1.3), rotate_degrees=rng.uniform(-25, 25))
            elif motion == "tilted":
                side = {Pose.STRAIGHT: 0.0, Pose.LEFT: 1.0, Pose.RIGHT: -1.0}[pose]
                frame = camera_frame(shot, rng, scale=tilt_scale,
                                     tilt_degrees=side * (tilt_degrees - rng.uniform(0, 4)))
            else:
                frame = camera_frame(shot, rng)
            clip.append((at, frame))
            at += FRAME_SECONDS
    return clip


def camera_frame(shot: Shot, rng: random.Random, *, shift: tuple[float, float] = (0.0, 0.0), scale: float = 1.0,
                 rotate_degrees: float = 0.0, tilt_degrees: float = 0.0) -> bytes:
    """The photo's face centred in a 640×480 frame at FACE_HEIGHT×scale, moved in the image plane and
    tilted as asked, with a little hand shake and sensor noise, as a JPEG."""
    rgb, (face_x, face_y, face_height) = _source(shot)
    zoom = FACE_HEIGHT * scale / face_height
    placement = cv2.getRotationMatrix2D((face_x, face_y), rotate_degrees, zoom)
    placement[0, 2] += FRAME_WIDTH / 2 + shift[0] + rng.uniform(-1.5, 1.5) - face_x
    placement[1, 2] += FRAME_HEIGHT / 2 + shift[1] + rng.uniform(-1.5, 1.5) - face_y
    frame = cv2.warpAffine(rgb, placement, (FRAME_WIDTH, FRAME_HEIGHT), flags=cv2.INTER_AREA,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))
    if tilt_degrees:
        frame = _tilt(frame, tilt_degrees)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 2.0, frame.shape)
    frame = np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return _jpeg(frame)


def _tilt(frame: np.ndarray, degrees: float) -> np.ndarray:
    """The frame as a print turned about its vertical centre line, seen by a camera whose focal length is
    the frame's width, the print filling the view: x' = f·x·cosθ / (f + x·sinθ), y' = f·y / (f + x·sinθ)."""
    theta = math.radians(degrees)
    focal = float(FRAME_WIDTH)
    centre_x, centre_y = FRAME_WIDTH / 2, FRAME_HEIGHT / 2

    def seen(x: float, y: float) -> tuple[float, float]:
        dx, dy = x - centre_x, y - centre_y
        depth = focal + dx * math.sin(theta)
        return centre_x + focal * dx * math.cos(theta) / depth, centre_y + focal * dy / depth

    corners = [(0.0, 0.0), (FRAME_WIDTH, 0.0), (FRAME_WIDTH, FRAME_HEIGHT), (0.0, FRAME_HEIGHT)]
    homography = cv2.getPerspectiveTransform(np.float32(corners), np.float32([seen(x, y) for x, y in corners]))
    return cv2.warpPerspective(frame, homography, (FRAME_WIDTH, FRAME_HEIGHT), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(90, 90, 90))


@functools.lru_cache(maxsize=64)
def _source(shot: Shot) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The photo's pixels (mirrored if asked) and its face's centre and height, found once."""
    import face_recognition

    with Image.open(PHOTOS / shot.photo) as image:
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    if shot.mirrored:
        rgb = np.ascontiguousarray(rgb[:, ::-1])
    factor = min(1.0, 640 / max(rgb.shape[:2]))
    small = cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA) if factor < 1 else rgb
    boxes = face_recognition.face_locations(small, number_of_times_to_upsample=1)
    if len(boxes) != 1:
        raise ValueError(f"{shot.photo}: expected one face, found {len(boxes)}")
    top, right, bottom, left = (value / factor for value in boxes[0])
    return rgb, ((left + right) / 2, (top + bottom) / 2, bottom - top)


def _jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()
