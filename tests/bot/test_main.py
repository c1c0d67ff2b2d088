"""``python -m bot`` as an operator runs it."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

import bot.__main__ as bot_entry
from bot.app import WEBHOOK_PATH
from core.clock import SystemClock
from core.config import MissingSecrets
from core.db.engine import create_engine
from core.db.migrate import SchemaNotCurrent, upgrade_to_head
from core.db.uow import UnitOfWorkFactory
from core.services import Context, registry, visits
from tests.conftest import VALID_IINS, log_as_the_product
from tests.conftest import test_settings as make_settings

ROOT = Path(__file__).parents[2]


def bot_env(**settings: str) -> dict[str, str]:
    """This process's environment without any RASTAU_ setting of the developer's, plus the test's own."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RASTAU_")}, **settings}


@pytest.fixture
def bot_main(monkeypatch, tmp_path):
    """``python -m bot``'s main() in this process, with only the test's RASTAU_ settings (and no .env): a start
    that must refuse is about main's checks, not about starting Python (test_starts_polls… runs the process)."""
    def run_main(**settings: str) -> None:
        for name in [name for name in os.environ if name.startswith("RASTAU_")]:
            monkeypatch.delenv(name)
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)
        try:
            bot_entry.main()
        finally:
            log_as_the_product()
    return run_main


