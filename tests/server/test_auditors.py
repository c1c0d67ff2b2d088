"""The payer's auditors over HTTP: they read the evidence of their clinics only, write nothing, every read of theirs
is in the audit log, and what they take away is a signed file that verifies alone and fails when touched."""
from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from core.audit import OPERATOR_CHAIN, clinic_chain
from core.cli import main as rastau
from core.config import MissingSecrets, Mode, Settings
from core.db import tables as t
from core.services import chat
from core.services.api_keys import Scope
from core.signed_file import verify
from core.signing import Signer, load_public_key, new_seed_b64
from server.auth import check_read_only, requires
from server.openapi import DOCUMENT
from server.routes.audit import SIGNER
from tests.conftest import VALID_IINS
from tests.server.conftest import add_visit
from tests.server.support import auditor_key, bearer

API = "/api/v1"
DAY = "from=2026-11-25&to=2026-11-25"  # the test clock's day (tests.conftest.T0, Asia/Almaty)


async def _export(client, key: str, query: str = DAY, **headers: str):
    response = await client.get(f"{API}/audit/visits?{query}", headers={**bearer(key), **headers})
    return response, await response.read()


def _rows(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.decode().splitlines()[:-1]]


def _record(body: bytes) -> dict:
    return json.loads(body.decode().splitlines()[-1])["rastau_signature"]


async def _public_key(client):
    served = await (await client.get(f"{API}/audit/signing-key")).json()  # no key needed: nothing secret
    return load_public_key(served["public_key"])


async def _audit_rows(ctx, chain: str, action: str) -> list:
    async with ctx.uow(read_only=True) as uow:
        return [r for r in await uow.audit.records(chain) if r.action == action]


async def test_an_auditor_takes_away_its_clinics_visits_as_a_file_that_verifies_alone(client, ctx, tenants):
    a, b = tenants
    visits_a = [await add_visit(ctx, a), await add_visit(ctx, a, patient=1)]
    visit_b = await add_visit(ctx, b)
    key = await auditor_key(ctx, [a.clinic_id])

    response, body = await _export(client, key)
    assert response.status == 200 and response.content_type == "application/jsonl"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = _rows(body)
    assert [r["visit_id"] for r in rows] == [v.id for v in visits_a]  # clinic B's visit is not there
    assert visit_b.id not in [r["visit_id"] for r in rows] and "Polyclinic B" not in body.decode()
    first = rows[0]
    assert (first["clinic"], first["doctor_id"], first["mode"], first["service_code"], first["state"]) == (
        "Polyclinic A", a.doctor_id, "in_person", "A01.001", "scheduled")
    assert first["patient"] == "********" + VALID_IINS[0][-4:] and first["patient_id"] == a.patient_ids[0]
    assert first["start"] == "2026-11-25T09:05:00+05:00" and first["registered_at"] == "2026-11-25T09:00:00+05:00"
    assert (first["evidence"], first["verified_at"], first["flags"]) == ("none", None, [])
    assert not any(iin in body.decode() for iin in VALID_IINS)  # masked, never whole

    verdict = verify(body, await _public_key(client))
    assert verdict.valid, verdict.message
    record = _record(body)
    assert (record["rows"], record["next_cursor"], record["query"]["clinic"]) == (2, None, "all")
    assert record["requested_by"].startswith("auditor:")


async def test_csv_opens_in_a_spreadsheet_and_verifies_the_same_way(client, ctx, tenants):
    a, _ = tenants
    await add_visit(ctx, a)
    key = await auditor_key(ctx, [a.clinic_id])
    for query, headers in ((DAY, {"Accept": "text/csv"}), (DAY + "&format=csv", {})):
        response, body = await _export(client, key, query, **headers)
        assert response.status == 200 and response.content_type == "text/csv"
        text = body.decode("utf-8")
        lines = text.splitlines()
        assert text.startswith("\ufeffvisit_id,clinic_id,clinic,doctor_id")  # the BOM: Excel reads Cyrillic right
        assert lines[-1].startswith("#rastau-signature,") and len(lines) == 3
        assert verify(body, await _public_key(client)).valid


async def _set_visit(ctx, visit_id: int, **values) -> None:
    async with ctx.uow() as uow:
        await uow.conn.execute(update(t.visits).where(t.visits.c.id == visit_id).values(**values))
        await uow.commit()


