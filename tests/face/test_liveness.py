"""Liveness on real photos through the real pipeline: one frame's pose reading, and whole clips through the tracker."""
from __future__ import annotations

import math
import random

import pytest

from core.liveness import MEASURED, STILLS, Challenge, LivenessTracker, NotLive, Pose, Progress, Thresholds
from devkit.liveness_clips import Clip, Shot, camera_frame, genuine_clip, photo_clip
from server.face.image import ImageRejected
from server.face.liveness import read_pose, yaw
from server.face.pipeline import analyse_frame
from server.face.pool import FacePool
from tests.face.conftest import gradient_frame, photo

S, L, R = Pose.STRAIGHT, Pose.LEFT, Pose.RIGHT
POSES = (S, L, S, R, S, L, S)


def frame(photo_name: str, mirrored: bool = False, **placement: float) -> bytes:
    return camera_frame(Shot(photo_name, mirrored), random.Random(1), **placement)  # type: ignore[arg-type]


def session(clip: Clip, thresholds: Thresholds = MEASURED) -> Progress:
    """As the capture service feeds a session: encode when asked, expire when the frames stop."""
    tracker = LivenessTracker(Challenge(POSES), 0.0, thresholds)
    progress = tracker.progress
    for at, data in clip:
        progress = tracker.feed(at, read_pose(data, encode=progress.encode_next))
        if progress.done:
            return progress
    return tracker.expire(clip[-1][0] + 60)


def test_yaw_is_positive_for_a_head_turned_to_its_own_left_and_a_mirror_flips_it():
    turned_left = read_pose(frame("obama/obama4.jpg"), encode=False).yaw
    turned_right = read_pose(frame("obama/obama2.jpg"), encode=False).yaw
    assert turned_left > STILLS.turn_min and turned_right < -STILLS.turn_min
    assert read_pose(frame("obama/obama4.jpg", mirrored=True), encode=False).yaw == pytest.approx(-turned_left,
                                                                                                 abs=0.03)
    assert abs(read_pose(frame("obama/obama1.jpg"), encode=False).yaw) <= STILLS.straight_max


def test_yaw_stays_put_when_the_picture_is_moved_scaled_or_rotated_in_its_plane():
    plain = read_pose(frame("kit_harington/kit3.jpg"), encode=False).yaw
    for placement in ({"rotate_degrees": 25.0}, {"rotate_degrees": -25.0}, {"scale": 0.75},
                      {"scale": 1.3, "shift": (90.0, -50.0)}):
        moved = read_pose(frame("kit_harington/kit3.jpg", **placement), encode=False).yaw
        assert moved == pytest.approx(plain, abs=0.03), placement


def test_the_encoding_is_given_only_when_asked_and_is_the_single_frame_routes_encoding():
    data = frame("obama/obama1.jpg")
    assert read_pose(data, encode=False).encoding is None
    assert read_pose(data, encode=True).encoding == analyse_frame(data).encoding


def test_no_face_two_faces_and_bad_bytes():
    assert read_pose(gradient_frame(), encode=True) == read_pose(gradient_frame(), encode=False)
    assert read_pose(gradient_frame(), encode=True).outcome == "no_face"
    two = read_pose(photo("multi/kit_with_rose.jpg"), encode=True)
    assert (two.outcome, two.yaw, two.encoding) == ("multiple_faces", None, None)
    with pytest.raises(ImageRejected):
        read_pose(b"not an image", encode=False)


def test_real_turns_in_the_challenges_order_are_live():
    progress = session(genuine_clip(POSES, "obama", random.Random(3)), STILLS)
    assert progress.outcome == "live" and len(progress.frontal_encoding) == 128


def test_a_still_photo_is_not_live():
    progress = session(photo_clip(POSES, Shot("obama/obama1.jpg"), random.Random(4)), STILLS)
    assert (progress.outcome, progress.reason) == ("not_live", NotLive.NO_TURN)


def test_a_photo_tilted_40_degrees_toward_each_asked_side_passes_the_stills_thresholds_not_the_measured_ones():
    clip = photo_clip(POSES, Shot("kit_harington/kit1.jpg"), random.Random(5), motion="tilted")
    assert session(clip, STILLS).outcome == "live"    # why turn_min is not where the fixture stills' turns are
    progress = session(clip)
    assert (progress.outcome, progress.reason) == ("not_live", NotLive.NO_TURN)


def test_yaw_is_the_noses_offset_along_the_eye_axis_in_eye_distances():
    eyes = ([(0.0, 0.0), (20.0, 0.0)], [(80.0, 0.0), (100.0, 0.0)])  # centres 10 and 90: 80 apart, midpoint 50
    assert yaw(*eyes, (50.0, 40.0)) == 0.0
    assert yaw(*eyes, (70.0, 40.0)) == pytest.approx(0.25)      # nose toward the image's right: positive
    turned = math.radians(30)

    def placed(point: tuple[float, float]) -> tuple[float, float]:   # rotated 30° in the image plane, 3× larger
        x, y = point
        cos, sin = math.cos(turned), math.sin(turned)
        return 3 * (x * cos - y * sin) + 7, 3 * (x * sin + y * cos)

    assert yaw([placed(p) for p in eyes[0]], [placed(p) for p in eyes[1]], placed((70.0, 40.0))) == pytest.approx(0.25)


def test_turned_frames_of_another_person_are_not_live():
    clip = genuine_clip(POSES, "obama", random.Random(6), turned_by="kit_harington")
    assert session(clip, STILLS).reason is NotLive.FACE_CHANGED


def test_real_turns_in_another_order_are_not_live():
    clip = genuine_clip((S, R, S, L, S, L, S), "obama", random.Random(7))
    assert session(clip, STILLS).reason is NotLive.WRONG_ORDER


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_pool_reads_a_pose_in_a_worker():
    pool = FacePool(1)
    await pool.start()
    try:
        reading = await pool.read_pose(frame("alex_lacamoire/alex3.png"), encode=True)
        assert reading.outcome == "ok" and reading.yaw > STILLS.turn_min and len(reading.encoding) == 128
        with pytest.raises(ImageRejected):
            await pool.read_pose(b"", encode=False)
    finally:
        await pool.close()
