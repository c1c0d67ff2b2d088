"""Auditors as the operator makes them: their clinics, their keys, their removal; and what the database itself refuses
(a key of no owner, or of a clinic and an auditor at once)."""
from __future__ import annotations

import secrets

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select

from core.audit import OPERATOR_CHAIN
from core.cli import main as rastau
from core.db import tables as t
from core.errors import ConcurrentWrite, Conflict, InvalidValue, NotFound
from core.services import api_keys, auditors, registry
from core.services.api_keys import AuditorPrincipal, Scope
from tests.conftest import migrate_from_template


async def _operator_rows(ctx) -> list:
    async with ctx.uow(read_only=True) as uow:
        return await uow.audit.records(OPERATOR_CHAIN)


async def test_an_auditor_reads_the_clinics_given_and_the_key_says_so_on_every_request(ctx, clinic_world):
    other = await registry.create_clinic(ctx, "Polyclinic No. 9")
    auditor = await auditors.add_auditor(ctx, "Saule Auditor", "8 701 999 88 77", clinic_ids=[clinic_world.clinic.id])
    assert (auditor.phone, auditor.clinic_ids, auditor.all_clinics) == ("+77019998877", (clinic_world.clinic.id,),
                                                                        False)
    made = await api_keys.create_auditor_key(ctx, auditor.id, "fund laptop")
    found = await api_keys.authenticate(ctx, made.key)
    assert found == AuditorPrincipal(made.principal.key_id, made.principal.key_prefix, auditor.id,
                                     frozenset({clinic_world.clinic.id}))
    assert found.scopes == frozenset({Scope.AUDIT})

    everywhere = await auditors.add_auditor(ctx, "Fund HQ", "+7 702 111 00 00", all_clinics=True)
    wide = await api_keys.authenticate(ctx, (await api_keys.create_auditor_key(ctx, everywhere.id)).key)
    assert isinstance(wide, AuditorPrincipal) and wide.clinic_ids is None  # every clinic, those added later too
    assert other.id is not None

    actions = [(r.action, r.subject) for r in await _operator_rows(ctx)]
    assert ("auditor.create", f"auditor:{auditor.id}") in actions
    assert ("api_key.create", f"api_key:{made.principal.key_id}") in actions


async def test_removing_an_auditor_shuts_every_key_of_theirs_at_once(ctx, clinic_world):
    auditor = await auditors.add_auditor(ctx, "Saule Auditor", "87019998877", clinic_ids=[clinic_world.clinic.id])
    first = await api_keys.create_auditor_key(ctx, auditor.id)
    second = await api_keys.create_auditor_key(ctx, auditor.id)
    removed, revoked = await auditors.remove_auditor(ctx, auditor.id)
    assert removed.removed_at == ctx.clock.now()
    assert revoked == sorted([first.principal.key_prefix, second.principal.key_prefix])
    assert await api_keys.authenticate(ctx, first.key) is None
    assert await api_keys.authenticate(ctx, second.key) is None
    with pytest.raises(Conflict, match="already removed"):
        await auditors.remove_auditor(ctx, auditor.id)
    with pytest.raises(Conflict, match="was removed"):
        await api_keys.create_auditor_key(ctx, auditor.id)
    assert ("auditor.remove", f"auditor:{auditor.id}") in [(r.action, r.subject) for r in await _operator_rows(ctx)]


async def test_a_removed_auditor_whose_key_escaped_revocation_is_still_refused(ctx, clinic_world):
    """The auditor's row is read with the key on every request: a key left live (e.g. restored from a backup of
    api_keys) of a removed auditor reads nothing."""
    auditor = await auditors.add_auditor(ctx, "Saule Auditor", "87019998877", clinic_ids=[clinic_world.clinic.id])
    made = await api_keys.create_auditor_key(ctx, auditor.id)
    async with ctx.uow() as uow:
        await uow.auditors.remove(auditor.id, ctx.clock.now())  # the auditor only, not the keys
        await uow.commit()
    assert await api_keys.authenticate(ctx, made.key) is None


@pytest.mark.parametrize("clinics, everywhere", [([], False), ([1], True)])
async def test_an_auditor_reads_listed_clinics_or_all_never_both_or_neither(ctx, clinic_world, clinics, everywhere):
    with pytest.raises(InvalidValue, match="either the clinics listed or all clinics"):
        await auditors.add_auditor(ctx, "A", "87019998877", clinic_ids=clinics, all_clinics=everywhere)


