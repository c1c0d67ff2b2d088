"""The Bot API stand-in itself: what a real aiogram Bot (or a raw HTTP client) sees for each fault it injects."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import BufferedInputFile, InlineKeyboardButton, InlineKeyboardMarkup

from devkit.botapi import BotApiStandIn

ROOT = Path(__file__).parents[2]
TOKEN = "777:standin-self-test"


@pytest.fixture
async def api():
    standin = BotApiStandIn(slow_seconds=2)
    standin.add_bot(TOKEN)
    await standin.start()
    yield standin
    await standin.stop()


@asynccontextmanager
async def bot_for(api: BotApiStandIn, token: str = TOKEN):
    bot = Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(api.base_url), timeout=0.5))
    try:
        yield bot
    finally:
        await bot.session.close()


@asynccontextmanager
async def running(api: BotApiStandIn):
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
async def bot(api):
    async with bot_for(api) as b:
        yield b


@pytest.mark.parametrize("kind, error", [
    ("429", TelegramRetryAfter), ("500", TelegramServerError), ("403", TelegramForbiddenError),
    ("400", TelegramBadRequest), ("slow", TelegramNetworkError), ("drop", TelegramNetworkError)])
async def test_each_fault_reaches_aiogram_as_telegram_would_send_it_and_is_not_delivered(api, bot, kind, error):
    api.fail_next(1, kind, retry_after=3)
    with pytest.raises(error) as raised:
        await bot.send_message(11, "first")
    if kind == "429":
        assert raised.value.retry_after == 3
    await bot.send_message(11, "second")
    assert [m.text for m in api.messages_to(11)] == ["second"]
    assert api.requests_to(11) == 2 and [a.outcome for a in api.requests] == [kind, "ok"]


async def test_a_fault_for_one_method_leaves_the_others_alone(api, bot):
    api.fail_next(1, "500", method="sendDocument")
    await bot.send_message(12, "text goes through")
    with pytest.raises(TelegramServerError):
        await bot.send_document(12, BufferedInputFile(b"a,b\n", "digest.csv"))
    sent = await bot.send_document(12, BufferedInputFile(b"a,b\n", "digest.csv"), caption="CSV")
    assert sent.document.file_name == "digest.csv" and sent.caption == "CSV"
    assert [(m.method, m.document) for m in api.messages_to(12)] == [
        ("sendMessage", None), ("sendDocument", ("digest.csv", b"a,b\n"))]


async def test_a_blocked_user_gets_403_for_every_send(api, bot):
    api.block_user(13)
    for _ in range(2):
        with pytest.raises(TelegramForbiddenError, match="blocked by the user"):
            await bot.send_message(13, "hello?")
    assert api.messages_to(13) == [] and api.requests_to(13) == 2


async def test_replies_parse_as_real_messages(api, bot):
    keyboard = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="Yes", callback_data="y")]])
    first = await bot.send_message(14, "were you there?", reply_markup=keyboard)
    second = await bot.send_message(14, "again")
    edited = await bot.edit_message_text("answered", chat_id=14, message_id=first.message_id)
    assert second.message_id > first.message_id and edited.message_id == first.message_id
    assert first.chat.id == 14 and first.reply_markup.inline_keyboard[0][0].callback_data == "y"
    assert api.messages_to(14)[0].reply_markup == {"inline_keyboard": [[{"text": "Yes", "callback_data": "y"}]]}
    assert (await bot.get_me()).id == 777


async def test_json_bodies_and_unknown_tokens(api):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api.base_url}/bot{TOKEN}/sendMessage",
                             json={"chat_id": 15, "text": "raw", "reply_markup": {"inline_keyboard": []}}) as r:
            body = await r.json()
        assert body["ok"] and body["result"]["text"] == "raw"
        async with http.post(f"{api.base_url}/bot999:other/getMe") as r:
            assert r.status == 401
    assert api.messages_to(15)[0].reply_markup == {"inline_keyboard": []}


async def test_another_token_is_refused_once_bots_are_registered(api):
    async with bot_for(api, "999:other") as stranger:
        with pytest.raises(TelegramUnauthorizedError):
            await stranger.get_me()


async def test_long_polling_waits_for_updates_and_forgets_confirmed_ones(api, bot):
    waiting = asyncio.create_task(bot.get_updates(timeout=5, request_timeout=10))
    await asyncio.sleep(0.1)
    api.push_update({"message": {"message_id": 1, "date": 0, "chat": {"id": 16, "type": "private"},
                                 "text": "hi"}})
    first = await asyncio.wait_for(waiting, 2)
    assert [u.message.text for u in first] == ["hi"]
    started = time.monotonic()
    assert await bot.get_updates(offset=first[-1].update_id + 1, timeout=1, request_timeout=10) == []
    assert time.monotonic() - started >= 1


async def test_enforced_limits_answer_429_and_rates_are_measured():
    api = BotApiStandIn(enforce_limits=True, limit_global=3, limit_per_chat=1)
    async with running(api), bot_for(api) as bot:
        await bot.send_message(21, "one")
        with pytest.raises(TelegramRetryAfter) as raised:
            await bot.send_message(21, "same chat, same second")
        await bot.send_message(22, "two")
        await bot.send_message(23, "three")
        with pytest.raises(TelegramRetryAfter):
            await bot.send_message(24, "fourth in a second")
    assert raised.value.retry_after == 1 and api.limit_violations == 2
    assert api.max_rate() == 3 and api.max_rate_per_chat() == 1


async def test_random_faults_repeat_with_the_seed():
    async def outcomes(seed):
        api = BotApiStandIn()
        api.random_faults(seed, p429=0.2, p500=0.2, pdrop=0.1)
        async with running(api), bot_for(api) as bot:
            for i in range(40):
                try:
                    await bot.send_message(30 + i, "x")
                except (TelegramRetryAfter, TelegramServerError, TelegramNetworkError):
                    pass
        assert len(api.sent) == sum(a.outcome == "ok" for a in api.requests)
        return [a.outcome for a in api.requests]

    first = await outcomes(7)
    assert first == await outcomes(7) and {"ok", "429", "500", "drop"} <= set(first)


def test_standalone_prints_what_it_receives_and_turns_typed_lines_into_updates():
    proc = subprocess.Popen([sys.executable, "-m", "devkit.botapi", "--port", "0", "--user-id", "55"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[-1]
        proc.stdin.write("/start\n")
        proc.stdin.flush()

        async def talk():
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{url}/bot1:x/getUpdates", data={"timeout": "5"}) as r:
                    updates = (await r.json())["result"]
                await http.post(f"{url}/bot1:x/sendMessage", data={"chat_id": "55", "text": "Сәлем"})
            return updates

        updates = asyncio.run(talk())
    finally:
        proc.terminate()
        printed, _ = proc.communicate(timeout=10)
    assert updates[0]["message"]["text"] == "/start" and updates[0]["message"]["from"]["id"] == 55
    assert "sendMessage → chat 55: Сәлем" in printed
