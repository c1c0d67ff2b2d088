"""Hostile and odd input gets a clear answer and never a crash; a repeated update has one effect;
the webhook refuses requests without the secret; FSM state is shared through Redis."""
from __future__ import annotations

import asyncio
import json
import uuid

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select

from bot.app import WEBHOOK_PATH, create_webhook_app
from bot.scheduling import close_windows_job
from core.config import Settings
from core.db import tables as t
from tests.bot.support import BotWorld, User, callback_answers, last_to, link, say_not_there, texts_to, visit

STICKER = {"file_id": "CAAC", "file_unique_id": "u1", "type": "regular", "width": 512, "height": 512,
           "is_animated": False, "is_video": False}
PHOTO = [{"file_id": "AgAC", "file_unique_id": "u2", "width": 90, "height": 90}]
VOICE = {"file_id": "AwAC", "file_unique_id": "u3", "duration": 3}


async def test_hostile_input_gets_clear_answers(ctx, clinic_world, world, standin):
    user, stranger = User(7801), User(7802, language_code="en")
    await link(world, user, clinic_world.p1.phone, "kk")
    cases = [
        (world.send(user, "ә ғ қ ң ө ұ ү һ і " + "🙂" * 50), "еркін мәтінді"),
        (world.send(user, "Сәлем! " * 700), "еркін мәтінді"),
        (world.send(user, "/visits ' OR 1=1; --"), "қабылдауларыңыз болған жоқ"),
        (world.send(user, "/help junk junk"), "Растау"),
        (world.send(user, "/nonsense@rastau_test_bot 123"), "Мұндай команданы білмеймін"),
        (world.send(user, "/"), "Мұндай команданы білмеймін"),
        (world.send_content(user, sticker=STICKER), "Мұндай хабарламаны түсінбеймін"),
        (world.send_content(user, photo=PHOTO), "фото, бейне немесе файл жібермеңіз"),
        (world.send_content(user, voice=VOICE), "Мұндай хабарламаны түсінбеймін"),
        (world.send_content(user, location={"latitude": 43.2, "longitude": 76.9}), "Мұндай хабарламаны түсінбеймін"),
        (world.send(stranger, "hello"), "нажмите /start"),
    ]
    for action, expected in cases:
        update = await action
        chat = update["message"]["chat"]["id"]
        assert expected in last_to(standin, chat).text, (update, last_to(standin, chat).text)
    edited = world._message(user, text="изменённый текст")
    edited["edit_date"] = edited["date"] + 5
    await world.feed({"edited_message": edited})
    assert "Өзгертілген хабарламалар" in last_to(standin, user.id).text
    for junk in ("ans:no:abc", "ans:maybe:1", "lang:en", "code:", "x" * 64, ""):
        await world.press(user, junk)
        assert callback_answers(standin)[-1] == "Бұл батырма енді жарамсыз."
    assert all(len(text) <= 4096 for text in texts_to(standin, user.id))


async def test_dispute_reason_state_handles_odd_input(ctx, clinic_world, world, standin):
    user = User(7803)
    await link(world, user, clinic_world.p2.phone, "ru")
    v = await visit(ctx, clinic_world, clinic_world.p2, -120)
    await close_windows_job(ctx)
    await say_not_there(world, user, v.id)
    await world.send_content(user, sticker=STICKER)
    assert "напишите причину текстом" in last_to(standin, user.id).text
    await world.send(user, "я " * 1500)
    assert "Сохранены только первые 1000 символов" in last_to(standin, user.id).text
    async with ctx.uow() as uow:
        assert len((await uow.visits.get(v.id)).dispute_reason) == 1000
    await world.send(user, "ещё текст")
    assert "свободный текст здесь никто не читает" in last_to(standin, user.id).text


async def test_a_repeated_update_has_one_effect(ctx, clinic_world, world, standin):
    user = User(7804)
    await link(world, user, clinic_world.p2.phone, "ru")
    v = await visit(ctx, clinic_world, clinic_world.p2, -120)
    await close_windows_job(ctx)
    update = await say_not_there(world, user, v.id)
    sent = len(standin.messages_to(user.id))
    await world.feed(json.loads(json.dumps(update)))
    assert len(standin.messages_to(user.id)) == sent
    async with ctx.uow() as uow:
        events = await uow.visits.events(v.id)
        notices = (await uow.conn.execute(select(func.count()).select_from(t.outbox).where(
            t.outbox.c.kind == "dispute_notice"))).scalar_one()
    assert [e.step for e in events].count("patient_dispute") == 1 and notices == 1


