"""rastau-enrol end to end: the real console script, real photos, a real database; bad rows never stop it."""
from __future__ import annotations

import asyncio
import csv
import datetime as dt
import math
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.db.engine import is_sqlite
from core.iin import make_iin, mask_iin
from core.services import registry
from server.bulk_enrol import main as rastau_enrol
from server.face.pipeline import analyse_frame
from tests.conftest import VALID_IINS
from tests.face.conftest import FACES, enrol_env, gradient_frame, photo

ENROL = str(Path(sys.executable).with_name("rastau-enrol"))


async def _enrol_process(settings, cwd: Path, *args: str) -> tuple[int, str, str]:
    """The installed console script as a real process."""
    env = {**enrol_env(settings), "PATH": "/usr/bin:/bin"}
    process = await asyncio.create_subprocess_exec(ENROL, *args, cwd=cwd, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "ids").mkdir(parents=True)
    for name in ("obama/obama1.jpg", "obama/obama2.jpg", "kit_harington/kit2.jpg", "biden/biden2.jpg",
                 "rose_leslie/rose1.jpg", "multi/two_people.jpg"):
        shutil.copy(FACES / name, folder / "ids" / Path(name).name)
    (folder / "ids" / "gradient.jpg").write_bytes(gradient_frame())
    (folder / "ids" / "truncated.jpg").write_bytes(photo("obama/obama4.jpg")[:6_000])
    (folder / "ids" / "notes.txt").write_text("not a photo")
    return folder


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["iin", "full_name", "phone", "language", "photo"])
        writer.writerows(rows)
    return path


async def test_good_rows_are_enrolled_and_each_bad_row_is_reported(ctx, clinic_world, photos, tmp_path, enrol):
    iin_new, iin_kk, iin_half = VALID_IINS[2], VALID_IINS[3], VALID_IINS[4]
    iin_staff = make_iin(dt.date(1980, 1, 1), True, 1)
    patients_csv = _write_csv(tmp_path / "patients.csv", [
        [iin_new, "Barack O.", "8 701 000 11 22", "ru", "ids/obama1.jpg; ids/obama2.jpg"],   # line 2: two refs
        [VALID_IINS[0], "Asel Nurlanovna", "87011234567", "kk", "ids/kit2.jpg"],            # 3: updates p1
        ["900101300018", "Bad Check", "87011234567", "ru", "ids/obama1.jpg"],               # 4: invalid IIN
        ["021231500025", "Bad Phone", "+1 555 123 4567", "ru", "ids/obama1.jpg"],           # 5: invalid phone
        ["021231500035", "No Face", "87011234568", "ru", "ids/gradient.jpg"],               # 6
        ["021231500045", "Two People", "87011234569", "ru", "ids/two_people.jpg"],          # 7
        ["021231500055", "Truncated", "87011234560", "ru", "ids/truncated.jpg"],            # 8
        ["021231500065", "Text File", "87011234561", "ru", "ids/notes.txt"],                # 9
        ["021231500075", "Ghost", "87011234562", "ru", "ids/ghost.jpg"],                    # 10
        [iin_half, "Half Good", "87011234563", "ru", "ids/rose1.jpg;ids/gradient.jpg"],     # 11: one bad photo
        [iin_new, "Barack Again", "87011234564", "ru", "ids/obama2.jpg"],                   # 12: duplicate
        [iin_kk, "Joseph B.", "+7 705 111 22 33", "KK", "ids/biden2.jpg"],                  # 13
        [iin_staff, "Staff Phone", "+7 701 111 22 33", "ru", "ids/biden2.jpg"],              # 14: the doctor's
    ])
    report = tmp_path / "out" / "failures.csv"
    report.parent.mkdir()

    code, out, err = await enrol(ctx.settings, tmp_path, "--clinic", str(clinic_world.clinic.id),
                                  "--csv", str(patients_csv), "--photos", str(photos), "--report", str(report),
                                  "--workers", "1", "--consent-by", "Nurse Aigerim")

    assert code == 1, err
    assert f"enrolled 3, failed 10; report written to {report}" in out
    with report.open(encoding="utf-8-sig", newline="") as handle:
        reported = list(csv.DictReader(handle))
    assert [(int(r["line"]), r["reason"]) for r in reported] == [
        (4, "invalid_iin"), (5, "invalid_phone"), (6, "no_face"), (7, "multiple_faces"), (8, "unreadable"),
        (9, "unsupported_format"), (10, "missing_photo"), (11, "no_face"), (12, "duplicate_iin"),
        (14, "staff_phone")]
    by_line = {int(r["line"]): r for r in reported}
    assert by_line[11]["photo"] == "ids/gradient.jpg" and "no face" in by_line[11]["detail"]
    assert by_line[10]["detail"] == f"ids/ghost.jpg was not found in {photos}"
    assert by_line[12]["iin"] == mask_iin(iin_new) and "line 2" in by_line[12]["detail"]
    assert "check digit" in by_line[4]["detail"] and "truncated" in by_line[8]["detail"]
    assert iin_new not in report.read_text(encoding="utf-8-sig")  # the report masks IINs
    assert iin_new not in out + err

    clinic_id = clinic_world.clinic.id
    async with ctx.uow() as uow:
        new = await uow.patients.by_iin(clinic_id, iin_new)
        updated = await uow.patients.by_iin(clinic_id, VALID_IINS[0])
        kazakh = await uow.patients.by_iin(clinic_id, iin_kk)
        assert await uow.patients.by_iin(clinic_id, iin_half) is None  # nothing half-written
        for bad_iin in ("021231500035", "021231500045", "021231500055", "021231500065", "021231500075", iin_staff):
            assert await uow.patients.by_iin(clinic_id, bad_iin) is None
    assert (new.full_name, new.phone, new.consent_by) == ("Barack O.", "+77010001122", "Nurse Aigerim")
    assert (updated.id, updated.full_name, updated.consent_by) == (clinic_world.p1.id, "Asel Nurlanovna",
                                                                   "Nurse Aigerim")
    assert kazakh.language.value == "kk"

    new_refs = await registry.face_references(ctx, new.id)
    assert len(new_refs) == 2
    webcam = analyse_frame(photo("obama/obama4.jpg")).encoding  # a third photo of the same man
    assert min(math.dist(webcam, ref) for ref in new_refs) <= ctx.settings.face_threshold
    assert len(await registry.face_references(ctx, updated.id)) == 1
    assert len(await registry.face_references(ctx, kazakh.id)) == 1
    assert await registry.face_references(ctx, clinic_world.p2.id) == []


