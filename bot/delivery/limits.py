"""Telegram's send limits: a global pace (30 msg/s) and a per-chat pace (1 msg/s), plus pauses on 429."""
from __future__ import annotations

import asyncio
import time


class SendPacer:
    """Spaces send starts evenly: at most ``global_rate`` per second overall, ``chat_rate`` per chat.

    Even spacing (not bursts) keeps every sliding one-second window at or under the cap, which is what
    Telegram measures. A 429's ``retry_after`` pauses all sending, since Telegram doesn't say which limit hit.
    """

    def __init__(self, global_rate: float, chat_rate: float, clock=time.monotonic):
        self._global_gap = 1.0 / global_rate
        self._chat_gap = 1.0 / chat_rate
        self._clock = clock
        self._next_global = 0.0
        self._next_chat: dict[int, float] = {}
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    async def wait_turn(self, chat_id: int) -> None:
        """Reserve the next slot for this chat, then sleep until it comes."""
        async with self._lock:
            now = self._clock()
            slot = max(now, self._paused_until, self._next_global, self._next_chat.get(chat_id, 0.0))
            self._next_global = slot + self._global_gap
            self._next_chat[chat_id] = slot + self._chat_gap
            if len(self._next_chat) > 10_000:  # forget chats whose pace no longer matters
                self._next_chat = {c: t for c, t in self._next_chat.items() if t > now}
        delay = slot - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        # a 429 that arrived while we slept moves us behind the pause
        while self._paused_until > self._clock():
            await asyncio.sleep(self._paused_until - self._clock())
