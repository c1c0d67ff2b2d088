"""The OpenAPI 3.1 description of the API, served at ``/api/v1/openapi.json``.

The operation table and the response schemas are written by hand (it is the contract clinic integrators build
against); the request body schemas are generated from the pydantic models that validate the bodies, so the
document cannot promise a body the server refuses, or the reverse. tests/server check that it lists exactly the
routes the app serves, with the scopes each handler demands, and that real responses match its schemas.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

from core.codes import CodeOutcome
from core.model import EVIDENCE_STRENGTH, Language, PatientAnswer, VerificationMethod, VisitMode, VisitState
from core.services.api_keys import Scope
from core.services.faces import FaceDecision
from core.services.patient_changes import KINDS as CHANGE_KINDS
from server.bodies import Body, BodySchema
from server.routes.patients import ConsentIn, PatientIn
from server.routes.verification import CodeIn
from server.routes.visits import CancelIn, VisitIn

API = "/api/v1"
_DATETIME = {"type": "string", "format": "date-time"}
_NULLABLE_DATETIME = {"type": ["string", "null"], "format": "date-time"}
_ID = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
_YEAR_2000_2100 = r"^(20[0-9]{2}|2100)-"
_DAY = {"type": "string", "format": "date", "pattern": _YEAR_2000_2100 + r"[0-9]{2}-[0-9]{2}$"}
Json = dict[str, Any]  # a piece of the OpenAPI document
_REF_TEMPLATE = "#/components/schemas/{model}"


def _ref(name: str) -> Json:
    return {"$ref": _REF_TEMPLATE.format(model=name)}


def _json(schema: Json) -> Json:
    return {"content": {"application/json": {"schema": schema}}}


def _enum(members: Iterable[enum.Enum], *, nullable: bool = False) -> Json:
    """The values of a domain enum, so the document follows the code."""
    return {"enum": [member.value for member in members] + [None] * nullable}


def _json_body(model: type[Body], *, required: bool = True) -> Json:
    return {"required": required, **_json(_ref(model.__name__))}


def _body_schemas(*models: type[Body]) -> Json:
    """components/schemas entries for the request bodies, each model's nested definitions beside it."""
    schemas: Json = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF_TEMPLATE, schema_generator=BodySchema)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


_PROBLEM_STATUSES = {
    401: "Missing, unknown, revoked (`invalid_api_key`) or expired (`api_key_expired`) API key "
         "(see WWW-Authenticate)",
    403: "The key lacks the scope this operation needs (an auditor's key: `auditor_read_only`, on every operation "
         "but the auditors' exports)",
    404: "No such record in the key's clinic (another clinic's records are reported as missing too)",
    409: "The record's state does not allow this (e.g. an online visit and a face frame; consent missing)",
    400: "The request is not valid HTTP (e.g. a header or the request line over 8190 bytes): `bad_request`, "
         "answered before any route, quoting nothing of the request",
    405: "The path does not take this method (see Allow); HEAD is not served",
    413: "Body or image too large (bytes or pixels)",
    415: "Unsupported content type or image format",
    422: "The request is malformed; `detail` names the field",
    429: "Too many attempts; see Retry-After",
    503: "Database or face workers unavailable; retry later",
}


def _op(op_id: str, summary: str, scopes: tuple[str, ...] | None, ok: dict[int, Json], problems: tuple[int, ...],
        *, body: Json | None = None, parameters: list[Json] | None = None, description: str = "") -> Json:
    responses = {str(status): response for status, response in ok.items()}
    for status in problems:
        responses[str(status)] = {"$ref": f"#/components/responses/Problem{status}"}
    op: Json = {"operationId": op_id, "summary": summary, "responses": responses}
    if description:
        op["description"] = description
    if scopes is None:
        op["security"] = []
    else:
        op["security"] = [{"bearerAuth": [scope]} for scope in scopes]
    if body is not None:
        op["requestBody"] = body
    if parameters:
        op["parameters"] = parameters
    return op