async def test_evidence_and_the_patients_answer_as_the_payer_needs_them(client, ctx, tenants):
    """Evidence: face_live, face, code or none. Answer: confirmed, disputed, no answer, or no channel when the
    patient has no chat that reaches them, by core.services.chat.reachable_chat's rule (here in SQL)."""
    a, _ = tenants
    live, code, disputed, silent = [await add_visit(ctx, a) for _ in range(4)]
    now = ctx.clock.now()
    await _set_visit(ctx, live.id, state="patient_confirmed", verified_by="face_live", verified_at=now)
    await _set_visit(ctx, code.id, state="verified", verified_by="code", verified_at=now)
    await _set_visit(ctx, disputed.id, state="patient_disputed", answered_at=now)
    key = await auditor_key(ctx, [a.clinic_id])
    by_id = {r["visit_id"]: r for r in _rows((await _export(client, key))[1])}
    assert [(by_id[v.id]["evidence"], by_id[v.id]["answer"]) for v in (live, code, disputed, silent)] == [
        ("face_live", "confirmed"), ("code", "no_channel"), ("none", "disputed"), ("none", "no_channel")]
    assert by_id[live.id]["verified_at"] == "2026-11-25T09:00:00+05:00"


@pytest.mark.parametrize("linked, blocked, stopped", [(True, False, False), (True, True, False),
                                                       (True, False, True), (False, False, False)])
async def test_no_channel_in_the_export_is_exactly_the_senders_rule(client, ctx, tenants, linked, blocked, stopped):
    a, _ = tenants
    visit = await add_visit(ctx, a)
    async with ctx.uow() as uow:
        patient = await uow.patients.get(a.patient_ids[0])
        if linked:
            await uow.patients.set_chat(patient.phone, 4242)
            await uow.chat_users.upsert(4242, ctx.clock.now(), stopped=stopped)
        if blocked:
            await uow.patients.mark_chat_blocked(4242)
        await uow.commit()
    async with ctx.uow(read_only=True) as uow:
        reaches = await chat.reachable_chat(uow, await uow.patients.get(a.patient_ids[0]))
    row = next(r for r in _rows((await _export(client, await auditor_key(ctx, [a.clinic_id])))[1])
               if r["visit_id"] == visit.id)
    assert row["answer"] == ("no_answer" if reaches is not None else "no_channel")
    assert (reaches is not None) == (linked and not blocked and not stopped)


async def test_a_clinic_outside_the_auditors_scope_answers_404_as_a_missing_one(client, ctx, tenants):
    a, b = tenants
    await add_visit(ctx, b)
    key = await auditor_key(ctx, [a.clinic_id])
    for query in (f"{DAY}&clinic={b.clinic_id}", f"{DAY}&clinic=999"):
        response, body = await _export(client, key, query)
        assert response.status == 404 and b"Polyclinic B" not in body
        assert json.loads(body)["code"] == "not_found"
    flags = await client.get(f"{API}/audit/flags?{DAY}&doctor={b.doctor_id}", headers=bearer(key))
    assert flags.status == 404  # another clinic's doctor too
    everywhere = await auditor_key(ctx, None, phone="+77019990001")
    _, body = await _export(client, everywhere)
    assert {r["clinic"] for r in _rows(body)} == {"Polyclinic B"}  # an auditor of all clinics sees B's visit


async def test_a_clinic_key_cannot_read_the_auditors_export(client, ctx, tenants):
    a, _ = tenants
    for scope in ("clinic_system", "webcam", "admin"):
        response, body = await _export(client, a.keys[scope])
        assert response.status == 403 and json.loads(body)["code"] == "insufficient_scope"


def _path_with_ids(path: str, a, visit_id: int) -> str:
    return (path.replace("{patient_id}", str(a.patient_ids[0])).replace("{visit_id}", str(visit_id))
            .replace("{token}", "x" * 43))


async def _everything(ctx) -> dict[str, list]:
    """Every row of every table (an API key's last use aside: the key was used)."""
    async with ctx.uow(read_only=True) as uow:
        return {table.name: sorted(map(repr, (await uow.conn.execute(
            select(*[c for c in table.c if c.name != "last_used_at"]))).all()))
            for table in t.metadata.sorted_tables}


async def test_every_route_but_the_exports_refuses_an_auditor_and_writes_nothing(app, client, ctx, tenants):
    """Walks the OpenAPI operation table: every write (and every clinic read) answers an auditor's key 403
    auditor_read_only before its handler runs, whatever the body, and no row anywhere changes."""
    a, _ = tenants
    visit = await add_visit(ctx, a)
    key = await auditor_key(ctx, None)  # every clinic: the widest auditor
    before = await _everything(ctx)
    writes = 0
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            scopes = {scope for need in operation["security"] for scope in need.get("bearerAuth", [])}
            if not operation["security"] or "audit" in scopes:
                continue
            response = await client.request(method.upper(), _path_with_ids(path, a, visit.id), headers=bearer(key),
                                            json={"doctor_id": a.doctor_id, "patient_id": a.patient_ids[0]})
            assert response.status == 403, f"{method} {path}: {response.status}"
            assert (await response.json())["code"] == "auditor_read_only", f"{method} {path}"
            writes += method != "get"
    assert writes >= 9
    assert await _everything(ctx) == before


