"""The real face workers behind the real endpoints, with real photos from tests/fixtures/faces.

One worker pool for the module (spawning and loading the dlib models is the slow part). The pool is not tied to
an event loop, so each test's own loop can use it. Its workers get a private TMPDIR, which must stay empty.
"""
from __future__ import annotations

import asyncio
import io
import os
import tempfile
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from core.services import registry
from server.app import create_app
from server.face.pool import FacePool
from tests.server.conftest import add_visit

pytestmark = pytest.mark.slow  # real face worker processes and photos

API = "/api/v1"
FACES = Path(__file__).parents[1] / "fixtures" / "faces"


def photo(name: str) -> bytes:
    return (FACES / name).read_bytes()


def blank_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 140, 150)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def worker_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("face-worker-tmp")


@pytest.fixture(scope="module")
def real_pool(worker_tmp):
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(worker_tmp)  # inherited by the spawned workers
    pool = FacePool(1)
    try:
        asyncio.run(pool.start())
        yield pool
    finally:
        asyncio.run(pool.close())
        if saved is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved


@pytest.fixture
async def real_client(aiohttp_client, settings, ctx, real_pool, conformance):
    app = create_app(settings, ctx=ctx, face_pool=real_pool)
    app.middlewares.insert(0, conformance.middleware())
    return await aiohttp_client(app)


def form(*names: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name in names:
        data.add_field("image", photo(name), filename=Path(name).name,
                       content_type="image/png" if name.endswith(".png") else "image/jpeg")
    return data


async def frame(client, tenant, visit_id: int, data: bytes, content_type: str = "image/jpeg"):
    return await client.post(f"{API}/visits/{visit_id}/face", data=data,
                             headers={**tenant.h("webcam"), "Content-Type": content_type})


@pytest.fixture
def no_temp_files(monkeypatch):
    """In the server's own process any temp file (even an unlinked one) fails the request, and so the test."""
    def forbidden(*_args, **_kwargs):
        raise AssertionError("a temp file was opened while handling a face request")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, forbidden)


async def test_enrol_obama_then_match_reject_and_refuse(real_client, ctx, tenants, worker_tmp, tmp_path,
                                                        no_temp_files):
    a, _ = tenants
    patient = a.patient_ids[0]
    data_files = set(tmp_path.iterdir())
    await registry.record_consent(ctx, a.clinic_id, patient, "Nurse Dana")
    enrolled = await real_client.put(f"{API}/patients/{patient}/face", headers=a.h(),
                                     data=form("obama/obama1.jpg", "obama/obama2.jpg"))
    assert enrolled.status == 200, await enrolled.text()
    assert await enrolled.json() == {"enrolled": 2}

    visit = await add_visit(ctx, a)
    decisions = {}
    for name in ("biden/biden1.jpg", "multi/two_people.jpg"):
        response = await frame(real_client, a, visit.id, photo(name))
        assert response.status == 200, (name, await response.text())
        decisions[name] = (await response.json())["decision"]
    blank = await frame(real_client, a, visit.id, blank_jpeg())
    assert decisions == {"biden/biden1.jpg": "no_match", "multi/two_people.jpg": "multiple_faces"}
    assert await blank.json() == {"decision": "no_face"}

    match = await frame(real_client, a, visit.id, photo("obama/obama3.jpg"))
    assert await match.json() == {"decision": "match"}
    assert (await (await real_client.get(f"{API}/visits/{visit.id}", headers=a.h())).json())["verified_by"] == "face"
    for name, content_type in [("edge/rgba_32bit.png", "image/png"), ("edge/obama_partial_face.jpg", "image/jpeg")]:
        edge_visit = await add_visit(ctx, a)
        response = await frame(real_client, a, edge_visit.id, photo(name), content_type)
        assert await response.json() == {"decision": "match"}, name

    assert list(worker_tmp.iterdir()) == []  # the workers wrote nothing to disk
    # the database's own files, and the key store of the patients' keys (issue 16) beside it: no image anywhere
    allowed = {tmp_path / f"{db}{suffix}" for db in ("rastau.db", "rastau.keys.db") for suffix in ("", "-wal", "-shm")}
    assert {p for p in tmp_path.iterdir()} - data_files <= allowed


async def test_enrolment_refuses_a_group_photo_naming_it(real_client, ctx, tenants):
    a, _ = tenants
    patient = a.patient_ids[1]
    await registry.record_consent(ctx, a.clinic_id, patient, "Nurse Dana")
    response = await real_client.put(f"{API}/patients/{patient}/face", headers=a.h(),
                                     data=form("biden/biden1.jpg", "multi/obama_and_biden.jpg"))
    assert response.status == 422
    assert "image 2 shows several faces" in (await response.json())["detail"]
    assert await registry.face_references(ctx, patient) == []


@pytest.mark.parametrize("data, status, code", [
    (photo("obama/obama1.jpg")[:4000], 422, "image_unreadable"),
    (b"this is a text file named photo.jpg", 415, "image_unsupported_format"),
    (b"", 422, "image_empty"),
])
async def test_broken_frames_are_clear_4xx(real_client, ctx, tenants, data, status, code, worker_tmp, no_temp_files):
    a, _ = tenants
    await registry.record_consent(ctx, a.clinic_id, a.patient_ids[0], "Nurse")
    await registry.enrol_face(ctx, a.clinic_id, a.patient_ids[0], [(0.0,) * 128])
    visit = await add_visit(ctx, a)
    response = await frame(real_client, a, visit.id, data)
    assert response.status == status, await response.text()
    assert (await response.json())["code"] == code
    assert list(worker_tmp.iterdir()) == []