def _ok(schema: Json, description: str = "OK", links: Json | None = None) -> Json:
    response = {"description": description, **_json(schema)}
    if links:
        response["links"] = links
    return response


def _links(parameter: str, *operation_ids: str) -> Json:
    """Where the new record's id can be used next (lets stateful API testers follow the flow)."""
    return {op: {"operationId": op, "parameters": {parameter: "$response.body#/id"}} for op in operation_ids}


_PATIENT_LINKS = _links("patient_id", "recordConsent", "enrolFace", "revokeFace")
_VISIT_LINKS = _links("visit_id", "getVisit", "cancelVisit", "verifyFace", "verifyCode", "requestCode")


_PATIENT_ID = {"name": "patient_id", "in": "path", "required": True, "schema": _ID}
_TOLD = ("The change is recorded with the key that made it and told to the patient's chat with a \"this wasn't "
         "me\" button, which reaches the clinic's admins at once.")
_BOUND_404 = "A key bound to a doctor gets 404 for a patient with no visit with its doctor."
_BOUND_403 = "A key bound to a doctor cannot do this at all: 403 `doctor_key_forbidden`."
_VISIT_ID = {"name": "visit_id", "in": "path", "required": True, "schema": _ID}
_DATE_QUERY = {"name": "date", "in": "query", "required": False, "description": "Asia/Almaty day; default today",
               "schema": _DAY}
_CS, _WEBCAM, _ADMIN = Scope.CLINIC_SYSTEM.value, Scope.WEBCAM.value, Scope.ADMIN.value
_EVIDENCE_STRENGTH = {"enum": [*dict.fromkeys(EVIDENCE_STRENGTH.values()), None],
                      "description": "what verified_by proves: `live` (face_live: a head followed a random "
                                     "head-turn challenge on Rastau's capture page, then matched), `single_frame` "
                                     "(face: one frame from the clinic's system matched; any photo of the patient "
                                     "passes it, the weaker kind), `code` (the patient's one-time code)"}
