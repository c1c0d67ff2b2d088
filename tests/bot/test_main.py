"""``python -m bot`` as an operator runs it."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import bot.__main__ as bot_entry
from core.config import MissingSecrets
from core.db.migrate import SchemaNotCurrent
from tests.conftest import log_as_the_product

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
    import asyncio
    import signal

    from core.db.engine import create_engine
    from core.db.migrate import upgrade_to_head

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


@pytest.mark.slow  # the bot as a process
async def test_a_restart_under_the_same_dispatcher_id_sends_what_the_killed_run_held_at_once(tmp_path, standin):
    """A claim whose dispatcher died would wait out its 60 s lease; under RASTAU_DISPATCHER_ID the restarted bot
    knows the claim is its own, takes it back at start and sends the patient's code straight away."""
    import asyncio
    import datetime as dt
    import signal

    from core.clock import SystemClock
    from core.db.engine import create_engine
    from core.db.migrate import upgrade_to_head
    from core.db.uow import UnitOfWorkFactory
    from core.services import Context, registry, visits
    from tests.conftest import VALID_IINS, test_settings

    url = f"sqlite+aiosqlite:///{tmp_path}/bot.db"
    engine = create_engine(url)
    await upgrade_to_head(engine)
    ctx = Context.build(test_settings(url), UnitOfWorkFactory(engine), SystemClock())
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

    env = bot_env(RASTAU_MODE="dev", RASTAU_BOT_TOKEN="424242:test", RASTAU_DATABASE_URL=url,
                  RASTAU_TELEGRAM_API_BASE=standin.base_url, RASTAU_DISPATCHER_ID="bot-a", RASTAU_LOG_FORMAT="json")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(300):  # 30 s: half the lease the claim still had
            if standin.messages_to(5150):
                break
            await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    logs = (stdout + stderr).decode()
    assert [m.method.lower() for m in standin.messages_to(5150)] == ["sendmessage"], logs[-2000:]
    assert "released claims left by a previous run" in logs and "bot-a" in logs
