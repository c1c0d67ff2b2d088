"""One router per feature, each built by a factory so every Dispatcher gets fresh router instances."""
from __future__ import annotations

from aiogram import Router

from bot.handlers import admin, common, doctor, patient, record, start  # record: issue 16's /mydata, /withdraw, /unlink
from bot.handlers import web as web_dashboard  # issue 13: /web sign-in links


def build_routers() -> list[Router]:
    """Order matters: ``common`` holds the catch-all answers and comes last."""
    return [start.build_router(), patient.build_router(), doctor.build_router(), admin.build_router(),
            web_dashboard.build_router(), record.build_router(), common.build_router()]
