#!/usr/bin/env python
"""Measure liveness against an attack corpus and write the measured part of docs/liveness.md.

Clips come from devkit/liveness_clips.py (real photos in tests/fixtures/faces; genuine: one person's photos
at different head angles and their mirror images in the challenge's order; attacks: one flat photo still,
moved, tilted, another person's turned frames, turns in the wrong order, too slow, an accepted session's
frames sent to new sessions). Every frame goes through the production reader (server.face.liveness.read_pose)
and every clip through core.liveness.LivenessTracker as a capture session would feed it: the tracker asks
for encodings, frames arrive at their timestamps, the session expires when the frames stop.

    .venv/bin/python scripts/measure_liveness.py            # about 5 minutes on one core
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.liveness import (  # noqa: E402
    MEASURED,
    STILLS,
    Challenge,
    LivenessTracker,
    Pose,
    PoseReading,
    Progress,
    Thresholds,
    challenges,
)
from devkit import liveness_clips as clips  # noqa: E402
from server.face.liveness import read_pose  # noqa: E402

DOC = ROOT / "docs" / "liveness.md"
START, END = "<!-- measured: scripts/measure_liveness.py writes from here -->", "<!-- measured: end -->"
SEED = 20261129
TURN_SWEEP = (0.09, 0.12, 0.15, 0.18, 0.22, 0.26, 0.28, 0.32)
TILTS = (-40, -30, -20, 20, 30, 40)
TILT_SCALES = (1.0, 1.5, 2.0)   # the face 200, 300 and 400 px tall in a 640×480 frame: a print held closer
TILTED_PRINTS = ((30.0, 1.5), (40.0, 2.0))   # (degrees, face size) of the tilted-photo attack clips
SINGLE_PHOTOS = sorted({photo for table in (clips.STRAIGHT_PHOTOS, clips.NOSE_TO_IMAGE_RIGHT, clips.NOSE_TO_IMAGE_LEFT)
                        for photos in table.values() for photo in photos})


class Reader:
    """Each frame read once without its encoding, and once more with it only if a tracker asks."""

    def __init__(self) -> None:
        self._plain: dict[bytes, PoseReading] = {}
        self._encoded: dict[bytes, PoseReading] = {}
        self.reads = 0

    def __call__(self, frame: bytes, encode: bool) -> PoseReading:
        if encode:
            if frame not in self._encoded:
                self.reads += 1
                self._encoded[frame] = read_pose(frame, encode=True)
            return self._encoded[frame]
        if frame in self._encoded:
            reading = self._encoded[frame]
            return PoseReading(reading.outcome, reading.yaw, None)
        if frame not in self._plain:
            self.reads += 1
            self._plain[frame] = read_pose(frame, encode=False)
        return self._plain[frame]


def run_session(clip: clips.Clip, poses: Sequence[Pose], reader: Reader, thresholds: Thresholds) -> Progress:
    """Feed a clip to a new session as the capture service does; expire it when the frames stop."""
    challenge = Challenge(tuple(poses))
    tracker = LivenessTracker(challenge, 0.0, thresholds)
    progress = tracker.progress
    for at, frame in clip:
        progress = tracker.feed(at, reader(frame, progress.encode_next))
        if progress.done:
            return progress
    at = clip[-1][0] if clip else 0.0
    while not progress.done:
        at += 1.0
        progress = tracker.expire(at)
    return progress


@dataclass
class Case:
    """One clip and the challenge of the session it is sent to."""
    clip: clips.Clip
    poses: tuple[Pose, ...]


@dataclass
class Corpus:
    genuine: list[Case] = field(default_factory=list)
    attacks: dict[str, list[Case]] = field(default_factory=dict)


ATTACKS = {
    "still": "one photo held still (every photo in the set, straight or turned)",
    "moved": "one photo moved, scaled (0.75–1.3×) and rotated (±25°) in the image plane, a new place every frame",
    "tilted": "one photo (as taken and mirrored) tilted toward each asked side, 30° with the face 300 px tall "
              "or 40° with 400 px (held close), less up to 4° of unsteady hand",
    "other_person": "a genuine sequence whose turned frames are another person's real turned photos",
    "wrong_order": "real turns of the right person, in another challenge's order",
    "too_slow": "real turns of the right person, each step arriving after its time limit",
    "replay": "the frames of every genuine clip sent again, in their order, to a new session with each challenge",
    "reassembled": "the frames of every genuine clip sorted by pose and dealt out in each other challenge's order",
}


def build(rng: random.Random) -> Corpus:
    corpus = Corpus(attacks={name: [] for name in ATTACKS})
    every = challenges()
    for person in clips.TURNING_PEOPLE:
        for poses in every:
            corpus.genuine.append(Case(clips.genuine_clip(poses, person, rng), poses))
            others = [other for other in every if other != poses]
            corpus.attacks["wrong_order"].append(Case(clips.genuine_clip(rng.choice(others), person, rng), poses))
            gap = clips.FRAME_SECONDS + Challenge(poses).step_seconds
            corpus.attacks["too_slow"].append(Case(clips.genuine_clip(poses, person, rng, step_gap=gap), poses))
        for impostor in clips.TURNING_PEOPLE:
            if impostor != person:
                for poses in rng.sample(every, 3):
                    corpus.attacks["other_person"].append(
                        Case(clips.genuine_clip(poses, person, rng, turned_by=impostor), poses))
    for photo in SINGLE_PHOTOS:
        for motion in ("still", "moved"):
            poses = rng.choice(every)
            corpus.attacks[motion].append(Case(clips.photo_clip(poses, clips.Shot(photo), rng, motion=motion), poses))
        for mirrored in (False, True):
            for degrees, scale in TILTED_PRINTS:
                poses = rng.choice(every)
                clip = clips.photo_clip(poses, clips.Shot(photo, mirrored), rng, motion="tilted",
                                        tilt_degrees=degrees, tilt_scale=scale)
                corpus.attacks["tilted"].append(Case(clip, poses))
    corpus.attacks["replay"] = [Case(case.clip, poses) for case in corpus.genuine for poses in every]
    corpus.attacks["reassembled"] = [Case(reassemble(case, poses), poses) for case in corpus.genuine
                                     for poses in every if poses != case.poses]
    return corpus


def reassemble(recorded: Case, poses: tuple[Pose, ...]) -> clips.Clip:
    """A recorded session's frames, sorted by the pose they were recorded for, dealt out in a new
    challenge's order, each frame used once while there are unused ones (the clinic's browser saw them all)."""
    by_pose: dict[Pose, list[bytes]] = {}
    frames = iter(recorded.clip)
    for pose in recorded.poses:
        for _ in range(clips.FRAMES_PER_STEP):
            by_pose.setdefault(pose, []).append(next(frames)[1])
    dealt: dict[Pose, int] = Counter()
    clip: clips.Clip = []
    for step, pose in enumerate(poses):
        for index in range(clips.FRAMES_PER_STEP):
            pool = by_pose[pose]
            clip.append(((step * clips.FRAMES_PER_STEP + index) * clips.FRAME_SECONDS, pool[dealt[pose] % len(pool)]))
            dealt[pose] += 1
    return clip


def evaluate(corpus: Corpus, reader: Reader,
             thresholds: Thresholds) -> tuple[list[Progress], dict[str, list[Progress]]]:
    genuine = [run_session(case.clip, case.poses, reader, thresholds) for case in corpus.genuine]
    attacks = {name: [run_session(case.clip, case.poses, reader, thresholds) for case in cases]
               for name, cases in corpus.attacks.items()}
    return genuine, attacks


def _live(progress: Progress) -> bool:
    return progress.outcome == "live"


def _rate(part: int, whole: int) -> str:
    return f"{part}/{whole} = {100 * part / whole:.1f}%" if whole else "—"


def _outcomes(results: list[Progress]) -> str:
    counted = Counter(r.reason.value if r.reason else str(r.outcome) for r in results)
    return ", ".join(f"{name} {count}" for name, count in counted.most_common())


def pose_table(reader: Reader, rng: random.Random) -> list[str]:
    lines = ["| photo | labelled (looked at) | yaw as taken | yaw mirrored |", "|---|---|---:|---:|"]
    for photo in SINGLE_PHOTOS:
        label = ("straight" if any(photo in p for p in clips.STRAIGHT_PHOTOS.values())
                 else "turned to own left" if any(photo in p for p in clips.NOSE_TO_IMAGE_RIGHT.values())
                 else "turned to own right")
        yaws = [reader(clips.camera_frame(clips.Shot(photo, mirrored), rng), False).yaw for mirrored in (False, True)]
        lines.append(f"| {photo} | {label} | " + " | ".join(f"{y:+.3f}" if y is not None else "no face" for y in yaws)
                     + " |")
    return lines


def tilt_table(reader: Reader, rng: random.Random) -> tuple[list[str], float]:
    """|yaw| of every straight photo printed and tilted, by angle and size: how far a flat print can go."""
    straight = sorted(p for photos in clips.STRAIGHT_PHOTOS.values() for p in photos)
    worst = 0.0
    lines = ["| tilt | face 200 px | face 300 px | face 400 px |", "|---:|---:|---:|---:|"]
    for tilt in TILTS:
        cells = []
        for scale in TILT_SCALES:
            yaws = [abs(y) for photo in straight
                    if (y := reader(clips.camera_frame(clips.Shot(photo), rng, scale=scale, tilt_degrees=tilt),
                                    False).yaw) is not None]
            worst = max([worst, *yaws])
            cells.append(f"max {max(yaws):.3f}, median {statistics.median(yaws):.3f}" if yaws else "no face")
        lines.append(f"| {tilt:+d}° | " + " | ".join(cells) + " |")
    return lines, worst


def distance_table(reader: Reader, rng: random.Random) -> list[str]:
    """Encoding distance from each person's straight frames to turned frames: same person vs another."""
    import math

    encoded: dict[str, list[tuple[str, tuple[float, ...]]]] = {}
    for person in clips.TURNING_PEOPLE:
        for pose in Pose:
            for shot in clips.shots(person, pose):
                reading = reader(clips.camera_frame(shot, rng), True)
                if reading.encoding is not None:
                    encoded.setdefault(person, []).append((pose.value, reading.encoding))
    same, other = [], []
    for person, frames in encoded.items():
        for straight in (e for p, e in frames if p == "straight"):
            for other_person, their in encoded.items():
                for their_pose, turned in their:
                    if their_pose != "straight":
                        (same if other_person == person else other).append(math.dist(straight, turned))
    return [f"- same person, straight frame to turned frame (mirrors included): {len(same)} pairs, "
            f"max {max(same):.3f}, median {statistics.median(same):.3f}",
            f"- another person's turned frame: {len(other)} pairs, min {min(other):.3f}, "
            f"median {statistics.median(other):.3f}"]