async def test_an_unknown_clinic_or_a_second_auditor_on_one_phone_is_refused_and_nothing_is_written(ctx, clinic_world):
    with pytest.raises(NotFound, match="clinic 999"):
        await auditors.add_auditor(ctx, "A", "87019998877", clinic_ids=[clinic_world.clinic.id, 999])
    assert await auditors.list_auditors(ctx) == []
    await auditors.add_auditor(ctx, "A", "87019998877", all_clinics=True)
    with pytest.raises(Conflict, match="phone number exists"):
        await auditors.add_auditor(ctx, "B", "+7 701 999 88 77", all_clinics=True)
    assert [a.full_name for a in await auditors.list_auditors(ctx)] == ["A"]


async def test_a_clinic_key_never_gets_the_audit_scope(ctx, clinic_world):
    with pytest.raises(InvalidValue, match="a clinic does not audit itself"):
        await api_keys.create_api_key(ctx, clinic_world.clinic.id, ["admin", "audit"])


async def test_the_database_refuses_a_key_of_no_owner_or_of_two(ctx, clinic_world):
    auditor = await auditors.add_auditor(ctx, "A", "87019998877", all_clinics=True)
    for owners in ({"clinic_id": None, "auditor_id": None}, {"clinic_id": clinic_world.clinic.id,
                                                              "auditor_id": auditor.id}):
        with pytest.raises(ConcurrentWrite):
            async with ctx.uow() as uow:
                await uow.conn.execute(insert(t.api_keys).values(
                    key_prefix=secrets.token_hex(6), key_hash="0" * 64, scopes="audit", label="",
                    created_at=ctx.clock.now(), **owners))
                await uow.commit()
    async with ctx.uow(read_only=True) as uow:
        assert (await uow.conn.execute(select(t.api_keys))).all() == []


def test_the_operator_makes_lists_and_removes_auditors_from_the_command_line(tmp_path, monkeypatch):
    import asyncio

    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    asyncio.run(migrate_from_template(url))
    monkeypatch.setenv("RASTAU_DATABASE_URL", url)
    monkeypatch.setenv("RASTAU_MODE", "production")
    for secret in ("RASTAU_CODE_HMAC_KEY", "RASTAU_TEMPLATE_KEY", "RASTAU_API_KEY_PEPPER"):
        monkeypatch.setenv(secret, secrets.token_urlsafe(32))
    monkeypatch.chdir(tmp_path)  # no .env of the checkout

    def run(*argv: str) -> str:
        done = CliRunner().invoke(rastau, list(argv), prog_name="rastau")
        assert done.exit_code == 0, done.output
        return done.output

    run("add-clinic", "Polyclinic No. 5")
    run("add-clinic", "Polyclinic No. 9")
    assert "auditor 1: Saule A. +77019998877, reads clinics 1,2" in run(
        "add-auditor", "--name", "Saule A.", "--phone", "8 701 999 88 77", "--clinics", "2,1")
    made = run("add-api-key", "--auditor", "1", "--expires-in", "90d")
    assert "for auditor 1 (audit, read only; expires" in made and "rk_" in made
    listed = run("list-api-keys")
    assert "auditor 1" in listed and "audit" in listed
    assert "    1  active" in run("list-auditors") and "clinics 1,2" in run("list-auditors")
    prefix = made.split()[2]
    assert f"keys revoked: {prefix}" in run("remove-auditor", "1")
    assert "removed" in run("list-auditors")


@pytest.mark.parametrize("argv, says", [
    (["add-auditor", "--name", "A", "--phone", "87019998877"], "--clinics 1,2 or --all"),
    (["add-auditor", "--name", "A", "--phone", "87019998877", "--clinics", "1", "--all"], "--clinics 1,2 or --all"),
    (["add-auditor", "--name", "A", "--phone", "87019998877", "--clinics", "1,x"], "clinic ids like 1,2,5"),
    (["add-api-key", "--auditor", "1", "--scope", "admin"], "audit scope only"),
    (["add-api-key", "--auditor", "1", "--clinic", "1", "--scope", "admin"], "either --clinic"),
    (["add-api-key", "--clinic", "1"], "at least one --scope"),
    (["add-api-key", "--clinic", "1", "--scope", "audit"], "--scope"),
])
def test_a_wrong_auditor_command_line_exits_2_before_anything_runs(argv, says):
    done = CliRunner().invoke(rastau, argv, prog_name="rastau")
    assert done.exit_code == 2 and says in done.output, done.output
