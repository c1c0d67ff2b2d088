"""Capture sessions over HTTP and the page's WebSocket, in process, with a fake pose reader (the real face workers
and a real browser: tests/browser). Each attack a dishonest clinic could try through a session is a test here."""
from __future__ import annotations

import asyncio
import datetime as dt

import aiohttp
import pytest

from core.liveness import PoseReading
from core.model import VisitMode
from core.services import registry
from tests.conftest import test_settings as settings_for
from tests.server.conftest import add_visit
from tests.server.support import FakeAnalyser, _encoding

API = "/api/v1"
CHALLENGE = "straight,left,straight,right,straight"
YAW = {"straight": 0.0, "left": 0.35, "right": -0.35}
PAGE_INTERVAL_S = 0.2  # server/static/capture.js: MIN_INTERVAL_MS, a frame no sooner than this after the last


def pose_frame(who: str, pose: str) -> bytes:
    return f"POSE:{who}:{YAW[pose]}".encode()


class PoseReader(FakeAnalyser):
    """Reads b"POSE:<who>:<yaw>"; each frame's encoding is the person's, moved a little (a camera never sees the
    same picture twice), so the tracker's same-person and repeated-frame rules see what a real stream gives."""

    def __init__(self) -> None:
        super().__init__()
        self.poses_read = 0

    async def read_pose(self, data: bytes, *, encode: bool) -> PoseReading:
        self.poses_read += 1
        kind, who, yaw = data.decode(errors="replace").split(":")
        assert kind == "POSE"
        base = list(_encoding(who))
        base[(self.poses_read * 7) % 128] += 0.001 * self.poses_read
        return PoseReading("ok", float(yaw), tuple(base) if encode else None)


@pytest.fixture
def settings(db_url):
    return settings_for(db_url, single_frame_face=False, capture_challenge=CHALLENGE)


@pytest.fixture
def faces():
    return PoseReader()


async def enrol(ctx, tenant, who: str = "asel", patient: int = 0) -> None:
    await registry.record_consent(ctx, tenant.clinic_id, tenant.patient_ids[patient], "Nurse")
    await registry.enrol_face(ctx, tenant.clinic_id, tenant.patient_ids[patient], [_encoding(who)])


async def open_session(client, tenant, visit_id: int, key: str = "webcam"):
    return await client.post(f"{API}/visits/{visit_id}/capture-sessions", headers=tenant.h(key))


async def opened(client, tenant, visit_id: int) -> str:
    response = await open_session(client, tenant, visit_id)
    assert response.status == 201, await response.text()
    url = (await response.json())["url"]
    return "/" + url.split("/", 3)[3]


async def follow(client, path: str, frame_for, pace: float = 0.0) -> tuple[dict, list[dict]]:
    """Do what the page does: answer every step with a frame (``frame_for(step message)``) until the outcome,
    ``pace`` seconds after the previous one (a session decided only by its step's time limit is sent frames at the
    page's own pace, PAGE_INTERVAL_S: answered at once, its frames went round in a busy loop for the 4 s)."""
    steps = []
    async with client.ws_connect(path + "/ws") as socket:
        while True:
            message = await socket.receive_json(timeout=10)
            if message["type"] == "outcome":
                return message, steps
            steps.append(message)
            if steps[:-1]:
                await asyncio.sleep(pace)
            await socket.send_bytes(frame_for(message))


def genuine(who: str = "asel"):
    return lambda step: pose_frame(who, step["pose"])


async def visit_json(client, tenant, visit_id: int) -> dict:
    return await (await client.get(f"{API}/visits/{visit_id}", headers=tenant.h())).json()


async def settled_events(client, tenant, visit_id: int) -> list[dict]:
    """The visit's events once the server has settled a session the page left (it does so as it sees the close)."""
    for _ in range(100):
        events = (await visit_json(client, tenant, visit_id))["events"]
        if events[-1]["step"] == "face_attempt":
            break
        await asyncio.sleep(0.05)
    return events


async def test_a_live_head_following_the_challenge_verifies_the_visit_as_face_live(client, ctx, tenants):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    path = await opened(client, a, visit.id)
    outcome, steps = await follow(client, path, genuine())
    assert outcome == {"type": "outcome", "outcome": "match", "reason": None, "next": "done"}
    assert [s["pose"] for s in steps][:1] == ["straight"] and {s["pose"] for s in steps} == {"straight", "left",
                                                                                              "right"}
    body = await visit_json(client, a, visit.id)
    assert body["state"] == "verified" and body["verified_by"] == "face_live"
    assert body["evidence_strength"] == "live"
    assert [e["step"] for e in body["events"]][-2:] == ["capture_open", "verify"]