def test_production_without_secrets_refuses_and_names_them(tmp_path, bot_main):
    with pytest.raises(MissingSecrets) as refused:
        bot_main(RASTAU_MODE="production", RASTAU_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/x.db")
    assert "RASTAU_BOT_TOKEN" in str(refused.value) and "RASTAU_CODE_HMAC_KEY" in str(refused.value)


def test_refuses_an_unmigrated_database_and_says_how_to_fix_it(tmp_path, bot_main):
    with pytest.raises(SchemaNotCurrent, match="rastau migrate"):
        bot_main(RASTAU_MODE="dev", RASTAU_BOT_TOKEN="1:x", RASTAU_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/empty.db")


@pytest.mark.slow  # the bot as a process
async def test_starts_polls_and_stops_gracefully(tmp_path, standin):
    url = f"sqlite+aiosqlite:///{tmp_path}/bot.db"
    engine = create_engine(url)
    await upgrade_to_head(engine)
    await engine.dispose()
    env = bot_env(RASTAU_MODE="dev", RASTAU_BOT_TOKEN="424242:test", RASTAU_DATABASE_URL=url,
                  RASTAU_TELEGRAM_API_BASE=standin.base_url)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", cwd=ROOT, env=env,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(200):
            if any(method == "getupdates" for method, _ in standin.calls):
                break
            await asyncio.sleep(0.1)
        assert any(method == "getupdates" for method, _ in standin.calls), "the bot never polled"
        menus = {p.get("language_code") for m, p in standin.calls if m == "setmycommands"}
        assert {"kk", "ru"} <= menus, "the command menu is published in both languages"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert "424242:test" not in stderr.decode(), "the token is never logged"


async def _run_until(settings, arrived, timeout: float = 30.0) -> None:
    """python -m bot's run() in this process until ``arrived()`` holds, then SIGTERM as an operator stops it.
    The signal is sent only once the bot has done something (the handlers are installed before any of it):
    should it never get there, the run is cancelled instead, so a failure cannot kill the test process."""
    running = asyncio.create_task(bot_entry.run(settings))
    for _ in range(int(timeout * 10)):
        if arrived() or running.done():
            break
        await asyncio.sleep(0.1)
    if running.done():
        await running  # it stopped by itself: its exception is the failure
        pytest.fail("the bot stopped before it was asked to")
    if not arrived():
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        pytest.fail(f"nothing arrived within {timeout} s")
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, 30)


async def test_a_restart_under_the_same_dispatcher_id_sends_what_the_killed_run_held_at_once(tmp_path, standin,
                                                                                             capsys):
    """A claim whose dispatcher died would wait out its 60 s lease; under RASTAU_DISPATCHER_ID the restarted bot
    knows the claim is its own, takes it back at start and sends the patient's code straight away."""
    url = f"sqlite+aiosqlite:///{tmp_path}/bot.db"
    engine = create_engine(url)
    await upgrade_to_head(engine)
    ctx = Context.build(make_settings(url), UnitOfWorkFactory(engine), SystemClock())
    clinic = await registry.create_clinic(ctx, "Emhana")
    doctor = await registry.add_doctor(ctx, clinic.id, "Doctor", "+77010000001")
    patient = (await registry.upsert_patient(ctx, clinic.id, VALID_IINS[0], "Patient", "+77050000001")).patient
    async with ctx.uow() as uow:
        await uow.patients.set_chat(patient.phone, 5150)
        await uow.commit()
    await visits.register_visit(ctx, clinic_id=clinic.id, doctor_id=doctor.id, patient_id=patient.id,
                                start=ctx.clock.now() + dt.timedelta(minutes=5), duration=dt.timedelta(minutes=20),
                                mode="in_person", service_code="A01")  # its code is due now
    async with ctx.uow() as uow:  # the run that was killed had claimed it for a minute
        assert len(await uow.outbox.claim_due(ctx.clock.now(), "bot-a", dt.timedelta(seconds=60), 10)) == 1
        await uow.commit()
    await engine.dispose()

    settings = make_settings(url, bot_token="424242:test", telegram_api_base=standin.base_url, dispatcher_id="bot-a")
    await _run_until(settings.require_secrets(bot=True, signing=True), lambda: standin.messages_to(5150))
    logs = capsys.readouterr().err
    assert [m.method.lower() for m in standin.messages_to(5150)] == ["sendmessage"], logs[-2000:]
    assert "released claims left by a previous run" in logs and "bot-a" in logs


async def test_webhook_mode_registers_its_hook_and_answers_only_updates_carrying_the_secret(tmp_path, standin,
                                                                                            unused_tcp_port):
    """RASTAU_BOT_MODE=webhook: the bot tells Telegram where to post and with which secret, serves that path, and
    a post without the secret reaches no handler."""
    url = f"sqlite+aiosqlite:///{tmp_path}/bot.db"
    engine = create_engine(url)
    await upgrade_to_head(engine)
    await engine.dispose()
    settings = make_settings(url, bot_token="424242:test", telegram_api_base=standin.base_url, bot_mode="webhook",
                             webhook_port=unused_tcp_port, webhook_url="https://bot.example.kz/",
                             webhook_secret="s3cret-" + "x" * 24).require_secrets(bot=True, signing=True)
    hook = f"http://127.0.0.1:{unused_tcp_port}{WEBHOOK_PATH}"
    user = {"id": 7001, "is_bot": False, "first_name": "Aigerim", "language_code": "kk"}
    update = {"update_id": 1, "message": {"message_id": 1, "date": 1_780_000_000, "chat": {"id": 7001,
              "type": "private"}, "from": user, "text": "/start", "entities": [
                  {"type": "bot_command", "offset": 0, "length": 6}]}}
    answers: list[int] = []

    async def post_updates() -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):  # until the webhook listens
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.post(hook, json={**update, "update_id": 2}) as refused:
                        answers.append(refused.status)
                        break
                await asyncio.sleep(0.1)
            async with session.post(hook, json=update, headers={
                    "X-Telegram-Bot-Api-Secret-Token": settings.webhook_secret.get_secret_value()}) as accepted:
                answers.append(accepted.status)

    posting = asyncio.create_task(post_updates())
    await _run_until(settings, lambda: standin.messages_to(7001))
    await posting
    assert answers == [401, 200]
    [registered] = [params for method, params in standin.calls if method == "setwebhook"]
    assert registered["url"] == "https://bot.example.kz" + WEBHOOK_PATH
    assert registered["secret_token"] == settings.webhook_secret.get_secret_value()
    assert [m.method.lower() for m in standin.messages_to(7001)] == ["sendmessage"]
    assert "Сәлеметсіз бе" in standin.messages_to(7001)[0].text