async def test_webhook_needs_the_secret_and_dedupes(ctx, clinic_world, world, standin):
    app = create_webhook_app(world.dp, world.bot, "s3cret-token")
    user = User(7805)
    update = {"update_id": 555001, "message": world._message(user, text="/help")}
    async with TestClient(TestServer(app)) as client:
        for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
            response = await client.post(WEBHOOK_PATH, json=update, headers=headers)
            assert response.status == 401
        assert standin.messages_to(user.id) == [], "no handler ran"
        async with ctx.uow() as uow:
            assert (await uow.conn.execute(select(func.count()).select_from(t.processed_updates))).scalar_one() == 0
        for _ in range(2):
            response = await client.post(WEBHOOK_PATH, json=update,
                                         headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"})
            assert response.status == 200
    assert len(standin.messages_to(user.id)) == 1 and "/start" in last_to(standin, user.id).text


async def test_two_bot_instances_share_fsm_state_through_redis(ctx, clinic_world, standin, redis_url):
    """The dispute is pressed on one instance, the reason typed to another: the second knows the visit."""
    from bot.app import create_storage
    settings = Settings(_env_file=None, redis_url=redis_url)
    storages = [create_storage(settings), create_storage(settings)]
    worlds = [BotWorld(ctx, standin, storage=s) for s in storages]
    user = User(int(uuid.uuid4().int % 10**9) + 10**9)
    try:
        await link(worlds[0], user, clinic_world.p2.phone, "ru")
        v = await visit(ctx, clinic_world, clinic_world.p2, -120)
        await close_windows_job(ctx)
        await say_not_there(worlds[0], user, v.id)
        await worlds[1].send(user, "Меня не было, я был в командировке")
        assert "пояснение добавлено" in last_to(standin, user.id).text
        async with ctx.uow() as uow:
            assert (await uow.visits.get(v.id)).dispute_reason == "Меня не было, я был в командировке"
    finally:
        for w in worlds:
            await w.dp.fsm.storage.redis.delete(*[k async for k in w.dp.fsm.storage.redis.scan_iter(
                f"fsm:*:{user.id}:*")] or ["-"])
            await w.close()
        for s in storages:
            await s.close()


async def test_a_failure_is_apologised_for_and_the_update_can_be_retried(ctx, clinic_world, world, standin,
                                                                          monkeypatch):
    from bot.handlers import patient as patient_handlers
    user = User(7806)
    await link(world, user, clinic_world.p2.phone, "ru")

    async def broken(*_args, **_kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(patient_handlers, "patient_visit_page", broken)
    update = await world.send(user, "/visits")
    assert "Извините, у нас что-то пошло не так" in last_to(standin, user.id).text
    assert "Кешіріңіз" in last_to(standin, user.id).text
    monkeypatch.undo()
    await world.feed(update)  # Telegram's redelivery is handled, not dropped as a duplicate
    assert "За последние 30 дней у вас не было приёмов" in last_to(standin, user.id).text


async def test_long_polling_gets_updates_from_the_bot_api_server(ctx, clinic_world, world, standin):
    """The default mode: the bot asks the server for updates (getUpdates) and answers over HTTP."""
    user = User(7807, language_code="kk")
    polling = asyncio.create_task(world.dp.start_polling(world.bot, handle_signals=False, close_bot_session=False,
                                                         polling_timeout=1))
    try:
        standin.push_update({"update_id": 900001, "message": world._message(user, text="/start", entities=[
            {"type": "bot_command", "offset": 0, "length": 6}])})
        for _ in range(50):
            await asyncio.sleep(0.1)
            if standin.messages_to(user.id):
                break
    finally:
        await world.dp.stop_polling()
        await polling
    greeting = last_to(standin, user.id)
    assert "Сәлеметсіз бе" in greeting.text and "Здравствуйте" in greeting.text
