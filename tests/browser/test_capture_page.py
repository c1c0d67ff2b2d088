"""The capture page in a real browser: Debian's chromium, driven by playwright (executable_path, never `playwright
install`), its fake camera fed from .y4m clips built here from devkit.liveness_clips' genuine and attack
sequences, against a real `python -m server` with real face workers. A genuine clip verifies the visit face_live; a
photo tilted toward each asked side is not_live; in Kazakh and in Russian; screenshots under the test's tmp dir.
One playwright driver and one chromium for the test, each language's page in a fresh context of its own. The fake
camera's file is a launch argument, but Chromium opens it each time a page starts the camera: it is a symlink the
test points at each round's clip before that round's pages open."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest

from core.cli import main as rastau
from core.liveness import Pose
from devkit.liveness_clips import Shot, genuine_clip, photo_clip
from tests.commands import run_command_async
from tests.server.test_real_server import (
    READY_TIMEOUT_S,
    enrolled_patient,
    free_port,
    running_server,
    server_env,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
CHROMIUM = Path("/usr/bin/chromium")
CHALLENGE = (Pose.STRAIGHT, Pose.LEFT, Pose.STRAIGHT, Pose.RIGHT, Pose.STRAIGHT)
FPS = 10
HOLD_S = 2.0  # each pose held this long in the clip: a patient following the page, well within a step's limit


def write_y4m(path: Path, clip: list[tuple[float, bytes]], frames_per_step: int) -> Path:
    """YUV4MPEG2, 640×480 4:2:0: each step's first picture held HOLD_S, in the clip's order (Chromium loops it)."""
    pictures = [cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) for _, jpeg in clip]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W640 H480 F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for step in range(0, len(pictures), frames_per_step):
            picture = cv2.resize(pictures[step], (640, 480))
            yuv = cv2.cvtColor(picture, cv2.COLOR_BGR2YUV_I420).tobytes()
            for _ in range(int(HOLD_S * FPS)):
                out.write(b"FRAME\n" + yuv)
    return path


class Camera:
    """Debian's chromium, started on first use, whose fake camera plays the clip last shown (Chromium loops it) to
    every page that starts the camera after that: the camera's file is a symlink, replaced atomically."""

    def __init__(self, playwright, folder: Path):
        self._playwright, self._link, self._browser = playwright, folder / "camera.y4m", None

    async def showing(self, clip: Path):
        """The browser, its camera now playing ``clip`` (to pages opened from now on: none may be open)."""
        fresh = self._link.with_name("camera.y4m.next")
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(clip)
        os.replace(fresh, self._link)
        if self._browser is None:
            self._browser = await self._playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={self._link}"])
        return self._browser

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.close()


@contextlib.asynccontextmanager
async def chromium_with_camera(playwright, folder: Path):
    """One chromium for the whole test (see Camera), closed after the block."""
    camera = Camera(playwright, folder)
    try:
        yield camera
    finally:
        await camera.close()


async def capture_in_browser(browser, url: str, shot: Path) -> str:
    page = await browser.new_page(viewport={"width": 1000, "height": 1100})  # in a new context of its own
    try:
        await page.goto(url)
        await page.click("#start")
        await page.wait_for_selector("body[data-outcome]", timeout=90_000)
        await page.screenshot(path=str(shot), full_page=True)
        return await page.evaluate("document.body.dataset.outcome + '|' + document.body.innerText")
    finally:
        await page.close()


async def clinic_with_key(env: dict, cwd: Path, label: str) -> str:
    """The operator's commands, run in this process (tests/server/test_real_server.py runs the installed script):
    a migrated database, clinic 1 with doctor 1, and a clinic_system + webcam key."""
    settings = {name: value for name, value in env.items() if name.startswith("RASTAU_")}

    async def command(*args: str) -> str:
        done = await run_command_async(rastau, "rastau", settings, *args, cwd=cwd)
        assert done.returncode == 0, done.stderr
        return done.stdout
    await command("migrate")
    await command("add-clinic", "Polyclinic No. 5")
    await command("add-doctor", "--clinic", "1", "--name", "Aidos Seitkali", "--phone", "8 701 111 22 33")
    printed = await command("add-api-key", "--clinic", "1", "--scope", "clinic_system", "--scope", "webcam",
                            "--label", label)
    return next(word for word in printed.split() if word.startswith("rk_"))


