"""Patients: create or update by IIN, consent, face enrolment (1-5 photos, all-or-nothing), revocation.

Every call acts as its key (``Caller.of_key``): the key is named in the change and the audit log, and a key bound
to one doctor sees only that doctor's patients (404 for anyone else) and may not enrol, revoke or move a phone (403).
"""
from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import Field

from core.face_references import MAX_REFERENCES
from core.model import Patient
from core.services import registry
from core.services.api_keys import Scope
from server.appkeys import CTX, FACE_POOL, SETTINGS
from server.auth import caller, principal, requires
from server.bodies import IIN_PATTERN, NAME_PATTERN, NAME_RULE, Body, id_segment, path_id, read_bounded, read_json
from server.face.image import ImageRejected
from server.problems import Problem, image_problem

API = "/api/v1"
PATIENT = API + "/patients/" + id_segment("patient_id")
routes = web.RouteTableDef()


class PatientIn(Body):
    iin: str = Field(max_length=32, description="12-digit IIN (ЖСН/ИИН); its check digit is verified too",
                     json_schema_extra={"pattern": IIN_PATTERN})
    full_name: str = Field(min_length=1, max_length=200, description=NAME_RULE,
                           json_schema_extra={"pattern": NAME_PATTERN})
    phone: str = Field(min_length=1, max_length=32, description="Kazakhstan mobile number, any common spelling")
    language: Literal["kk", "ru"] | None = Field(
        default=None, description="left out or null: a new patient gets ru, an existing one keeps the language "
                                  "on record")


class ConsentIn(Body):
    recorded_by: str = Field(min_length=1, max_length=200, description="who took the consent (staff name or id)")


def patient_json(patient: Patient) -> dict[str, object]:
    """No IIN in answers: the clinic system sent it and knows it; responses get logged by proxies."""
    return {"id": patient.id, "full_name": patient.full_name, "phone": patient.phone,
            "language": patient.language.value, "chat_linked": patient.chat_id is not None,
            "consent_recorded_at": patient.consent_at.isoformat() if patient.consent_at else None,
            "consent_recorded_by": patient.consent_by}


@routes.post(API + "/patients")
@requires(Scope.CLINIC_SYSTEM)
async def upsert_patient(request: web.Request) -> web.Response:
    body = await read_json(request, PatientIn)
    result = await registry.upsert_patient(request.app[CTX], principal(request).clinic_id, body.iin,
                                           body.full_name, body.phone, body.language, caller=caller(request))
    return web.json_response({**patient_json(result.patient), "created": result.created},
                             status=201 if result.created else 200)


@routes.post(PATIENT + "/consent")
@requires(Scope.CLINIC_SYSTEM)
async def record_consent(request: web.Request) -> web.Response:
    patient_id = path_id(request, "patient_id", "patient")
    body = await read_json(request, ConsentIn)
    patient = await registry.record_consent(request.app[CTX], principal(request).clinic_id, patient_id,
                                            body.recorded_by, caller=caller(request))
    return web.json_response(patient_json(patient))


@routes.put(PATIENT + "/face")
@requires(Scope.CLINIC_SYSTEM)
async def enrol_face(request: web.Request) -> web.Response:
    """Every photo is analysed before anything is stored: one bad photo rejects the whole enrolment."""
    patient_id = path_id(request, "patient_id", "patient")
    await registry.check_enrolment_allowed(request.app[CTX], principal(request).clinic_id, patient_id,
                                           caller=caller(request))
    images = await _read_images(request)
    analyses = await asyncio.gather(*(request.app[FACE_POOL].analyse(image) for image in images),
                                    return_exceptions=True)
    del images
    bad, encodings = [], []
    for number, analysis in enumerate(analyses, start=1):
        if isinstance(analysis, ImageRejected):
            raise image_problem(analysis, f"image {number} of {len(analyses)}")
        if isinstance(analysis, BaseException):
            raise analysis
        if analysis.outcome != "ok":
            bad.append(f"image {number} shows {'no face' if analysis.outcome == 'no_face' else 'several faces'}")
        else:
            assert analysis.encoding is not None, "an ok analysis carries its encoding"
            encodings.append(analysis.encoding)
    if bad:
        raise Problem(422, "enrolment_images_rejected", "; ".join(bad) + ". Each reference photo must show "
                      "exactly one face, the patient's; nothing was enrolled.")
    count = await registry.enrol_face(request.app[CTX], principal(request).clinic_id, patient_id,
                                      encodings, caller=caller(request))
    return web.json_response({"enrolled": count})


async def _read_images(request: web.Request) -> list[bytes]:
    if request.content_type != "multipart/form-data":
        raise Problem(415, "unsupported_media_type", "send the photos as multipart/form-data, one 'image' part "
                      f"per photo (1-{MAX_REFERENCES})")
    try:
        return await _read_parts(request)
    except (HttpProcessingError, ValueError):  # aiohttp's verdict on a malformed multipart body
        raise Problem(422, "invalid_multipart", "the multipart/form-data body is malformed; send each photo as a "
                      "part named 'image'") from None


async def _read_parts(request: web.Request) -> list[bytes]:
    limit = request.app[SETTINGS].face_max_bytes
    reader = await request.multipart()
    images: list[bytes] = []
    while (part := await reader.next()) is not None:
        if isinstance(part, MultipartReader):  # a part that is itself multipart: no name, no bytes of its own
            raise Problem(422, "invalid_body", "a nested multipart body is not a photo; send each photo as a part "
                          "named 'image'", field="image")
        if part.name != "image":
            raise Problem(422, "invalid_body", f"unexpected form field '{part.name}'; send each photo as a part "
                          "named 'image'", field=str(part.name))
        if len(images) == MAX_REFERENCES:
            raise Problem(422, "too_many_images", f"send at most {MAX_REFERENCES} reference photos", field="image")
        images.append(await read_bounded(part.read_chunk, limit, f"image {len(images) + 1}"))
    if not images:
        raise Problem(422, "invalid_body", f"send 1-{MAX_REFERENCES} photos as multipart parts named 'image'",
                      field="image")
    return images


@routes.delete(PATIENT + "/face")
@requires(Scope.CLINIC_SYSTEM)
async def revoke_face(request: web.Request) -> web.Response:
    patient_id = path_id(request, "patient_id", "patient")
    count = await registry.revoke_face(request.app[CTX], principal(request).clinic_id, patient_id,
                                       caller=caller(request))
    return web.json_response({"revoked": count})