def test_no_route_open_to_auditors_can_write():
    """A write route given the audit scope stops the server at start, before any auditor can call it."""
    @requires(Scope.AUDIT)
    async def handler(request):  # pragma: no cover - never called
        return None

    check_read_only("GET", "/x", handler)
    with pytest.raises(RuntimeError, match="open to auditors' keys"):
        check_read_only("POST", "/x", handler)
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            if any("audit" in need.get("bearerAuth", []) for need in operation["security"]):
                assert method == "get", path


async def test_every_read_by_an_auditor_is_in_the_audit_log_before_the_file_leaves(client, ctx, tenants):
    a, b = tenants
    await add_visit(ctx, a)
    await add_visit(ctx, a, patient=1)
    await add_visit(ctx, b)
    key = await auditor_key(ctx, None)
    _, body = await _export(client, key)
    record = _record(body)
    for tenant, patients in ((a, a.patient_ids), (b, b.patient_ids[:1])):
        rows = await _audit_rows(ctx, clinic_chain(tenant.clinic_id), "auditor.read_visits")
        assert len(rows) == 1, "one row in each clinic's chain whose records were read"
        row = rows[0]
        assert row.actor == record["requested_by"] and row.subject.startswith("auditor:")
        assert row.details["export"] == record["export"]
        assert (row.details["patients"], row.details["visits"]) == (sorted(patients), len(patients))
    _, nothing = await _export(client, key, "from=2026-12-01&to=2026-12-01")  # nothing found: still on record
    assert _rows(nothing) == [] and verify(nothing, await _public_key(client)).valid  # a signed empty file
    empty = await _audit_rows(ctx, OPERATOR_CHAIN, "auditor.read_visits")
    assert [r.details["found"] for r in empty] == [0]
    await client.get(f"{API}/audit/flags?{DAY}&clinic={a.clinic_id}", headers=bearer(key))
    assert len(await _audit_rows(ctx, clinic_chain(a.clinic_id), "auditor.read_flags")) == 1


async def test_pages_follow_one_another_by_cursor_and_each_verifies(client, ctx, tenants):
    a, _ = tenants
    made = [(await add_visit(ctx, a)).id for _ in range(5)]
    key = await auditor_key(ctx, [a.clinic_id])
    public = await _public_key(client)
    seen, cursor, pages = [], 0, 0
    while True:
        response, body = await _export(client, key, f"{DAY}&limit=2&cursor={cursor}")
        assert response.status == 200 and verify(body, public).valid
        record = _record(body)
        assert record["cursor"] == cursor
        seen += [r["visit_id"] for r in _rows(body)]
        pages += 1
        if record["next_cursor"] is None:
            assert "Link" not in response.headers
            break
        link = response.headers["Link"]
        assert f"cursor={record['next_cursor']}" in link and 'rel="next"' in link
        cursor = record["next_cursor"]
    assert (seen, pages) == (made, 3)


@pytest.mark.parametrize("query, field", [("to=2026-11-25", "from"), ("from=2026-11-25", "to"),
                                          ("from=2026-11-26&to=2026-11-25", None), (DAY + "&format=xml", "format"),
                                          (DAY + "&limit=0", "limit"), (DAY + "&limit=5001", "limit"),
                                          (DAY + "&cursor=-1", "cursor"), ("from=25.11.2026&to=2026-11-25", "from")])
async def test_a_wrong_query_is_refused_with_what_is_wrong_and_nothing_is_read(client, ctx, tenants, query, field):
    a, _ = tenants
    key = await auditor_key(ctx, [a.clinic_id])
    response, body = await _export(client, key, query)
    problem = json.loads(body)
    assert response.status == 422 and problem.get("field") == field, problem
    assert await _audit_rows(ctx, clinic_chain(a.clinic_id), "auditor.read_visits") == []


async def test_the_flags_export_lists_the_visits_behind_each_flag_signed(client, ctx, tenants):
    a, _ = tenants
    late = await add_visit(ctx, a, start_in=dt.timedelta(hours=-3))  # registered after its window had closed
    key = await auditor_key(ctx, [a.clinic_id])
    response = await client.get(f"{API}/audit/flags?{DAY}", headers=bearer(key))
    body = await response.read()
    assert response.status == 200 and verify(body, await _public_key(client)).valid
    flags = _rows(body)
    assert [(f["kind"], f["visit_ids"]) for f in flags if f["kind"] == "registered_late"] == [
        ("registered_late", [late.id])]
    csv_body = await (await client.get(f"{API}/audit/flags?{DAY}&format=csv", headers=bearer(key))).read()
    assert csv_body.decode().startswith("\ufeff") and verify(csv_body, await _public_key(client)).valid


def _verify_cli(path, public_key: str) -> tuple[int, str]:
    done = CliRunner().invoke(rastau, ["verify-export", str(path), "--public-key", public_key], prog_name="rastau")
    return done.exit_code, done.output