async def test_a_clean_batch_exits_zero_and_writes_an_empty_report_beside_the_csv(ctx, clinic_world, photos,
                                                                                   tmp_path, enrol):
    """On SQLite the installed script as an operator runs it: a process of its own, starting its own face worker.
    On PostgreSQL the same command in this process: what a process adds (the script's entry point, its own worker)
    does not depend on the database, and a second process would cost seconds of dlib loading for nothing."""
    run = _enrol_process if is_sqlite(ctx.settings.database_url) else enrol
    patients_csv = _write_csv(tmp_path / "clean.csv",
                              [[VALID_IINS[1], "Ivan P.", "+7 705 765 43 21", "", "ids/biden2.jpg"]])
    code, out, err = await run(ctx.settings, tmp_path, "--clinic", str(clinic_world.clinic.id),
                               "--csv", str(patients_csv), "--photos", str(photos), "--workers", "1",
                               "--consent-by", "Dr. Seitkali")
    assert code == 0, err
    report = tmp_path / "clean.failures.csv"
    assert f"enrolled 1, failed 0; report written to {report}" in out
    assert report.read_text(encoding="utf-8-sig").strip() == "line,iin,full_name,photo,reason,detail"
    assert len(await registry.face_references(ctx, clinic_world.p2.id)) == 1


async def test_what_stops_a_batch_before_it_starts_is_said_plainly(ctx, clinic_world, photos, tmp_path, enrol):
    good = _write_csv(tmp_path / "good.csv", [[VALID_IINS[2], "A B", "87011234567", "ru", "ids/obama1.jpg"]])
    code, _, err = await enrol(ctx.settings, tmp_path, "--clinic", "999", "--csv", str(good),
                                "--photos", str(photos), "--consent-by", "Nurse")
    assert code == 2 and "clinic 999 not found" in err

    headless = tmp_path / "headless.csv"
    headless.write_text("iin;full_name;phone\n900101300017;A;87011234567\n")
    code, _, err = await enrol(ctx.settings, tmp_path, "--clinic", str(clinic_world.clinic.id),
                                "--csv", str(headless), "--photos", str(photos), "--consent-by", "Nurse")
    assert code == 2 and "lacks the column(s)" in err

    code, _, err = await enrol(ctx.settings, tmp_path, "--clinic", str(clinic_world.clinic.id),
                                "--csv", str(good), "--photos", str(photos))
    assert code == 2 and "--consent-by" in err

    code, _, err = await enrol(ctx.settings, tmp_path, "--clinic", str(clinic_world.clinic.id), "--csv", str(good),
                                "--photos", str(photos), "--consent-by", "Nurse", without="RASTAU_TEMPLATE_KEY")
    assert code == 2 and "RASTAU_TEMPLATE_KEY is not set" in err
    async with ctx.uow() as uow:
        assert await uow.patients.by_iin(clinic_world.clinic.id, VALID_IINS[2]) is None