def report(corpus: Corpus, reader: Reader, rng: random.Random) -> str:
    lines = [START, "", f"Generated by `.venv/bin/python scripts/measure_liveness.py` (seed {SEED}).", ""]
    lines += ["### Yaw of every photo, as a 640×480 camera frame", "", *pose_table(reader, rng)]
    tilt_lines, worst_tilt = tilt_table(reader, rng)
    lines += ["", "### A straight photo printed and tilted about its vertical axis: |yaw|", "", *tilt_lines]
    lines += ["", f"The largest |yaw| any tilted print reached: **{worst_tilt:.3f}**.", ""]
    lines += ["### The same person throughout: encoding distances", "", *distance_table(reader, rng)]
    for title, thresholds in ((f"At the thresholds in force ({_show(MEASURED)})", MEASURED),
                              (f"At the stills' thresholds ({_show(STILLS)}), where their mild turns count", STILLS)):
        genuine, attacks = evaluate(corpus, reader, thresholds)
        refused = sum(not _live(r) for r in genuine)
        lines += ["", f"### {title}", "", "| class | presentations | accepted | APCER / BPCER | decisions |",
                  "|---|---:|---:|---:|---|",
                  f"| genuine (bona fide) | {len(genuine)} | {len(genuine) - refused} | BPCER "
                  f"{_rate(refused, len(genuine))} | {_outcomes(genuine)} |"]
        for name, results in attacks.items():
            accepted = sum(_live(r) for r in results)
            lines.append(f"| {name}: {ATTACKS[name]} | {len(results)} | {accepted} | APCER "
                         f"{_rate(accepted, len(results))} | {_outcomes(results)} |")
    lines += ["", "### Turn threshold sweep (straight_max 0.06 below turn_min 0.15, else 0.10)", "",
              "| turn_min | BPCER | APCER still | APCER moved | APCER tilted |", "|---:|---:|---:|---:|---:|"]
    for turn_min in TURN_SWEEP:
        thresholds = Thresholds(0.06 if turn_min < 0.15 else MEASURED.straight_max, turn_min, MEASURED.same_person_max)
        genuine = [run_session(c.clip, c.poses, reader, thresholds) for c in corpus.genuine]
        cells = [_rate(sum(not _live(r) for r in genuine), len(genuine))]
        for name in ("still", "moved", "tilted"):
            results = [run_session(c.clip, c.poses, reader, thresholds) for c in corpus.attacks[name]]
            cells.append(_rate(sum(_live(r) for r in results), len(results)))
        lines.append(f"| {turn_min:.2f} | " + " | ".join(cells) + " |")
    lines += ["", f"{reader.reads} frames read through the production reader.", "", END]
    return "\n".join(lines)


def _show(thresholds: Thresholds) -> str:
    return (f"straight_max {thresholds.straight_max}, turn_min {thresholds.turn_min}, "
            f"same_person_max {thresholds.same_person_max}")


def replace_measured(text: str, measured: str) -> str:
    before, _, rest = text.partition(START)
    _, _, after = rest.partition(END)
    return before + measured + after


def main(argv: list[str] | None = None, progress: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)
    rng = random.Random(SEED)
    corpus = build(rng)
    progress(f"{len(corpus.genuine)} genuine clips, "
             + ", ".join(f"{len(cases)} {name}" for name, cases in corpus.attacks.items()))
    measured = report(corpus, Reader(), rng)
    args.out.write_text(replace_measured(args.out.read_text(), measured))
    progress(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
