"""The OpenAPI 3.1 description of the API, served at ``/api/v1/openapi.json``.

Written by hand (it is the contract clinic integrators build against); tests/server check that it lists exactly
the routes the app serves, with the scopes each handler demands, and that real responses match its schemas.
"""
from __future__ import annotations

API = "/api/v1"
_DATETIME = {"type": "string", "format": "date-time"}
_NULLABLE_DATETIME = {"type": ["string", "null"], "format": "date-time"}
_ID = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
_TEXT = r"^[^\u0000]*$"  # PostgreSQL cannot store NUL in text
_YEAR_2000_2100 = r"^(20[0-9]{2}|2100)-"
_DAY = {"type": "string", "format": "date", "pattern": _YEAR_2000_2100 + r"[0-9]{2}-[0-9]{2}$"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


_PROBLEM_STATUSES = {
    401: "Missing, unknown or revoked API key (see WWW-Authenticate)",
    403: "The key lacks the scope this operation needs",
    404: "No such record in the key's clinic (another clinic's records are reported as missing too)",
    409: "The record's state does not allow this (e.g. an online visit and a face frame; consent missing)",
    413: "Body or image too large (bytes or pixels)",
    415: "Unsupported content type or image format",
    422: "The request is malformed; `detail` names the field",
    429: "Too many attempts; see Retry-After",
    503: "Database or face workers unavailable; retry later",
}


def _op(op_id: str, summary: str, scopes: tuple[str, ...] | None, ok: dict[int, dict], problems: tuple[int, ...],
        *, body: dict | None = None, parameters: list | None = None, description: str = "") -> dict:
    responses = {str(status): response for status, response in ok.items()}
    for status in problems:
        responses[str(status)] = {"$ref": f"#/components/responses/Problem{status}"}
    op = {"operationId": op_id, "summary": summary, "responses": responses}
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


def _ok(schema: dict, description: str = "OK", links: dict | None = None) -> dict:
    response = {"description": description, **_json(schema)}
    if links:
        response["links"] = links
    return response


def _links(parameter: str, *operation_ids: str) -> dict:
    """Where the new record's id can be used next (lets stateful API testers follow the flow)."""
    return {op: {"operationId": op, "parameters": {parameter: "$response.body#/id"}} for op in operation_ids}


_PATIENT_LINKS = _links("patient_id", "recordConsent", "enrolFace", "revokeFace")
_VISIT_LINKS = _links("visit_id", "getVisit", "cancelVisit", "verifyFace", "verifyCode", "requestCode")


_PATIENT_ID = {"name": "patient_id", "in": "path", "required": True, "schema": _ID}
_VISIT_ID = {"name": "visit_id", "in": "path", "required": True, "schema": _ID}
_DATE_QUERY = {"name": "date", "in": "query", "required": False, "description": "Asia/Almaty day; default today",
               "schema": _DAY}
_CS, _WEBCAM, _ADMIN = "clinic_system", "webcam", "admin"
_AUTH = (401, 403)

_SCHEMAS = {
    "Problem": {
        "type": "object", "required": ["type", "title", "status", "detail", "code"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                       "detail": {"type": "string"}, "code": {"type": "string"},
                       "field": {"type": "string"}, "request_id": {"type": "string"},
                       "retry_after": {"type": "integer"},
                       "errors": {"type": "array", "items": {
                           "type": "object", "required": ["field", "message"],
                           "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}}}},
    "PatientIn": {
        "type": "object", "additionalProperties": False, "required": ["iin", "full_name", "phone"],
        "properties": {"iin": {"type": "string", "pattern": "^[0-9]{12}$",
                               "description": "12-digit IIN (ЖСН/ИИН); its check digit is verified too"},
                       "full_name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": _TEXT},
                       "phone": {"type": "string", "minLength": 1, "maxLength": 32, "pattern": _TEXT,
                                 "description": "Kazakhstan mobile number, any common spelling"},
                       "language": {"enum": ["kk", "ru"], "default": "ru"}}},
    "Patient": {
        "type": "object",
        "required": ["id", "full_name", "phone", "language", "chat_linked", "consent_recorded_at",
                     "consent_recorded_by"],
        "properties": {"id": _ID, "full_name": {"type": "string"}, "phone": {"type": "string"},
                       "language": {"enum": ["kk", "ru"]}, "chat_linked": {"type": "boolean"},
                       "consent_recorded_at": _NULLABLE_DATETIME,
                       "consent_recorded_by": {"type": ["string", "null"]},
                       "created": {"type": "boolean"}}},
    "ConsentIn": {"type": "object", "additionalProperties": False, "required": ["recorded_by"],
                  "properties": {"recorded_by": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": _TEXT,
                                                 "description": "who took the consent (staff name or id)"}}},
    "Enrolment": {"type": "object", "required": ["enrolled"],
                  "properties": {"enrolled": {"type": "integer", "minimum": 1, "maximum": 5}}},
    "Revocation": {"type": "object", "required": ["revoked"],
                   "properties": {"revoked": {"type": "integer", "minimum": 0}}},
    "VisitIn": {
        "type": "object", "additionalProperties": False,
        "required": ["doctor_id", "patient_id", "start", "duration_minutes", "mode", "service_code"],
        "properties": {"doctor_id": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                       "patient_id": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                       "start": {**_DATETIME, "description": "with a UTC offset, e.g. 2026-11-25T09:00:00+05:00; "
                                                          "years 2000-2100"},
                       "duration_minutes": {"type": "integer", "minimum": 1, "maximum": 720},
                       "mode": {"enum": ["in_person", "online"]},
                       "service_code": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": _TEXT}}},
    "Visit": {
        "type": "object",
        "required": ["id", "doctor_id", "patient_id", "start", "start_local", "duration_minutes", "mode",
                     "service_code", "state", "verification_methods", "verified_by", "verified_at",
                     "patient_answer"],
        "properties": {
            "id": _ID, "doctor_id": _ID, "patient_id": _ID, "start": _DATETIME,
            "start_local": {**_DATETIME, "description": "the start in Asia/Almaty"},
            "duration_minutes": {"type": "integer"}, "mode": {"enum": ["in_person", "online"]},
            "service_code": {"type": "string"},
            "state": {"enum": ["scheduled", "verified", "unverified", "patient_confirmed", "patient_disputed",
                               "cancelled"]},
            "verification_methods": {"type": "array", "items": {"enum": ["face", "code"]},
                                     "description": "online consultations: code only"},
            "verified_by": {"enum": ["face", "code", None]}, "verified_at": _NULLABLE_DATETIME,
            "patient_answer": {
                "type": "object", "required": ["answer", "answered_at", "dispute_reason"],
                "properties": {"answer": {"enum": ["confirmed", "disputed", "claimed_attended", "none"]},
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
    "CancelIn": {"type": "object", "additionalProperties": False,
                 "properties": {"reason": {"type": ["string", "null"], "maxLength": 1000, "pattern": _TEXT}}},
    "FaceDecision": {
        "type": "object", "required": ["decision"],
        "properties": {"decision": {"enum": ["match", "no_match", "no_face", "multiple_faces"]},
                       "face_locked_for_seconds": {"type": "integer", "minimum": 1,
                                                   "description": "set when this failure locked face checks"}}},
    "CodeIn": {"type": "object", "additionalProperties": False, "required": ["code"],
               "properties": {"code": {"type": "string", "pattern": "^[0-9]{6}$",
                                        "description": "the 6 digits the patient read out"}}},
    "CodeResult": {
        "type": "object", "required": ["result", "attempts_left"],
        "properties": {"result": {"enum": ["verified", "wrong", "expired", "no_code", "already_used"]},
                       "attempts_left": {"type": "integer", "minimum": 0}}},
    "CodeRequested": {"type": "object", "required": ["status"],
                      "properties": {"status": {"const": "sent_to_patient"}}},
    "Digest": {
        "type": "object",
        "required": ["clinic_id", "clinic_name", "date", "all_confirmed", "totals", "per_doctor", "flagged",
                     "visits"],
        "properties": {
            "clinic_id": _ID, "clinic_name": {"type": "string"}, "date": {"type": "string", "format": "date"},
            "all_confirmed": {"type": "boolean"},
            "totals": {"type": "object", "additionalProperties": {"type": "integer"}},
            "per_doctor": {"type": "array", "items": {
                "type": "object", "required": ["doctor_id", "doctor_name"],
                "properties": {"doctor_id": _ID, "doctor_name": {"type": "string"}}}},
            "flagged": {"type": "array", "items": _ref("DigestRow")},
            "visits": {"type": "array", "items": _ref("DigestRow")}}},
    "DigestRow": {
        "type": "object", "required": ["visit_id", "start_local", "doctor_id", "state", "answer", "iin_masked"],
        "properties": {"visit_id": _ID, "start_local": _DATETIME, "doctor_id": _ID,
                       "iin_masked": {"type": "string", "pattern": r"^\*{8}\d{4}$"},
                       "state": {"type": "string"}, "answer": {"type": "string"}}},
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
        (*_AUTH, 409, 413, 415, 422, 503),
        body={"required": True, **_json(_ref("PatientIn"))},
        description="409 `staff_phone`: the number belongs to a doctor or admin of this clinic; a patient's codes "
                    "and questions must reach the patient.")},
    f"{API}/patients/{{patient_id}}/consent": {"post": _op(
        "recordConsent", "Record the patient's consent to face verification", (_CS,), {200: _ok(_ref("Patient"))},
        (*_AUTH, 404, 413, 415, 422, 503), body={"required": True, **_json(_ref("ConsentIn"))},
        parameters=[_PATIENT_ID])},
    f"{API}/patients/{{patient_id}}/face": {
        "put": _op("enrolFace", "Replace the patient's reference faces with 1-5 photos (all-or-nothing)", (_CS,),
                   {200: _ok(_ref("Enrolment"))}, (*_AUTH, 404, 409, 413, 415, 422, 503),
                   body={"required": True, "content": {"multipart/form-data": {"schema": {
                       "type": "object", "required": ["image"],
                       "properties": {"image": {"type": "array", "minItems": 1, "maxItems": 5,
                                                "items": {"type": "string", "contentMediaType": "image/jpeg"}}}}}}},
                   parameters=[_PATIENT_ID],
                   description="Each photo must show exactly one face. Consent must be on record. The answer "
                               "says how many references were stored and nothing biometric."),
        "delete": _op("revokeFace", "Revoke every reference face of the patient", (_CS,),
                      {200: _ok(_ref("Revocation"))}, (*_AUTH, 404, 503), parameters=[_PATIENT_ID])},
    f"{API}/visits": {
        "post": _op("createVisit", "Register a visit", (_CS,),
                    {201: {**_ok(_ref("Visit"), "Created (or replayed for a repeated Idempotency-Key)", _VISIT_LINKS),
                           "headers": {"Location": {"schema": {"type": "string"}}}}},
                    (*_AUTH, 404, 409, 413, 415, 422, 503), body={"required": True, **_json(_ref("VisitIn"))},
                    parameters=[{"name": "Idempotency-Key", "in": "header", "required": False,
                                 "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                                 "description": "same key and body: the first answer again, one visit; "
                                                "same key, other body: 409"}]),
        "get": _op("listVisits", "The clinic's visits on one Asia/Almaty day", (_CS, _ADMIN),
                   {200: _ok(_ref("VisitList"))}, (*_AUTH, 422, 503),
                   parameters=[_DATE_QUERY,
                               {"name": "doctor_id", "in": "query", "required": False, "schema": _ID},
                               {"name": "status", "in": "query", "required": False, "schema": {
                                   "enum": ["scheduled", "verified", "unverified", "patient_confirmed",
                                            "patient_disputed", "cancelled"]}},
                               {"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 200}},
                               {"name": "offset", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0}}])},
    f"{API}/visits/{{visit_id}}": {"get": _op(
        "getVisit", "One visit with its events and the patient's answer", (_CS, _ADMIN, _WEBCAM),
        {200: _ok(_ref("VisitDetail"))}, (*_AUTH, 404, 503), parameters=[_VISIT_ID])},
    f"{API}/visits/{{visit_id}}/cancel": {"post": _op(
        "cancelVisit", "Cancel a scheduled visit", (_CS,), {200: _ok(_ref("Visit"))},
        (*_AUTH, 404, 409, 413, 415, 422, 503), body={"required": False, **_json(_ref("CancelIn"))},
        parameters=[_VISIT_ID])},
    f"{API}/visits/{{visit_id}}/face": {"post": _op(
        "verifyFace", "Verify an in-person visit with one webcam frame", (_WEBCAM,), {200: _ok(_ref("FaceDecision"))},
        (*_AUTH, 404, 409, 413, 415, 422, 429, 503),
        body={"required": True, "content": {"image/jpeg": {"schema": {"type": "string"}},
                                            "image/png": {"schema": {"type": "string"}}}},
        parameters=[_VISIT_ID],
        description="At most 5 MB and 25 megapixels. The frame is never stored. Online visits answer 409: they "
                    "are verified by one-time code only. After 5 failed attempts: 429 with Retry-After (30 s, "
                    "doubling on repeats); the code endpoint stays open.")},
    f"{API}/visits/{{visit_id}}/code": {"post": _op(
        "verifyCode", "Check the 6-digit code the patient read out", (_WEBCAM, _CS), {200: _ok(_ref("CodeResult"))},
        (*_AUTH, 404, 409, 413, 415, 422, 429, 503), body={"required": True, **_json(_ref("CodeIn"))},
        parameters=[_VISIT_ID], description="429 `code_locked`: too many wrong codes for the visit; "
                                            "429 `doctor_code_cap`: too many for the doctor this hour; "
                                            "429 `clinic_code_cap`: too many for the clinic this hour.")},
    f"{API}/visits/{{visit_id}}/code-requests": {"post": _op(
        "requestCode", "Send (or re-send) a one-time code to the patient's chat", (_CS,),
        {202: _ok(_ref("CodeRequested"), "Queued for the patient's chat; the code is never returned")},
        (*_AUTH, 404, 409, 503), parameters=[_VISIT_ID])},
    f"{API}/digest": {"get": _op("getDigest", "The admins' daily digest as data", (_ADMIN,),
                                 {200: _ok(_ref("Digest"))}, (*_AUTH, 422, 503), parameters=[_DATE_QUERY])},
    f"{API}/digest.csv": {"get": _op(
        "getDigestCsv", "The day's visits as CSV (UTF-8 with BOM)", (_ADMIN,),
        {200: {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}},
        (*_AUTH, 422, 503), parameters=[_DATE_QUERY])},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "Rastau verification API", "version": "1",
             "description": "Evidence that billed polyclinic visits happened: patients, visits, face and code "
                            "verification, daily digests. Errors are RFC 9457 problem+json documents."},
    "servers": [{"url": "/"}],
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "responses": {f"Problem{status}": {"description": text, "content": {
            "application/problem+json": {"schema": _ref("Problem")}}} for status, text in _PROBLEM_STATUSES.items()},
        "securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "A clinic API key (rastau add-api-key). Scopes: clinic_system, webcam, admin."}},
    },
}