async def test_the_page_speaks_the_patients_language_behind_a_strict_policy(client, ctx, tenants):
    a, _ = tenants  # make_tenant registers patients in Kazakh
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    path = await opened(client, a, visit.id)
    page = await client.get(path)
    text = await page.text()
    assert page.status == 200 and '<html lang="kk">' in text and "Қабылдауды камера арқылы растау" in text
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
    assert '<script src="/capture/assets/capture.js">' in text and "http" not in text.split("<body")[1]  # no CDN
    russian = await (await client.get(path + "?lang=ru")).text()
    assert '<html lang="ru">' in russian and "Подтверждение приёма через камеру" in russian
    script = await client.get("/capture/assets/capture.js")
    assert script.status == 200 and script.content_type == "text/javascript"


async def test_a_session_is_claimed_once_and_its_link_then_answers_404(client, ctx, tenants, faces):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    path = await opened(client, a, visit.id)
    async with client.ws_connect(path + "/ws") as first:
        assert (await first.receive_json())["type"] == "step"
        async with client.ws_connect(path + "/ws") as second:  # the same link on a second computer
            assert await second.receive_json() == {"type": "outcome", "outcome": "unavailable", "next": "try_again"}
        assert (await client.get(path)).status == 404
    assert faces.poses_read == 0
    assert (await settled_events(client, a, visit.id))[-1]["detail"] == "not_live:abandoned"  # the first page left


async def test_a_link_not_opened_within_two_minutes_is_dead(client, ctx, tenants):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    path = await opened(client, a, visit.id)
    ctx.clock.advance(dt.timedelta(minutes=2, seconds=1))
    page = await client.get(path)
    assert page.status == 404 and 'data-outcome="unavailable"' in await page.text()
    outcome, _ = await follow(client, path, genuine())
    assert outcome["outcome"] == "unavailable"
    assert (await visit_json(client, a, visit.id))["state"] == "scheduled"


async def test_a_photo_that_never_turns_is_not_live_and_verifies_nothing(client, ctx, tenants):
    """A print held up (or moved, or tilted) stays near straight: the first turn is never reached in time."""
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    path = await opened(client, a, visit.id)
    outcome, _ = await follow(client, path, lambda step: pose_frame("asel", "straight"), pace=PAGE_INTERVAL_S)
    assert outcome == {"type": "outcome", "outcome": "not_live", "reason": "no_turn", "next": "try_again"}
    body = await visit_json(client, a, visit.id)
    assert body["state"] == "scheduled" and body["verified_by"] is None
    assert body["events"][-1]["method"] == "face_live" and body["events"][-1]["detail"] == "not_live:no_turn"


async def test_turns_in_another_order_than_asked_are_not_live(client, ctx, tenants):
    """A recording made for another session's challenge: right when left was asked."""
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    path = await opened(client, a, visit.id)
    swapped = {"straight": "straight", "left": "right", "right": "left"}
    outcome, _ = await follow(client, path, lambda step: pose_frame("asel", swapped[step["pose"]]))
    assert (outcome["outcome"], outcome["reason"]) == ("not_live", "wrong_order")


async def test_a_live_head_of_another_person_is_no_match(client, ctx, tenants):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    path = await opened(client, a, visit.id)
    outcome, _ = await follow(client, path, genuine("someone-else"))
    assert outcome == {"type": "outcome", "outcome": "no_match", "reason": None, "next": "try_again"}
    assert (await visit_json(client, a, visit.id))["state"] == "scheduled"


async def test_closing_the_page_before_the_decision_counts_as_a_failed_attempt(client, ctx, tenants, settings,
                                                                              aiohttp_client):
    """Else a clinic could abandon every session that was going badly and try again for free."""
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    path = await opened(client, a, visit.id)
    async with client.ws_connect(path + "/ws") as socket:
        assert (await socket.receive_json())["type"] == "step"
    events = await settled_events(client, a, visit.id)
    assert (events[-1]["method"], events[-1]["detail"]) == ("face_live", "not_live:abandoned")


async def test_failed_sessions_count_against_the_same_caps_as_single_frames(aiohttp_client, settings, ctx, tenants,
                                                                           faces):
    """One session is one attempt: with the patient's hourly cap at 2, the third session is refused when the page
    connects, before any frame is read, and the code stays the way out."""
    from core.config import Settings
    from core.services import Context
    from server.app import create_app

    capped = Settings(_env_file=None, **{**settings.model_dump(), "patient_face_failures_per_hour": 2})
    capped_ctx = Context.build(capped, ctx.uow, ctx.clock)
    client = await aiohttp_client(create_app(capped, ctx=capped_ctx, face_pool=faces))
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    for _ in range(2):
        outcome, _ = await follow(client, await opened(client, a, visit.id), genuine("impostor"))
        assert outcome["outcome"] == "no_match"
    read_before = faces.poses_read
    outcome, steps = await follow(client, await opened(client, a, visit.id), genuine())
    assert steps == [] and outcome["outcome"] == "refused" and outcome["code"] == "patient_face_cap"
    assert outcome["next"] == "use_code" and outcome["retry_after"] > 0
    assert faces.poses_read == read_before