async def test_verify_export_fails_a_touched_file_and_says_where(client, ctx, tenants, tmp_path):
    a, _ = tenants
    for _ in range(3):
        await add_visit(ctx, a)
    _, body = await _export(client, await auditor_key(ctx, [a.clinic_id]))
    public = (await (await client.get(f"{API}/audit/signing-key")).json())["public_key"]
    lines = body.split(b"\n")
    row = json.loads(lines[1])
    row["evidence"] = "face_live"
    other = Signer.from_settings(Settings(_env_file=None, mode=Mode.DEV, signing_key=new_seed_b64()))
    resigned = json.loads(lines[-2])["rastau_signature"]
    resigned["signature"] = base64.b64encode(other.sign("rastau-export-v1", b"x")).decode()
    resigned["key_id"] = other.key_id
    cases = {
        "intact": (body, 0, "valid: 3 lines"),
        "a row edited": (b"\n".join([lines[0], json.dumps(row).encode(), *lines[2:]]), 1, None),
        "the same length": (body.replace(b'"evidence": "none"', b'"evidence": "code"', 1), 1, "SHA-256"),
        "a row removed": (b"\n".join([lines[0], *lines[2:]]), 1, "covers 3 lines before it, the file has 2"),
        "cut short": (body[: len(body) // 2], 1, "no signature line at the end"),
        "another key": (b"\n".join([*lines[:-2], json.dumps({"rastau_signature": resigned}).encode(), b""]), 1,
                        f"signed by another key (key id {other.key_id})"),
    }
    for name, (data, status, says) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(data)
        code, output = _verify_cli(path, public)
        assert code == status, f"{name}: {output}"
        assert says is None or says in output, f"{name}: {output}"
    key_file = tmp_path / "fund.pub"
    key_file.write_text(public + "\n")
    assert _verify_cli(tmp_path / "intact.jsonl", str(key_file))[0] == 0
    assert _verify_cli(tmp_path / "missing.jsonl", public)[0] == 2
    assert _verify_cli(tmp_path / "intact.jsonl", "not-a-key")[0] == 2


async def test_the_signing_key_is_public_and_is_the_one_that_signs(app, client):
    served = await (await client.get(f"{API}/audit/signing-key")).json()
    assert served == {"algorithm": "Ed25519", "public_key": app[SIGNER].public_b64, "key_id": app[SIGNER].key_id,
                      "ephemeral": True}  # the test settings are dev mode with no key: a throwaway one


def test_production_refuses_to_sign_without_its_key_and_dev_says_it_invents_one(capsys):
    with pytest.raises(MissingSecrets, match="RASTAU_SIGNING_KEY"):
        Signer.from_settings(Settings(_env_file=None, mode=Mode.PRODUCTION))
    secrets_ok = {name: base64.b64encode(b"k" * 32).decode() for name in ("code_hmac_key", "template_key",
                                                                           "api_key_pepper")}
    with pytest.raises(MissingSecrets, match="RASTAU_SIGNING_KEY is not set"):
        Settings(_env_file=None, mode=Mode.PRODUCTION, **secrets_ok).require_secrets(signing=True)
    with pytest.raises(MissingSecrets, match="exactly 32 bytes"):
        Settings(_env_file=None, mode=Mode.PRODUCTION, signing_key=base64.b64encode(b"k" * 40).decode(),
                 **secrets_ok).require_secrets(signing=True)
    seed = new_seed_b64()
    kept = Settings(_env_file=None, mode=Mode.PRODUCTION, signing_key=seed, **secrets_ok).require_secrets(signing=True)
    assert not Signer.from_settings(kept).ephemeral
    invented = Settings(_env_file=None, mode=Mode.DEV).require_secrets(signing=True)
    assert "signing_key" in capsys.readouterr().err
    assert Signer.from_settings(invented).key_id == Signer.from_settings(invented).key_id  # one key, every process


async def test_a_read_that_cannot_be_recorded_is_not_served(client, ctx, tenants, monkeypatch):
    """The audit row is committed before the first byte: when the log cannot take it, the auditor gets 503 and
    no visit at all."""
    from core.db.repositories import AuditRepo
    from core.errors import DatabaseUnavailable

    a, _ = tenants
    await add_visit(ctx, a)
    key = await auditor_key(ctx, [a.clinic_id])
    append = AuditRepo.append

    async def refuse_reads(self, at, actor, action, subject, details, **where):
        if action.startswith("auditor.read"):
            raise DatabaseUnavailable("the audit log is unreachable")
        return await append(self, at, actor, action, subject, details, **where)

    monkeypatch.setattr(AuditRepo, "append", refuse_reads)
    response, body = await _export(client, key)
    assert response.status == 503 and b"Polyclinic A" not in body and b"visit_id" not in body
