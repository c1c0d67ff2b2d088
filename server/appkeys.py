"""Typed application and request keys: what the handlers may take from the app and the request."""
from __future__ import annotations

from typing import Protocol

from aiohttp import web

from core.config import Settings
from core.liveness import PoseReading
from core.services import Context
from core.services.api_keys import ApiPrincipal
from server.face.pipeline import FaceAnalysis
from server.metrics import Metrics


class FaceAnalyser(Protocol):
    """What the server needs from the face workers (the real :class:`server.face.pool.FacePool` or a test fake)."""

    @property
    def ready(self) -> bool: ...

    async def analyse(self, data: bytes) -> FaceAnalysis: ...

    async def read_pose(self, data: bytes, *, encode: bool) -> PoseReading: ...


SETTINGS = web.AppKey("settings", Settings)
CTX = web.AppKey("ctx", Context)
FACE_POOL = web.AppKey("face_pool", FaceAnalyser)
METRICS = web.AppKey("metrics", Metrics)

PRINCIPAL = web.RequestKey("principal", ApiPrincipal)
REQUEST_ID = web.RequestKey("request_id", str)