async def test_a_frame_over_the_limit_closes_the_connection_and_counts(client, ctx, tenants, faces):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    path = await opened(client, a, visit.id)
    async with client.ws_connect(path + "/ws") as socket:
        assert (await socket.receive_json())["type"] == "step"
        await socket.send_bytes(b"\xff" * (600 * 1024))
        closing = await socket.receive(timeout=10)
        while closing.type is aiohttp.WSMsgType.TEXT:  # the outcome may come before the close
            closing = await socket.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert faces.poses_read == 0
    events = await settled_events(client, a, visit.id)
    assert events[-1]["detail"] == "not_live:abandoned"


async def test_frames_after_the_decision_change_nothing(client, ctx, tenants, faces):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    path = await opened(client, a, visit.id)
    async with client.ws_connect(path + "/ws") as socket:
        while (message := await socket.receive_json(timeout=10))["type"] == "step":
            await asyncio.sleep(PAGE_INTERVAL_S)  # the page's pace (the decision waits for the step's time limit)
            await socket.send_bytes(pose_frame("asel", "straight"))  # a still photo: not live
        assert message["outcome"] == "not_live"
        read = faces.poses_read
        await socket.send_bytes(pose_frame("asel", "straight"))
        assert (await socket.receive(timeout=10)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert faces.poses_read == read
    async with client.ws_connect(path + "/ws") as again:  # nor a new connection to the finished session
        assert (await again.receive_json())["outcome"] == "unavailable"
    assert (await visit_json(client, a, visit.id))["state"] == "scheduled"


async def test_sessions_are_refused_where_a_face_frame_would_be(client, ctx, tenants):
    a, b = tenants
    await enrol(ctx, a)
    online = await add_visit(ctx, a, mode=VisitMode.ONLINE)
    assert (await open_session(client, a, online.id)).status == 409
    tomorrow = await add_visit(ctx, a, start_in=dt.timedelta(days=1))
    response = await open_session(client, a, tomorrow.id)
    assert response.status == 409 and (await response.json())["code"] == "outside_window"
    mine = await add_visit(ctx, a)
    assert (await open_session(client, b, mine.id)).status == 404  # another clinic's visit: as if absent
    assert (await open_session(client, a, mine.id, key="admin")).status == 403
    others = await add_visit(ctx, a, doctor_id=a.other_doctor_id)
    bound = await client.post(f"{API}/visits/{others.id}/capture-sessions",
                              headers={"Authorization": f"Bearer {a.doctor_key}"})
    assert bound.status == 404  # a key bound to doctor one: doctor two's visit is not there
    unenrolled = await add_visit(ctx, a, patient=1)
    response = await open_session(client, a, unenrolled.id)
    assert response.status == 409 and (await response.json())["code"] == "not_enrolled"


async def test_the_single_frame_route_is_refused_unless_the_operator_enables_it(client, ctx, tenants, faces):
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    response = await client.post(f"{API}/visits/{visit.id}/face", data=b"FAKE:face:asel",
                                  headers={**a.h("webcam"), "Content-Type": "image/jpeg"})
    body = await response.json()
    assert response.status == 409 and body["code"] == "single_frame_face_disabled"
    assert "capture-sessions" in body["detail"] and faces.frames_seen == 0


def test_a_fixed_challenge_and_the_stills_thresholds_are_refused_in_production():
    from core.config import Settings

    with pytest.raises(ValueError, match="RASTAU_CAPTURE_CHALLENGE"):
        Settings(_env_file=None, mode="production", capture_challenge=CHALLENGE)
    with pytest.raises(ValueError, match="RASTAU_LIVENESS_STILLS"):
        Settings(_env_file=None, mode="production", liveness_stills=True)


async def test_another_sites_page_cannot_use_the_socket(client, ctx, tenants, faces):
    """A page on another origin that got hold of a link (a referrer, a shared screen) cannot stream to it."""
    a, _ = tenants
    await enrol(ctx, a)
    visit = await add_visit(ctx, a)
    path = await opened(client, a, visit.id)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(path + "/ws", headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    async with client.ws_connect(path + "/ws", headers={"Origin": str(client.make_url("/")).rstrip("/")}) as socket:
        assert (await socket.receive_json())["type"] == "step"  # the session was not used up by the refusal
    assert (await settled_events(client, a, visit.id))[-1]["detail"] == "not_live:abandoned"
