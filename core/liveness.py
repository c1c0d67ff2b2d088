"""Liveness: a random head-turn challenge, and the tracker that decides whether a stream of frames followed it.

Pure domain: the face workers turn each frame into a :class:`PoseReading` (server/face/liveness.py); this
module never sees pixels. Why it works, what it does not stop and how its thresholds were measured:
docs/liveness.md.

Yaw sign. A face worker measures yaw on the camera's frame as the camera took it (not the mirrored preview
the page shows): the nose's offset from the midpoint between the eyes, along the eye axis, in eye distances,
positive when the nose sits toward the image's right. A patient turning to their own LEFT swings the nose
toward their left, which a camera facing them sees on the image's right: LEFT is positive yaw.
"""
from __future__ import annotations

import enum
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    """Measured on real photos by scripts/measure_liveness.py (docs/liveness.md has the figures)."""
    straight_max: float = 0.10     # |yaw| at most this: looking straight (every frontal photo: ≤ 0.05)
    turn_min: float = 0.28         # |yaw| at least this: turned (a print tilted ±40°: up to 0.23)
    same_person_max: float = 0.60  # every encoded frame this close to the first frontal one


MEASURED = Thresholds()
# Where the fixture photos' mild turns (≤ ~20°, yaw ≤ 0.18) count as turns: for tests and the demo only, which
# have no real frames of a head turned further; a print tilted 40° passes it (docs/liveness.md).
STILLS = Thresholds(straight_max=0.06, turn_min=0.09)
# Two encodings this close come from the same bytes: a camera never sends one frame twice (a re-encoded copy
# differs more: this stops only the lazy resend of one picture).
SAME_PICTURE_MAX = 1e-6

TURNS = 3            # turns per challenge, left or right, both present: 6 distinct challenges
STEP_SECONDS = 4.0   # time limit for each step, from the moment the previous one was done


class Pose(str, enum.Enum):
    """The patient's own left and right: what the page asks ("turn your head to your left")."""
    STRAIGHT = "straight"
    LEFT = "left"
    RIGHT = "right"


@dataclass(frozen=True)
class Challenge:
    poses: tuple[Pose, ...]  # starts and ends STRAIGHT, a STRAIGHT between every two turns
    step_seconds: float = STEP_SECONDS

    def as_json(self) -> list[str]:
        return [pose.value for pose in self.poses]


def random_challenge(rng: random.Random, *, turns: int = TURNS, step_seconds: float = STEP_SECONDS) -> Challenge:
    """Uniformly one of :func:`challenges`: the server passes ``secrets.SystemRandom()``."""
    return Challenge(rng.choice(challenges(turns)), step_seconds)


def challenges(turns: int = TURNS) -> list[tuple[Pose, ...]]:
    """Every challenge: STRAIGHT, then each turn followed by STRAIGHT, both directions present.

    Both directions, because one flat photo of a head turned a little one way, tilted, can pass for straight
    and for that turn, never for the other. The tracker refuses a turn not asked for at that step, so frames
    recorded for one challenge fit another one only if the two are equal: 1 in 2**turns - 2 (6 for 3 turns).
    """
    found = []
    for directions in itertools.product((Pose.LEFT, Pose.RIGHT), repeat=turns):
        if len(set(directions)) == 2:
            found.append((Pose.STRAIGHT, *itertools.chain.from_iterable((turn, Pose.STRAIGHT) for turn in directions)))
    return found


@dataclass(frozen=True)
class PoseReading:
    """What a face worker says about one frame; no pixels and no landmarks are kept."""
    outcome: str                          # "ok" | "no_face" | "multiple_faces"
    yaw: float | None                     # signed (LEFT positive, see the module doc); None unless "ok"
    encoding: tuple[float, ...] | None    # 128 floats, only when the worker was asked to encode


class NotLive(str, enum.Enum):
    NO_TURN = "no_turn"                   # the head never moved toward the asked pose (a still or tilted photo)
    WRONG_ORDER = "wrong_order"           # a turn the challenge did not ask for at that step
    TOO_SLOW = "too_slow"                 # started toward the asked pose, did not reach it in time
    FACE_CHANGED = "face_changed"         # the turned frames are not the person of the frontal ones
    REPEATED_FRAME = "repeated_frame"     # the same picture sent twice


@dataclass(frozen=True)
class Progress:
    step: int                             # index into challenge.poses of the step now awaited
    encode_next: bool                     # the worker should encode the next frame
    done: bool                            # True once decided
    outcome: str | None = None            # when done: "live" | "no_face" | "multiple_faces" | "not_live"
    reason: NotLive | None = None         # when outcome == "not_live"
    frontal_encoding: tuple[float, ...] | None = None  # when "live": the encoding to match to the reference


