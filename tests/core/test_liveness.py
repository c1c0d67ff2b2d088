"""The head-turn tracker on made-up readings: fast, no models. Real frames: tests/face/test_liveness.py."""
from __future__ import annotations

import random

import pytest

from core.liveness import (
    MEASURED,
    Challenge,
    LivenessTracker,
    NotLive,
    Pose,
    PoseReading,
    Progress,
    challenges,
    pose_of,
    random_challenge,
)

S, L, R = Pose.STRAIGHT, Pose.LEFT, Pose.RIGHT
CHALLENGE = Challenge((S, L, S, R, S, L, S), step_seconds=4.0)
YAW = {S: 0.0, L: MEASURED.turn_min + 0.05, R: -(MEASURED.turn_min + 0.05)}


def face(n: int, offset: float = 0.0) -> tuple[float, ...]:
    """An encoding for person ``n``; frames of one person differ by ``offset`` (a camera never repeats)."""
    return tuple([float(n)] + [offset] + [0.0] * 126)


def reading(pose: Pose | float, encoding: tuple[float, ...] | None = None) -> PoseReading:
    return PoseReading("ok", YAW[pose] if isinstance(pose, Pose) else pose, encoding)


def perform(tracker: LivenessTracker, poses: list[Pose], *, person_of_turns: int = 0, start: float = 0.0,
            gap: float = 0.5) -> Progress:
    """Each pose shown twice, the second frame encoded when the tracker asked, as the capture service does."""
    progress = tracker.progress
    at = start
    frame = 0
    for pose in poses:
        for _ in range(2):
            frame += 1
            person = person_of_turns if pose is not S else 0
            encoding = face(person, frame * 0.01) if progress.encode_next else None
            progress = tracker.feed(at, reading(pose, encoding))
            at += gap
            if progress.done:
                return progress
    return progress


def test_following_the_challenge_is_live_and_gives_the_first_frontal_encoding():
    tracker = LivenessTracker(CHALLENGE, 0.0)
    progress = perform(tracker, list(CHALLENGE.poses))
    assert (progress.done, progress.outcome, progress.reason) == (True, "live", None)
    assert progress.frontal_encoding == face(0, 0.01)


def test_a_step_needs_an_encoded_frame_and_the_tracker_asks_for_one():
    tracker = LivenessTracker(CHALLENGE, 0.0)
    assert tracker.feed(0.1, reading(S, face(0, 0.01))).step == 1
    asked = tracker.feed(0.2, reading(L))
    assert (asked.step, asked.encode_next) == (1, True)
    assert tracker.feed(0.3, reading(L, face(0, 0.02))).step == 2


def test_a_still_photo_never_turns():
    tracker = LivenessTracker(CHALLENGE, 0.0)
    assert not perform(tracker, [S] * 3, gap=0.3).done
    assert tracker.expire(100.0).reason is NotLive.NO_TURN
    assert perform(LivenessTracker(CHALLENGE, 0.0), [S] * 6).reason is NotLive.NO_TURN   # frames past the limit


def test_a_turn_the_challenge_did_not_ask_for_is_the_wrong_order():
    tracker = LivenessTracker(CHALLENGE, 0.0)
    progress = perform(tracker, [S, R, S, L, S, R, S])
    assert (progress.outcome, progress.reason) == ("not_live", NotLive.WRONG_ORDER)


def test_turning_back_early_is_the_wrong_order_but_holding_the_last_pose_is_not():
    tracker = LivenessTracker(CHALLENGE, 0.0)
    assert not perform(tracker, [S, L, L, L, S]).done   # holding LEFT while STRAIGHT is awaited is fine
    assert perform(tracker, [L]).reason is NotLive.WRONG_ORDER   # LEFT again where RIGHT is asked


def test_frames_recorded_for_one_challenge_do_not_fit_another():
    recorded = [S, L, S, R, S, L, S]
    other = Challenge((S, R, S, L, S, L, S))
    assert perform(LivenessTracker(other, 0.0), recorded).reason is NotLive.WRONG_ORDER


def test_turned_frames_of_another_person_are_refused():
    progress = perform(LivenessTracker(CHALLENGE, 0.0), list(CHALLENGE.poses), person_of_turns=7)
    assert (progress.outcome, progress.reason) == ("not_live", NotLive.FACE_CHANGED)


def test_the_same_picture_twice_is_refused():
    tracker = LivenessTracker(CHALLENGE, 0.0)
    tracker.feed(0.1, reading(S, face(0, 0.01)))
    tracker.feed(0.2, reading(L))
    tracker.feed(0.3, reading(L, face(0, 0.02)))
    assert tracker.feed(0.4, reading(S, face(0, 0.01))).reason is NotLive.REPEATED_FRAME


def test_a_step_after_its_time_limit_is_too_slow_when_the_head_was_on_its_way():
    tracker = LivenessTracker(CHALLENGE, 0.0)
    tracker.feed(0.1, reading(S, face(0, 0.01)))
    tracker.feed(2.0, reading(MEASURED.turn_min * 0.8))                       # turning, not there yet
    assert tracker.feed(4.2, reading(L, face(0, 0.02))).reason is NotLive.TOO_SLOW   # 4.1 s after step 0


def test_a_step_inside_its_time_limit_is_not_too_slow():
    tracker = LivenessTracker(CHALLENGE, 0.0)
    tracker.feed(0.1, reading(S, face(0, 0.01)))
    assert tracker.feed(4.0, reading(L, face(0, 0.02))).step == 2   # exactly 3.9 s after step 0


def test_expire_before_the_deadline_changes_nothing_and_after_it_decides():
    tracker = LivenessTracker(CHALLENGE, 10.0)
    assert not tracker.expire(13.9).done
    assert tracker.expire(14.1).outcome == "no_face"   # nobody was ever seen


def test_two_faces_end_the_session_and_no_face_frames_are_tolerated():
    tracker = LivenessTracker(CHALLENGE, 0.0)
    assert not tracker.feed(0.1, PoseReading("no_face", None, None)).done
    assert tracker.feed(0.2, PoseReading("multiple_faces", None, None)).outcome == "multiple_faces"


def test_after_the_decision_every_frame_gets_the_same_answer():
    tracker = LivenessTracker(CHALLENGE, 0.0)
    decided = perform(tracker, list(CHALLENGE.poses))
    assert tracker.feed(20.0, reading(R, face(0, 0.5))) == decided
    assert tracker.expire(99.0) == decided


@pytest.mark.parametrize(("yaw", "pose"), [(0.0, S), (MEASURED.straight_max, S), (MEASURED.turn_min, L),
                                          (-MEASURED.turn_min, R), ((MEASURED.straight_max + MEASURED.turn_min) / 2,
                                                                    None)])
def test_pose_of_a_yaw(yaw, pose):
    assert pose_of(yaw) is pose


def test_every_challenge_starts_and_ends_straight_with_both_turns_and_six_exist():
    every = challenges()
    assert len(every) == len(set(every)) == 6
    for poses in every:
        assert poses[0] is poses[-1] is S and poses[::2] == (S,) * 4 and {L, R} <= set(poses[1::2])
    drawn = {random_challenge(random.Random(seed)).poses for seed in range(200)}
    assert drawn == set(every)
    assert random_challenge(random.Random(1)).as_json()[0] == "straight"