def write_clips(folder: Path) -> dict[str, Path]:
    """The tilted print's clip and the live head's, from one seeded random sequence."""
    rng = random.Random(11)
    tilted = write_y4m(folder / "tilted.y4m", photo_clip(CHALLENGE, Shot("obama/obama1.jpg"), rng, motion="tilted"), 3)
    genuine = write_y4m(folder / "genuine.y4m", genuine_clip(CHALLENGE, "obama", rng), 3)
    return {"tilted": tilted, "genuine": genuine}


async def capture_round(camera: Camera, tmp_path: Path, names: tuple[str, ...], clips: asyncio.Task[dict[str, Path]],
                        **settings: str) -> dict:
    """A real server on a fresh database; for each named clip (from ``clips``, awaited only once the server is
    ready: they are made while it starts) the camera showing it, and for each language a visit, a capture session,
    the page, and the visit as the API then shows it."""
    tmp_path.mkdir()
    port = free_port()
    env = server_env(tmp_path, RASTAU_SERVER_PORT=str(port), RASTAU_SINGLE_FRAME_FACE="0",
                     RASTAU_CAPTURE_CHALLENGE=",".join(p.value for p in CHALLENGE), **settings)
    key = await clinic_with_key(env, tmp_path, "desk")
    base, h = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    seen: dict = {}
    async with running_server(env, tmp_path) as ended, aiohttp.ClientSession() as session:
        await wait_for(session, f"{base}/readyz", 200, READY_TIMEOUT_S)
        patient = await enrolled_patient(session, base, h, language="kk")
        for name in names:
            browser = await camera.showing((await clips)[name])
            for lang in ("kk", "ru"):
                start = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
                async with session.post(f"{base}/api/v1/visits", headers=h, json={
                        "doctor_id": 1, "patient_id": patient, "start": start, "duration_minutes": 20,
                        "service_code": "A01", "mode": "in_person"}) as r:
                    visit = (await r.json())["id"]
                async with session.post(f"{base}/api/v1/visits/{visit}/capture-sessions", headers=h) as r:
                    assert r.status == 201
                    url = (await r.json())["url"]
                shot = tmp_path / f"capture-{name}-{lang}.png"
                outcome = await capture_in_browser(browser, f"{url}?lang={lang}", shot)
                assert shot.stat().st_size > 10_000
                async with session.get(f"{base}/api/v1/visits/{visit}", headers=h) as r:
                    seen[(name, lang)] = (outcome, await r.json())
    assert ended.returncode == 0, ended.err[-3000:]
    assert key not in ended.err + ended.out and url.rsplit("/", 1)[1] not in ended.err + ended.out
    return seen


THANKS = {"kk": "Рахмет! Қабылдауыңыз расталды.", "ru": "Спасибо! Ваш приём подтверждён."}
NOT_RECOGNISED = {"kk": "Басыңыздың бұрылғаны танылмады.", "ru": "Повороты головы не распознаны."}


# Skipped without chromium on a developer's machine; under CI (CI=true) a missing browser fails, as a missing
# PostgreSQL does, so the browser test cannot silently stop running.
@pytest.mark.skipif(not CHROMIUM.exists() and os.environ.get("CI") != "true",
                    reason="needs Debian's chromium (scripts/bootstrap installs it)")
async def test_the_page_verifies_a_live_head_and_refuses_a_tilted_photo_in_kk_and_ru(tmp_path):
    """The tilted print meets the measured thresholds (production's). The fixture photos of real heads turn only
    ~10-20°, under those thresholds, so the genuine clip runs against RASTAU_LIVENESS_STILLS (tests and dev only;
    docs/liveness.md): what it proves is the whole path (camera, page, socket, workers, tracker, match, evidence)."""
    pytest.importorskip("playwright")
    from playwright.async_api import async_playwright

    clips = asyncio.create_task(asyncio.to_thread(write_clips, tmp_path))  # while the first server starts
    async with async_playwright() as playwright, chromium_with_camera(playwright, tmp_path) as camera:
        refused = await capture_round(camera, tmp_path / "measured", ("tilted",), clips)
        verified = await capture_round(camera, tmp_path / "stills", ("genuine",), clips, RASTAU_LIVENESS_STILLS="1")
    for lang in ("kk", "ru"):
        page, visit = refused[("tilted", lang)]
        assert page.startswith("not_live|") and NOT_RECOGNISED[lang] in page, page
        assert visit["state"] == "scheduled" and visit["events"][-1]["detail"].startswith("not_live:")
        page, visit = verified[("genuine", lang)]
        assert page.startswith("match|") and THANKS[lang] in page, page
        assert visit["verified_by"] == "face_live" and visit["evidence_strength"] == "live"
