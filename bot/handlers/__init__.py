"""One router per feature, each built by a factory so every Dispatcher gets fresh router instances."""
from __future__ import annotations

from aiogram import Router

from bot.handlers import admin, common, doctor, patient, start


def build_routers() -> list[Router]:
    """Order matters: ``common`` holds the catch-all answers and comes last."""
    return [start.build_router(), patient.build_router(), doctor.build_router(), admin.build_router(),
            common.build_router()]
