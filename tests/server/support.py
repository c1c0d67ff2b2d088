"""Server test helpers: a fake face analyser, the OpenAPI conformance recorder, two clinics with keys."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from aiohttp import web
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from core.services import api_keys, registry
from server.face.image import ImageRejected
from server.face.pipeline import FaceAnalysis
from server.openapi import DOCUMENT
from tests.conftest import VALID_IINS

DOC_URI = "urn:rastau:openapi"


def fake_frame(kind: str, who: str = "") -> bytes:
    """Bytes the fake analyser understands: face/<who>, noface, multi, or anything else → unreadable."""
    return f"FAKE:{kind}:{who}".encode()


def _encoding(who: str) -> tuple[float, ...]:
    """Same person → same vector (distance 0); different people → distance √2 (far above any threshold)."""
    slot = int(hashlib.sha256(who.encode()).hexdigest(), 16) % 128
    return tuple(1.0 if i == slot else 0.0 for i in range(128))


class FakeAnalyser:
    """Stands in for the face worker pool in HTTP-layer tests (the real pool has its own test module)."""

    def __init__(self, ready: bool = True):
        self.ready = ready
        self.frames_seen = 0

    async def analyse(self, data: bytes) -> FaceAnalysis:
        self.frames_seen += 1
        if not data:
            raise ImageRejected("empty", "the image is empty (0 bytes); send a JPEG or PNG photo")
        parts = data.decode(errors="replace").split(":")
        if parts[0] != "FAKE":
            raise ImageRejected("unreadable", "the image could not be decoded")
        if parts[1] == "face":
            return FaceAnalysis("ok", _encoding(parts[2]))
        if parts[1] == "noface":
            return FaceAnalysis("no_face", None)
        if parts[1] == "multi":
            return FaceAnalysis("multiple_faces", None)
        raise ImageRejected("unsupported_format", "only JPEG and PNG images are accepted")


class Conformance:
    """Checks every response the app gives in a test against the OpenAPI document."""

    def __init__(self) -> None:
        self.registry = Registry().with_resource(DOC_URI, Resource.from_contents(
            DOCUMENT, default_specification=DRAFT202012))
        self.failures: list[str] = []
        self.checked = 0

    def _schema_validator(self, pointer: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=self.registry)

    def check(self, method: str, template: str, status: int, content_type: str, body: bytes) -> None:
        self.checked += 1
        where = f"{method} {template} → {status}"
        op = DOCUMENT["paths"].get(template, {}).get(method.lower())
        if op is None:
            if status not in (404, 405):
                self.failures.append(f"{where}: the route is not documented")
            return
        response = op["responses"].get(str(status))
        if response is None:
            self.failures.append(f"{where}: status not documented")
            return
        if status == 101:  # switching protocols (the capture WebSocket): no content to check
            return
        pointer = f"/paths/{_escape(template)}/{method.lower()}/responses/{status}"
        if "$ref" in response:
            pointer = response["$ref"][1:]
            response = DOCUMENT["components"]["responses"][pointer.rsplit("/", 1)[1]]
        content = response.get("content", {})
        if content_type not in content:
            self.failures.append(f"{where}: content type {content_type} not documented ({sorted(content)})")
            return
        if content_type.endswith("json"):
            import json

            errors = [e.message for e in self._schema_validator(
                f"{pointer}/content/{_escape(content_type)}/schema").iter_errors(json.loads(body))]
            if errors:
                self.failures.append(f"{where}: body breaks the schema: {errors[:3]}")

    def middleware(self):
        @web.middleware
        async def record(request: web.Request, handler):
            response = await handler(request)
            resource = request.match_info.route.resource
            template = resource.canonical if resource is not None else request.path
            body = getattr(response, "body", None)  # a streamed response (web.StreamResponse) has none
            body = body if isinstance(body, bytes) else b""
            self.check(request.method, template, response.status, response.content_type, body)
            return response
        return record


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Tenant:
    """A clinic with two doctors, two patients and one key per scope (plus a doctor-bound key)."""
    clinic_id: int
    doctor_id: int
    other_doctor_id: int
    patient_ids: list[int]
    keys: dict[str, str] = field(default_factory=dict)
    doctor_key: str = ""  # clinic_system + webcam, bound to doctor_id

    def h(self, scope: str = "clinic_system") -> dict:
        return bearer(self.keys[scope])


async def make_tenant(ctx, name: str, iins: list[str], phone_base: int) -> Tenant:
    clinic = await registry.create_clinic(ctx, name)
    d1 = await registry.add_doctor(ctx, clinic.id, "Doctor One", f"+7701{phone_base:07d}")
    d2 = await registry.add_doctor(ctx, clinic.id, "Doctor Two", f"+7701{phone_base + 1:07d}")
    patients = [(await registry.upsert_patient(ctx, clinic.id, iin, f"{name} patient {i}", f"+7705{phone_base + i:07d}",
                                               "kk")).patient.id for i, iin in enumerate(iins)]
    tenant = Tenant(clinic.id, d1.id, d2.id, patients)
    for scope in ("clinic_system", "webcam", "admin"):
        tenant.keys[scope] = (await api_keys.create_api_key(ctx, clinic.id, [scope], label=scope)).key
    tenant.doctor_key = (await api_keys.create_api_key(ctx, clinic.id, ["clinic_system", "webcam"], d1.id,
                                                   "doctor one's desk")).key
    return tenant


async def auditor_key(ctx, clinic_ids: list[int] | None, phone: str = "+77019990000") -> str:
    """A key of a new auditor reading ``clinic_ids`` (None: every clinic)."""
    from core.services import auditors

    auditor = await auditors.add_auditor(ctx, "Fund Auditor", phone, clinic_ids=clinic_ids or (),
                                         all_clinics=clinic_ids is None)
    return (await api_keys.create_auditor_key(ctx, auditor.id, "fund")).key


CLINIC_A_IINS, CLINIC_B_IINS = VALID_IINS[:2], VALID_IINS[2:4]


class TcpProxy:
    """A TCP forwarder that can be cut and restored on the same port: a database outage on demand."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = 0
        self._server = None
        self._writers: set = set()

    async def start(self) -> None:
        import asyncio

        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        import asyncio

        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
