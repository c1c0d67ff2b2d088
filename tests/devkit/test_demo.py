"""The newcomer's demo, run in quick mode: its final evidence table is the story's promise, and its logs
must hold none of the secrets the story used."""
from __future__ import annotations

import io

import pytest

from devkit.demo import NARRATION, play
from tests.conftest import log_as_the_product

pytestmark = pytest.mark.slow  # the whole story with real server, bot and stand-in

EXPECTED = [
    # in person: a live head followed the capture page's challenge and matched, the patient said "yes"
    ("A", "in_person", "patient_confirmed", "face_live", "confirmed"),
    # online: verified by the code the doctor asked for, never by face; the patient said "yes"
    ("B", "online", "patient_confirmed", "code", "confirmed"),
    # the phantom visit: billed, never verified, and the patient says "I wasn't there"
    ("C", "in_person", "patient_disputed", None, "disputed"),
    # on WhatsApp only (issue 14): the code came as a template, the clinic entered it, he said "yes" by its button
    ("D", "in_person", "patient_confirmed", "code", "confirmed"),
    # no messenger at all (issue 14): the code came by SMS, the clinic entered it, she replied "1" by SMS
    ("E", "in_person", "patient_confirmed", "code", "confirmed"),
]


@pytest.mark.parametrize("lang", ["ru", "kk"])
async def test_the_demo_tells_the_whole_story_and_its_logs_keep_every_secret(lang, started_pool):
    out, logs = io.StringIO(), io.StringIO()
    try:
        run = await play(lang, quick=True, out=out, log_stream=logs, log_level="INFO", face_pool=started_pool)
    finally:
        log_as_the_product()  # play() logs into `logs`; the tests after this one in this process log as before

    assert [(e.label, e.mode, e.state, e.verified_by, e.answer) for e in run.evidence] == EXPECTED
    story = out.getvalue()
    assert "→ match" in story  # the patient, live, matched
    assert "→ not_live (no_turn)" in story  # the enrolment photo held up and moved in front of the camera did not
    assert "→ 409 single_frame_face_disabled" in story  # a single frame from the clinic's system is refused
    assert "→ 409" in story.split(NARRATION[lang]["online"])[1]  # a capture for the online consultation too
    assert "📎 rastau-digest-" in story  # the admin's digest came with its CSV
    auditor = story.split(NARRATION[lang]["auditor"])[1]  # the auditor's view ends the story
    assert "📎 rastau-auditor-" in auditor and "🚩" in auditor  # the summary with the clinic's red flags, and its CSV
    disputed = story.split(NARRATION[lang]["answers"])[1].split(NARRATION[lang]["digest"])[0]
    assert "🤖 → Аудитор Сәуле: ⚠️" in disputed, "the phantom visit's dispute reached the auditor's chat at once"
    # issue 17: a family number (Dmitry and his mother) names the patient in every message to that chat, and a
    # question typed after the reason was given is not filed: nothing more reaches the admins or the auditor
    assert "Ковалева М. П." in story.split(NARRATION[lang]["family"])[0]
    dmitry = [line for line in story.splitlines() if line.startswith("   🤖 → Дмитрий: ") and line[17:].strip()]
    about_visits = [line for line in dmitry if "10:00" in line or "11:00" in line]  # B's and C's codes, questions
    assert len(about_visits) >= 4 and all("Дмитрий Ковалев" in line for line in about_visits)
    assert NARRATION[lang]["stray_note"].format(n=0) in disputed
    assert NARRATION[lang]["payer"] in auditor and "visit.disputed" in auditor and "flag.raised" in auditor
    assert NARRATION[lang]["summary"] in story
    dashboard = story.split(NARRATION[lang]["dashboard"])[1]  # the web dashboard (issue 13)
    assert dashboard.count("/web/signin/") == 4  # the admin's and the auditor's links in their chats, then printed

    captured = logs.getvalue()
    assert "request" in captured and "message delivered" in captured  # the logs were really captured
    leaked = [secret for secret in run.secrets if secret in captured]
    assert not leaked, f"{len(leaked)} secret value(s) appear in the logs"
    assert len(run.secrets) >= 12  # token, 3 keys, 3 server secrets, 2 IINs, 3 codes


def test_both_languages_narrate_every_step():
    assert NARRATION["kk"].keys() == NARRATION["ru"].keys()
    assert NARRATION["kk"]["values"].keys() == NARRATION["ru"]["values"].keys()