_TOKEN = {"name": "token", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"}}
_HTML = {"text/html": {"schema": {"type": "string"}}}
_AUTH = (401, 403)
# the auditors' exports: a period of Asia/Almaty days, one clinic or all in the key's scope, a signed file
_AUDIT = Scope.AUDIT.value
_AUDIT_DAY = {"in": "query", "required": True, "schema": _DAY}
_AUDIT_PERIOD = [{"name": "from", "description": "first Asia/Almaty day", **_AUDIT_DAY},
                 {"name": "to", "description": "last Asia/Almaty day (included)", **_AUDIT_DAY},
                 {"name": "clinic", "in": "query", "required": False, "schema": _ID,
                  "description": "one clinic of the auditor's; default: every clinic the auditor reads (a clinic "
                                 "outside them answers 404, as a missing one)"},
                 {"name": "format", "in": "query", "required": False, "schema": {"enum": ["jsonl", "csv"]},
                  "description": "default: csv when Accept names text/csv (and not application/jsonl), else jsonl"}]
_SIGNED_FILE = {
    "description": "A signed file, streamed. Its last line is the signature record over every byte before it "
                   "(format, query, cursors, who asked, when, bytes, lines, SHA-256, key id, Ed25519 signature): "
                   "JSON lines end with {\"rastau_signature\": {...}}; CSV (UTF-8 with BOM) ends with the row "
                   "#rastau-signature,<base64url of the record's JSON>. `rastau verify-export FILE --public-key KEY` "
                   "checks it with the public key alone. The read is in the audit log (the clinic's chain: which "
                   "auditor, which export, which patients) before the first byte is sent.",
    "content": {"application/jsonl": {"schema": {"type": "string"}}, "text/csv": {"schema": {"type": "string"}}}}

_SCHEMAS = {
    **_body_schemas(PatientIn, ConsentIn, VisitIn, CancelIn, CodeIn),
    "Problem": {
        "type": "object", "required": ["type", "title", "status", "detail", "code"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                       "detail": {"type": "string"}, "code": {"type": "string"},
                       "field": {"type": "string"}, "request_id": {"type": "string"},
                       "retry_after": {"type": "integer"},
                       "errors": {"type": "array", "items": {
                           "type": "object", "required": ["field", "message"],
                           "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}}}},
    "Patient": {
        "type": "object",
        "required": ["id", "full_name", "phone", "language", "chat_linked", "consent_recorded_at",
                     "consent_recorded_by"],
        "properties": {"id": _ID, "full_name": {"type": "string"}, "phone": {"type": "string"},
                       "language": _enum(Language), "chat_linked": {"type": "boolean"},
                       "consent_recorded_at": _NULLABLE_DATETIME,
                       "consent_recorded_by": {"type": ["string", "null"]},
                       "created": {"type": "boolean"}}},
    "Enrolment": {"type": "object", "required": ["enrolled"],
                  "properties": {"enrolled": {"type": "integer", "minimum": 1, "maximum": 5}}},
    "Revocation": {"type": "object", "required": ["revoked"],
                   "properties": {"revoked": {"type": "integer", "minimum": 0}}},
    "Visit": {
        "type": "object",
        "required": ["id", "doctor_id", "patient_id", "start", "start_local", "duration_minutes", "mode",
                     "service_code", "state", "verification_methods", "registered_at", "registered_late",
                     "verified_by", "evidence_strength", "verified_at", "verified_enrolment_id", "enrolled_at",
                     "fresh_reference", "patient_answer"],
        "properties": {
            "id": _ID, "doctor_id": _ID, "patient_id": _ID, "start": _DATETIME,
            "start_local": {**_DATETIME, "description": "the start in Asia/Almaty"},
            "duration_minutes": {"type": "integer"}, "mode": _enum(VisitMode),
            "service_code": {"type": "string"},
            "state": _enum(VisitState),
            "verification_methods": {"type": "array", "items": _enum(VerificationMethod),
                                     "description": "online consultations: code only"},
            "registered_at": {**_DATETIME, "description": "when the clinic registered the visit"},
            "registered_late": {"type": "boolean", "description": "registered after its verification window had "
                                                                 "closed: it can collect no evidence"},
            "verified_by": _enum(VerificationMethod, nullable=True), "verified_at": _NULLABLE_DATETIME,
            "evidence_strength": _EVIDENCE_STRENGTH,
            "verified_enrolment_id": {"type": ["integer", "null"],
                                      "description": "the face enrolment (patient change) a face match was made "
                                                     "against"},
            "enrolled_at": {**_NULLABLE_DATETIME, "description": "when that enrolment was made"},
            "fresh_reference": {"type": "boolean",
                                "description": "the face matched a reference enrolled under 24 hours before, "
                                               "for a patient with no chat to hear of that enrolment"},
            "patient_answer": {
                "type": "object", "required": ["answer", "answered_at", "dispute_reason"],
                "properties": {"answer": _enum(PatientAnswer),
                               "answered_at": _NULLABLE_DATETIME,
                               "dispute_reason": {"type": ["string", "null"]}}}}},
    "VisitEvent": {
        "type": "object", "required": ["at", "step", "from_state", "to_state", "actor", "method", "detail"],
        "properties": {"at": _DATETIME, "step": {"type": "string"}, "from_state": {"type": ["string", "null"]},
                       "to_state": {"type": "string"}, "actor": {"type": "string"},
                       "method": {"type": ["string", "null"]}, "detail": {"type": ["string", "null"]}}},
    "VisitDetail": {"allOf": [_ref("Visit"), {
        "type": "object", "required": ["events"],
        "properties": {"events": {"type": "array", "items": _ref("VisitEvent")}}}]},
    "VisitList": {"type": "object", "required": ["date", "visits"],
                  "properties": {"date": {"type": "string", "format": "date"},
                                 "visits": {"type": "array", "items": _ref("Visit")}}},
    "FaceDecision": {
        "type": "object", "required": ["decision"],
        "properties": {"decision": _enum(FaceDecision),
                       "face_locked_for_seconds": {"type": "integer", "minimum": 1,
                                                   "description": "set when this failure locked face checks"}}},
    "CaptureSession": {
        "type": "object", "required": ["session_id", "visit_id", "url", "expires_at", "language"],
        "properties": {"session_id": _ID, "visit_id": _ID,
                       "url": {"type": "string", "format": "uri",
                               "description": "the one-time capture page: open it on the doctor's computer (a "
                                              "browser with the webcam) before expires_at; add ?lang=kk or ?lang=ru "
                                              "to choose the language"},
                       "expires_at": {**_DATETIME, "description": "the page must be opened by then (2 minutes)"},
                       "language": {**_enum(Language), "description": "the page's language: the patient's"}}},
    "CodeResult": {
        "type": "object", "required": ["result", "attempts_left"],
        "properties": {"result": _enum(o for o in CodeOutcome if o is not CodeOutcome.LOCKED),  # locked: 429
                       "attempts_left": {"type": "integer", "minimum": 0}}},
    "CodeRequested": {
        "type": "object", "required": ["status", "channel", "requests_left"],
        "properties": {"status": {"const": "queued"},
                       "channel": {"enum": ["telegram", "whatsapp", "sms"],
                                   "description": "what will carry the code: the patient's first working channel "
                                                  "(the linked chat, WhatsApp, or SMS to the registered phone)"},
                       "requests_left": {"type": "integer", "minimum": 0,
                                         "description": "further code requests this visit may make"}}},
    "Digest": {
        "type": "object",
        "required": ["clinic_id", "clinic_name", "date", "all_confirmed", "totals", "per_doctor", "flagged",
                     "visits", "enrolment_disputes"],
        "properties": {
            "clinic_id": _ID, "clinic_name": {"type": "string"}, "date": {"type": "string", "format": "date"},
            "all_confirmed": {"type": "boolean"},
            "totals": {"type": "object", "additionalProperties": {"type": "integer"}},
            "per_doctor": {"type": "array", "items": {
                "type": "object", "required": ["doctor_id", "doctor_name"],
                "properties": {"doctor_id": _ID, "doctor_name": {"type": "string"}}}},
            "flagged": {"type": "array", "items": _ref("DigestRow")},
            "visits": {"type": "array", "items": _ref("DigestRow")},
            "enrolment_disputes": {
                "type": "array", "description": "changes to a patient's face, phone or consent that the patient "
                                                "answered \"this wasn't me\" to on this day",
                "items": _ref("EnrolmentDispute")}}},
    "EnrolmentDispute": {
        "type": "object",
        "required": ["change_id", "kind", "patient_id", "patient_name", "iin_masked", "actor", "changed_at_local",
                     "disputed_at_local"],
        "properties": {"change_id": _ID, "patient_id": _ID, "patient_name": {"type": "string"},
                       "kind": {"enum": list(CHANGE_KINDS)},
                       "iin_masked": {"type": "string", "pattern": r"^\*{8}\d{4}$"},
                       "actor": {"type": "string", "description": "key:<prefix> of the API key, or "
                                                                  "cli:rastau-enrol"},
                       "changed_at_local": _DATETIME, "disputed_at_local": _DATETIME}},
    "DigestRow": {
        "type": "object", "required": ["visit_id", "start_local", "doctor_id", "state", "answer", "iin_masked",
                                       "registered_at", "registered_late", "verified_by", "evidence_strength",
                                       "verified_at",
                                       "verified_enrolment_id", "enrolled_at", "fresh_reference"],
        "properties": {"visit_id": _ID, "start_local": _DATETIME, "doctor_id": _ID,
                       "registered_at": _DATETIME, "registered_late": {"type": "boolean"},
                       "verified_by": _enum(VerificationMethod, nullable=True), "verified_at": _NULLABLE_DATETIME,
                       "evidence_strength": _EVIDENCE_STRENGTH,
                       "verified_enrolment_id": {"type": ["integer", "null"]}, "enrolled_at": _NULLABLE_DATETIME,
                       "fresh_reference": {"type": "boolean"},
                       "iin_masked": {"type": "string", "pattern": r"^\*{8}\d{4}$"},
                       "state": {"type": "string"}, "answer": {"type": "string"},
                       "code_delivery": {"enum": ["delivered", "sent", None],  # issue 14
                                         "description": "delivered: WhatsApp or SMS reported the code arrived; "
                                                        "sent: it went out, arrival unknown (Telegram never "
                                                        "says); null: no code message went out"}}},
    "SigningKey": {
        "type": "object", "required": ["algorithm", "public_key", "key_id", "ephemeral"],
        "properties": {"algorithm": {"const": "Ed25519"},
                       "public_key": {"type": "string", "description": "base64 of the 32 raw bytes"},
                       "key_id": {"type": "string", "pattern": "^[0-9a-f]{16}$",
                                  "description": "the first 16 hex digits of the SHA-256 of the raw key; every "
                                                 "signature record names it"},
                       "ephemeral": {"type": "boolean", "description": "true only in dev mode: a throwaway key"}}},
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Readiness": {
        "type": "object", "required": ["status", "database", "face_workers"],
        "properties": {"status": {"enum": ["ready", "unready"]}, "database": {"enum": ["ok", "unreachable"]},
                       "face_workers": {"enum": ["ready", "starting"]}}},
}

_PATHS = {
    "/healthz": {"get": _op("healthz", "The process is alive", None, {200: _ok(_ref("Health"))}, ())},
    "/readyz": {"get": _op("readyz", "Database reachable and face workers warm", None,
                           {200: _ok(_ref("Readiness")), 503: _ok(_ref("Readiness"), "Not ready")}, ())},
    "/metrics": {"get": _op("metrics", "Prometheus metrics", None,
                            {200: {"description": "Prometheus text format",
                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}, ())},
    f"{API}/openapi.json": {"get": _op("openapi", "This document", None, {200: _ok({"type": "object"})}, ())},
    f"{API}/patients": {"post": _op(
        "upsertPatient", "Create the clinic's patient with this IIN, or update name, phone and language", (_CS,),
        {200: _ok(_ref("Patient"), "Updated", _PATIENT_LINKS), 201: _ok(_ref("Patient"), "Created", _PATIENT_LINKS)},
        (*_AUTH, 404, 409, 413, 415, 422, 503),
        body=_json_body(PatientIn),
        description="409 `staff_phone`: the number belongs to a doctor or admin of this clinic; a patient's codes "
                    "and questions must reach the patient. A new phone unlinks the patient's chat and is told to "
                    "the old chat with a \"this wasn't me\" button. A key bound to a doctor: 404 for an existing "
                    "patient with no visit with its doctor, 403 `doctor_key_forbidden` for a new phone.")},
    f"{API}/patients/{{patient_id}}/consent": {"post": _op(
        "recordConsent", "Record the patient's consent to face verification", (_CS,), {200: _ok(_ref("Patient"))},
        (*_AUTH, 404, 413, 415, 422, 503), body=_json_body(ConsentIn),
        parameters=[_PATIENT_ID], description=_TOLD + " " + _BOUND_404)},
    f"{API}/patients/{{patient_id}}/face": {
        "put": _op("enrolFace", "Replace the patient's reference faces with 1-5 photos (all-or-nothing)", (_CS,),
                   {200: _ok(_ref("Enrolment"))}, (*_AUTH, 404, 409, 413, 415, 422, 429, 503),
                   body={"required": True, "content": {"multipart/form-data": {"schema": {
                       "type": "object", "required": ["image"],
                       "properties": {"image": {"type": "array", "minItems": 1, "maxItems": 5,
                                                "items": {"type": "string", "contentMediaType": "image/jpeg"}}}}}}},
                   parameters=[_PATIENT_ID],
                   description="Each photo must show exactly one face. Consent must be on record. The answer "
                               "says how many references were stored and nothing biometric. The first enrolment "
                               "is free; replacing an enrolled face (even after DELETE) is allowed once per "
                               "RASTAU_FACE_REPLACEMENT_MIN_DAYS (default 30): beyond it 429 "
                               "`face_replacement_limited` with Retry-After, nothing stored. " + _TOLD + " "
                               + _BOUND_404 + " " + _BOUND_403),
        "delete": _op("revokeFace", "Revoke every reference face of the patient", (_CS,),
                      {200: _ok(_ref("Revocation"))}, (*_AUTH, 404, 503), parameters=[_PATIENT_ID],
                      description="Never limited. " + _TOLD + " " + _BOUND_404 + " " + _BOUND_403)},
    f"{API}/visits": {
        "post": _op("createVisit", "Register a visit", (_CS,),
                    {201: {**_ok(_ref("Visit"), "Created (or replayed for a repeated Idempotency-Key)", _VISIT_LINKS),
                           "headers": {"Location": {"schema": {"type": "string"}}}}},
                    (*_AUTH, 404, 409, 413, 415, 422, 503), body=_json_body(VisitIn),
                    parameters=[{"name": "Idempotency-Key", "in": "header", "required": False,
                                 "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                                 "description": "same key and body: the first answer again, one visit; "
                                                "same key, other body: 409"}]),
        "get": _op("listVisits", "The clinic's visits on one Asia/Almaty day", (_CS, _ADMIN),
                   {200: _ok(_ref("VisitList"))}, (*_AUTH, 422, 503),
                   parameters=[_DATE_QUERY,
                               {"name": "doctor_id", "in": "query", "required": False, "schema": _ID},
                               {"name": "status", "in": "query", "required": False,
                                "schema": _enum(VisitState)},
                               {"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 200}},
                               {"name": "offset", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0}}])},
    f"{API}/visits/{{visit_id}}": {"get": _op(
        "getVisit", "One visit with its events and the patient's answer", (_CS, _ADMIN, _WEBCAM),
        {200: _ok(_ref("VisitDetail"))}, (*_AUTH, 404, 503), parameters=[_VISIT_ID])},
    f"{API}/visits/{{visit_id}}/cancel": {"post": _op(
        "cancelVisit", "Cancel a scheduled visit", (_CS,), {200: _ok(_ref("Visit"))},
        (*_AUTH, 404, 409, 413, 415, 422, 503), body=_json_body(CancelIn, required=False),
        parameters=[_VISIT_ID])},
    f"{API}/visits/{{visit_id}}/face": {"post": _op(
        "verifyFace", "Verify an in-person visit with one webcam frame", (_WEBCAM,), {200: _ok(_ref("FaceDecision"))},
        (*_AUTH, 404, 409, 413, 415, 422, 429, 503),
        body={"required": True, "content": {"image/jpeg": {"schema": {"type": "string"}},
                                            "image/png": {"schema": {"type": "string"}}}},
        parameters=[_VISIT_ID],
        description="Refused with 409 `single_frame_face_disabled` unless the operator set "
                    "RASTAU_SINGLE_FRAME_FACE=1: use capture sessions. Its evidence is `face`, labelled "
                    "`single_frame` (the weaker kind: any photo of the patient passes it). "
                    "At most 5 MB and 25 megapixels. The frame is never stored. Refused with no image work: "
                    "409 for an online visit (code only), `outside_window` (a frame counts only from "
                    "RASTAU_CODE_ISSUE_LEAD_MINUTES, 15, before the start until RASTAU_VISIT_GRACE_MINUTES, 15, "
                    "after the end) and `registered_late` (the visit was "
                    "registered after that window had closed), `not_enrolled` and `no_reference` (the patient "
                    "withdrew consent to face recognition in the chat and their references were destroyed; issue "
                    "16); after 5 failed attempts for the visit 429 "
                    "`face_attempts_locked` with Retry-After (30 s, doubling on repeats); 429 `patient_face_cap`, "
                    "`doctor_face_cap`, `clinic_face_cap` when the patient (over all visits), doctor or clinic "
                    "failed too many face checks this hour, with Retry-After to the turn of the hour. The code "
                    "endpoint stays open.")},
    f"{API}/visits/{{visit_id}}/capture-sessions": {"post": _op(
        "openCaptureSession", "Open a one-time capture page for an in-person visit (live face evidence)", (_WEBCAM,),
        {201: _ok(_ref("CaptureSession"), "Open: show the url on the doctor's computer")},
        (*_AUTH, 404, 409, 429, 503), parameters=[_VISIT_ID],
        description="Refused as a face frame would be: 409 for an online or closed visit, `outside_window`, "
                    "`registered_late`, `not_enrolled`. The page asks for the camera, shows the patient a random "
                    "head-turn challenge step by step and streams frames to the server (a WebSocket), which "
                    "decides: `match` verifies the visit as `face_live`; `no_match`, `no_face`, `multiple_faces` "
                    "and `not_live` (with a reason) are failed face attempts, counted against the same caps as "
                    "single frames (one session = one attempt, a page closed early included). The url works once, "
                    "within 2 minutes; it is the credential, so show it only on the doctor's computer.")},
    f"{API}/visits/{{visit_id}}/code": {"post": _op(
        "verifyCode", "Check the 6-digit code the patient read out", (_WEBCAM, _CS), {200: _ok(_ref("CodeResult"))},
        (*_AUTH, 404, 409, 413, 415, 422, 429, 503), body=_json_body(CodeIn),
        parameters=[_VISIT_ID], description="409 `registered_late`: no code exists for a visit registered after "
                                            "its window; 429 `code_locked`: too many wrong codes for the visit; "
                                            "429 `doctor_code_cap`: too many for the doctor this hour; "
                                            "429 `clinic_code_cap`: too many for the clinic this hour.")},
    f"{API}/visits/{{visit_id}}/code-requests": {"post": _op(
        "requestCode", "Send (or re-send) a one-time code to the patient's chat", (_CS,),
        {202: _ok(_ref("CodeRequested"), "Queued for the patient's chat; the code is never returned")},
        (*_AUTH, 404, 409, 429, 503), parameters=[_VISIT_ID],
        description="409 `patient_unreachable`: the patient has no linked chat (or blocked or stopped the bot), "
                    "so no code can reach them; nothing is queued: verify the patient by face (in person), or "
                    "ask them to open the clinic's bot and share their phone number, then ask again. "
                    "429 `code_requests_capped`: this visit already had RASTAU_CODE_REQUESTS_PER_VISIT (default "
                    "3) codes sent on request; each new code replaces the last, so ask the patient to read the "
                    "latest one, or verify by face.")},
    "/capture/{token}": {"get": _op(
        "capturePage", "The capture page (HTML) of an open capture session", None,
        {200: {"description": "The page, in the patient's language (or ?lang=kk|ru)", "content": _HTML},
         404: {"description": "Unknown, expired or used link: a page that says what to do (a path no route "
                              "matches, e.g. a token with a slash, gets the API's problem+json 404)",
               "content": {**_HTML, "application/problem+json": {"schema": _ref("Problem")}}}},
        (), parameters=[_TOKEN, {"name": "lang", "in": "query", "required": False,
                                 "schema": _enum(Language)}])},
    "/capture/{token}/ws": {"get": _op(
        "captureSocket", "The capture page's WebSocket: binary JPEG frames in, JSON steps and the outcome out", None,
        {101: {"description": "Switching to WebSocket; the first connection claims the session, later ones get "
                              "`{\"type\": \"outcome\", \"outcome\": \"unavailable\"}`"},
         403: {"description": "`cross_origin`: the Origin is not this server's (only Rastau's page may connect)",
               "content": {"application/problem+json": {"schema": _ref("Problem")}}}},
        (400, 404), parameters=[_TOKEN],
        description="400: not a WebSocket upgrade; 404: a path no route matches.")},
    "/capture/assets/{name}": {"get": _op(
        "captureAsset", "The capture page's script and style", None,
        {200: {"description": "capture.js or capture.css",
               "content": {kind: {"schema": {"type": "string"}} for kind in ("text/javascript", "text/css")}}},
        (404,), parameters=[{"name": "name", "in": "path", "required": True,
                         "schema": {"enum": ["capture.js", "capture.css"]}}])},
    f"{API}/digest": {"get": _op("getDigest", "The admins' daily digest as data", (_ADMIN,),
                                 {200: _ok(_ref("Digest"))}, (*_AUTH, 422, 503), parameters=[_DATE_QUERY])},
    f"{API}/digest.csv": {"get": _op(
        "getDigestCsv", "The day's visits as CSV (UTF-8 with BOM)", (_ADMIN,),
        {200: {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}},
        (*_AUTH, 422, 503), parameters=[_DATE_QUERY])},
    f"{API}/audit/signing-key": {"get": _op(
        "getSigningKey", "The public key that signs every evidence export (no secret)", None,
        {200: _ok(_ref("SigningKey"))}, (),
        description="Pin its key_id with the operator out of band: whoever controls this server could serve "
                    "another key.")},
    f"{API}/audit/visits": {"get": _op(
        "exportVisits", "Auditors: per visit the evidence and the patient's answer, as a signed file", (_AUDIT,),
        {200: _SIGNED_FILE}, (*_AUTH, 404, 422, 503),
        parameters=[*_AUDIT_PERIOD,
                    {"name": "cursor", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0},
                     "description": "the next_cursor of the previous page's signature record (or the Link "
                                    "rel=next header); pages are in visit id order, so visits registered while "
                                    "paging land on a later page"},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 1000}}],
        description="One line (row) per visit starting in the period: visit_id, clinic_id, clinic, doctor_id, "
                    "doctor, patient_id, patient (the IIN masked to its last four digits), mode, service_code, "
                    "start, registered_at, state, evidence (face_live, face, code, none), verified_at (Asia/Almaty "
                    "times with their offset), answer (confirmed, disputed, claimed_attended, no_answer, "
                    "no_channel: nobody could ask, the patient has no chat that reaches them), flags (the visit's "
                    "own: registered_late, fresh_reference; the red-flag rules are exportFlags). Auditors' keys "
                    "only.")},
    f"{API}/audit/flags": {"get": _op(
        "exportFlags", "Auditors: the red flags raised in the period, as a signed file", (_AUDIT,),
        {200: _SIGNED_FILE}, (*_AUTH, 404, 422, 503),
        parameters=[*_AUDIT_PERIOD, {"name": "doctor", "in": "query", "required": False, "schema": _ID,
                                     "description": "one doctor's flags (the clinic-wide ones are left out)"}],
        description="One line (row) per flag: clinic_id, doctor_id, day, kind, description, value, threshold, "
                    "explanation and the ids of the visits that raised it. Auditors' keys only.")},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "Rastau verification API", "version": "1",
             "description": "Evidence that billed polyclinic visits happened: patients, visits, face and code "
                            "verification, daily digests. Errors are RFC 9457 problem+json documents, including "
                            "405 `method_not_allowed` (with Allow) for a method a path does not list (HEAD is not "
                            "served) and 400 `bad_request` for a request that is not valid HTTP. No response may "
                            "be cached (Cache-Control: no-store)."},
    "servers": [{"url": "/"}],
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "responses": {f"Problem{status}": {"description": text, "content": {
            "application/problem+json": {"schema": _ref("Problem")}}} for status, text in _PROBLEM_STATUSES.items()},
        "securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "A clinic API key (rastau add-api-key). Scopes: "
                           + ", ".join(scope.value for scope in Scope) + "."}},
    },
}