def pose_of(yaw: float, thresholds: Thresholds = MEASURED) -> Pose | None:
    """The pose a yaw shows, or None between straight and turned (on the way, or not far enough)."""
    if abs(yaw) <= thresholds.straight_max:
        return Pose.STRAIGHT
    if abs(yaw) >= thresholds.turn_min:
        return Pose.LEFT if yaw > 0 else Pose.RIGHT
    return None


def _toward(yaw: float, pose: Pose, thresholds: Thresholds) -> bool:
    """At least half-way from straight to the asked pose: the patient was on the way there."""
    halfway = (thresholds.straight_max + thresholds.turn_min) / 2
    if pose is Pose.STRAIGHT:
        return abs(yaw) <= halfway
    return (yaw if pose is Pose.LEFT else -yaw) >= halfway


class LivenessTracker:
    """Feed it every frame's reading in arrival order; it answers where the patient is and, once, the decision.

    A step is done by a frame that shows its pose and carries an encoding (``encode_next`` asks the worker
    for one as soon as a frame shows the awaited pose; the first frame is always encoded). Between steps the
    head may hold the previous pose or be on its way; any other turn is the wrong order. Frames without a
    face are tolerated (a turned head can lose the detector) but the clock runs; two faces end the session.
    """

    def __init__(self, challenge: Challenge, started_at: float, thresholds: Thresholds = MEASURED) -> None:
        self.challenge = challenge
        self.thresholds = thresholds
        self._step = 0
        self._step_started_at = started_at
        self._on_the_way = False
        self._encode_next = True
        self._faces_seen = False
        self._frontal: tuple[float, ...] | None = None
        self._encodings: list[tuple[float, ...]] = []
        self._decided: Progress | None = None

    @property
    def progress(self) -> Progress:
        return self._decided or Progress(self._step, self._encode_next, False)

    def feed(self, at: float, reading: PoseReading) -> Progress:
        if self._decided is not None:
            return self._decided
        if reading.outcome == "ok" and reading.yaw is not None:
            self._faces_seen = True
            awaited = self.challenge.poses[self._step]
            self._on_the_way = self._on_the_way or _toward(reading.yaw, awaited, self.thresholds)
        if at > self._deadline:
            return self.expire(at)
        if reading.outcome == "multiple_faces":
            return self._decide("multiple_faces")
        if reading.outcome != "ok" or reading.yaw is None:
            self._encode_next = False
            return self.progress
        if reading.encoding is not None:
            refused = self._check_encoding(reading.encoding)
            if refused is not None:
                return self._not_live(refused)
        awaited = self.challenge.poses[self._step]
        shown = pose_of(reading.yaw, self.thresholds)
        if shown is awaited:
            if reading.encoding is None:
                self._encode_next = True
                return self.progress
            return self._advance(at, reading.encoding)
        self._encode_next = False
        previous = self.challenge.poses[self._step - 1] if self._step else None
        if shown in (Pose.LEFT, Pose.RIGHT) and shown is not previous and self._step > 0:
            return self._not_live(NotLive.WRONG_ORDER)
        return self.progress

    def expire(self, at: float) -> Progress:
        """No frame finished the awaited step in time (the server calls this when frames stop coming)."""
        if self._decided is not None or at <= self._deadline:
            return self.progress
        if not self._faces_seen:
            return self._decide("no_face")
        return self._not_live(NotLive.TOO_SLOW if self._on_the_way else NotLive.NO_TURN)

    @property
    def _deadline(self) -> float:
        return self._step_started_at + self.challenge.step_seconds

    def _check_encoding(self, encoding: Sequence[float]) -> NotLive | None:
        encoding = tuple(encoding)
        if any(math.dist(encoding, seen) <= SAME_PICTURE_MAX for seen in self._encodings):
            return NotLive.REPEATED_FRAME
        if self._frontal is not None and math.dist(encoding, self._frontal) > self.thresholds.same_person_max:
            return NotLive.FACE_CHANGED
        self._encodings.append(encoding)
        return None

    def _advance(self, at: float, encoding: tuple[float, ...]) -> Progress:
        if self._frontal is None:
            self._frontal = encoding
        self._step += 1
        self._step_started_at = at
        self._on_the_way = False
        self._encode_next = False
        if self._step == len(self.challenge.poses):
            return self._decide("live", frontal_encoding=self._frontal)
        return self.progress

    def _not_live(self, reason: NotLive) -> Progress:
        return self._decide("not_live", reason=reason)

    def _decide(self, outcome: str, *, reason: NotLive | None = None,
                frontal_encoding: tuple[float, ...] | None = None) -> Progress:
        self._decided = Progress(self._step, False, True, outcome, reason, frontal_encoding)
        return self._decided