async def test_rastau_enrol_tells_the_patient_and_replaces_a_face_at_most_once_per_limit(ctx, clinic_world, photos,
                                                                                        tmp_path, enrol):
    """A bulk run is a change like any other: the patient's chat hears of it, the change names the tool, and a
    third photo within RASTAU_FACE_REPLACEMENT_MIN_DAYS is refused for that row with nothing written."""
    from sqlalchemy import select

    from core.db import tables as t
    from core.services import chat

    w = clinic_world
    await chat.link_chat_by_phone(ctx, 6001, w.p1.phone, "kk")

    async def run(name: str, photo_name: str) -> tuple[int, list[dict]]:
        batch = _write_csv(tmp_path / f"{name}.csv", [[w.p1.iin, "Asel N.", w.p1.phone, "kk", photo_name]])
        code, _out, _err = await enrol(ctx.settings, tmp_path, "--clinic", str(w.clinic.id), "--csv", str(batch),
                                       "--photos", str(photos), "--workers", "1", "--consent-by", "Nurse Aigerim")
        with (tmp_path / f"{name}.failures.csv").open(encoding="utf-8-sig", newline="") as handle:
            return code, list(csv.DictReader(handle))

    async def written():
        async with ctx.uow(read_only=True) as uow:
            made = (await uow.conn.execute(select(t.patient_changes.c.kind, t.patient_changes.c.actor).where(
                t.patient_changes.c.patient_id == w.p1.id).order_by(t.patient_changes.c.id))).all()
            sent = (await uow.conn.execute(select(t.outbox.c.payload).where(
                t.outbox.c.kind == "patient_change_notice").order_by(t.outbox.c.id))).scalars().all()
        return [tuple(row) for row in made], sent

    assert (await run("first", "ids/kit2.jpg"))[0] == 0
    assert (await run("second", "ids/obama1.jpg"))[0] == 0
    made, sent = await written()
    assert made == [("consent_recorded", "cli:rastau-enrol"), ("face_enrolled", "cli:rastau-enrol"),
                    ("consent_recorded", "cli:rastau-enrol"), ("face_replaced", "cli:rastau-enrol")]
    assert len(sent) == 4 and all('"chat_id": 6001' in payload for payload in sent)
    obama = await registry.face_references(ctx, w.p1.id)

    code, failed = await run("third", "ids/biden2.jpg")
    assert code == 1
    assert [(r["line"], r["reason"]) for r in failed] == [("2", "face_replacement_limited")]
    assert "30 days" in failed[0]["detail"]
    assert await written() == (made, sent), "the refused row wrote nothing: no consent, no change, no notice"
    assert await registry.face_references(ctx, w.p1.id) == obama


def test_help_names_every_option_and_the_exit_statuses():
    done = CliRunner().invoke(rastau_enrol, ["-h"], prog_name="rastau-enrol")
    assert done.exit_code == 0, done.output
    for words in ("--clinic INTEGER", "--csv FILE", "--photos DIRECTORY", "--report FILE", "--workers",
                  "--consent-by TEXT", "Exit status: 0 all enrolled, 1 some rows failed, 2 nothing could"):
        assert words in " ".join(done.output.split()), words


async def test_a_blank_language_keeps_the_patients_own(ctx, clinic_world, photos, tmp_path, enrol):
    """The patient chose Kazakh (in the chat or at the desk); a bulk row without a language must not make them
    Russian, as leaving `language` out of the API's patient update does not."""
    patients_csv = _write_csv(tmp_path / "blank.csv",
                              [[VALID_IINS[0], "Asel N.", "87011234567", "", "ids/kit2.jpg"]])
    code, out, err = await enrol(ctx.settings, tmp_path, "--clinic", str(clinic_world.clinic.id),
                                  "--csv", str(patients_csv), "--photos", str(photos), "--workers", "1",
                                  "--consent-by", "Nurse Aigerim")
    assert code == 0, out + err
    async with ctx.uow() as uow:
        assert (await uow.patients.get(clinic_world.p1.id)).language.value == "kk"
