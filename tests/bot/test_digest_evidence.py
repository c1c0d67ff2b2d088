"""The admin's digest in the chat and its CSV say when each visit's evidence was made: registered when, verified
when, against which face enrolment, and they name a late registration and a match against a fresh reference."""
from __future__ import annotations

import csv
import datetime as dt
import io

import pytest

from bot import texts
from bot.i18n import make_i18n
from core.clock import ALMATY
from core.services.digest import Digest, DigestRow

DAY = dt.date(2026, 11, 25)
YES, NO = {"ru": "да", "kk": "иә"}, {"ru": "нет", "kk": "жоқ"}


def row(visit_id: int, hour: int, **evidence) -> DigestRow:
    start = dt.datetime(2026, 11, 25, hour, 0, tzinfo=ALMATY)
    values = dict(registered_at=start - dt.timedelta(days=1), registered_late=False, verified_at=None,
                  verified_enrolment_id=None, enrolled_at=None, fresh_reference=False, state="unverified",
                  verified_by=None, evidence_strength=None)
    values.update(evidence)
    return DigestRow(visit_id=visit_id, start_local=start, doctor_id=1, doctor_name="Aidos S.",
                     patient_name=f"Patient {visit_id}", iin_masked="********0017", mode="in_person",
                     service_code="A01", answer="none", dispute_reason=None, patient_reachable=False, **values)


def busy() -> Digest:
    late = row(1, 9, registered_at=dt.datetime(2026, 11, 25, 15, 0, tzinfo=ALMATY), registered_late=True)
    fresh = row(2, 10, state="verified", verified_by="face", evidence_strength="single_frame",
                verified_at=dt.datetime(2026, 11, 25, 10, 2, tzinfo=ALMATY), verified_enrolment_id=7,
                enrolled_at=dt.datetime(2026, 11, 25, 8, 30, tzinfo=ALMATY), fresh_reference=True)
    totals = dict.fromkeys(("visits", "face_verified", "face_live_verified", "code_verified", "unverified",
                            "patient_confirmed", "disputed", "no_answer", "cancelled", "unreachable", "registered_late",
                            "fresh_reference"), 0)
    totals.update(visits=2, face_verified=1, unverified=1, no_answer=2, unreachable=2, registered_late=1,
                  fresh_reference=1)
    return Digest(clinic_id=1, clinic_name="Polyclinic No. 5", day=DAY, totals=totals, per_doctor=[],
                  flagged=[late, fresh], rows=[late, fresh])


@pytest.mark.parametrize("lang, late, fresh", [
    ("ru", "зарегистрирован задним числом", "меньше чем за 24 часа"),
    ("kk", "уақыты өтіп кеткен соң тіркелген", "24 сағаттан аз уақыт бұрын"),
], ids=["ru", "kk"])
def test_the_digest_names_late_registrations_and_fresh_references(lang, late, fresh):
    i18n = make_i18n()
    with i18n.context(), i18n.use_locale(lang):
        text, with_csv = texts.digest_messages(busy())
        table = list(csv.reader(io.StringIO(texts.digest_csv(busy()).decode("utf-8-sig")), delimiter=";"))
    lines = text.splitlines()
    assert with_csv
    assert any(line.startswith("• #1 ") and late in line for line in lines), text
    assert any(line.startswith("• #2 ") and fresh in line for line in lines), text
    assert sum(line.startswith("1 ") for line in lines) == 2  # "1 visit registered late", "1 ... fresh photo"

    header, late_row, fresh_row = table
    assert len(header) == len(late_row) == 19  # the last: how far the code got (issue 14), none sent here
    assert late_row[-7:] == ["2026-11-25 15:00", YES[lang], "", "", "", NO[lang], ""]
    assert fresh_row[-7:] == ["2026-11-24 10:00", NO[lang], "2026-11-25 10:02", "7", "2026-11-25 08:30",
                              YES[lang], ""]


@pytest.mark.parametrize("lang, live, single", [
    ("ru", "лицо, живая проверка", "лицо, один кадр (слабее)"),
    ("kk", "бет-әлпет, тірі тексеру", "бет-әлпет, бір кадр (әлсіздеу)"),
], ids=["ru", "kk"])
def test_a_single_frame_is_labelled_the_weaker_kind_beside_a_live_check(lang, live, single):
    checked = row(3, 11, state="verified", verified_by="face_live", evidence_strength="live")
    framed = row(4, 12, state="verified", verified_by="face", evidence_strength="single_frame")
    totals = {**busy().totals, "visits": 2, "face_verified": 1, "face_live_verified": 1, "unverified": 0}
    digest = Digest(clinic_id=1, clinic_name="Polyclinic No. 5", day=DAY, totals=totals, per_doctor=[],
                    flagged=[], rows=[checked, framed])
    i18n = make_i18n()
    with i18n.context(), i18n.use_locale(lang):
        text, _ = texts.digest_messages(digest)
        table = list(csv.reader(io.StringIO(texts.digest_csv(digest).decode("utf-8-sig")), delimiter=";"))
    assert table[1][8] == live and table[2][8] == single
    assert any(line.endswith(": 1") and ("тірі" in line or "живой" in line) for line in text.splitlines()), text
