"""API keys an operator can see, expire and revoke: `rastau list-api-keys`, `rastau revoke-api-key PREFIX`,
`rastau add-api-key --expires-in 90d`; an expired or revoked key answers 401; last use is recorded cheaply."""
from __future__ import annotations

import datetime as dt
import re
import subprocess

from sqlalchemy import select

from core.cli import main as rastau_main
from core.db import tables as t
from core.services import api_keys
from tests.commands import run_command, run_command_async
from tests.server.support import bearer

API = "/api/v1"


def _env(settings) -> dict[str, str]:
    return {"RASTAU_DATABASE_URL": settings.database_url, "RASTAU_MODE": "dev",
            "RASTAU_CODE_HMAC_KEY": settings.code_hmac_key.get_secret_value(),
            "RASTAU_TEMPLATE_KEY": settings.template_key.get_secret_value(),
            "RASTAU_API_KEY_PEPPER": settings.api_key_pepper.get_secret_value()}


async def rastau(settings, *args: str) -> subprocess.CompletedProcess:
    return await run_command_async(rastau_main, "rastau", _env(settings), *args)


async def key_row(ctx, prefix: str):
    async with ctx.uow(read_only=True) as uow:
        return (await uow.conn.execute(select(t.api_keys).where(t.api_keys.c.key_prefix == prefix))).one()


async def test_an_expired_key_answers_401_saying_it_expired(client, ctx, tenants):
    a, _ = tenants
    made = await api_keys.create_api_key(ctx, a.clinic_id, ["clinic_system"], label="MIS",
                                         expires_in=dt.timedelta(days=90))
    url = f"{API}/visits?date=2026-11-25"
    assert (await client.get(url, headers=bearer(made.key))).status == 200
    ctx.clock.advance(dt.timedelta(days=90, seconds=1))
    expired = await client.get(url, headers=bearer(made.key))
    assert expired.status == 401
    problem = await expired.json()
    assert problem["code"] == "api_key_expired" and "expired" in problem["detail"]
    assert made.key not in await expired.text()


async def test_last_use_is_recorded_at_most_once_a_minute(client, ctx, tenants):
    a, _ = tenants
    made = await api_keys.create_api_key(ctx, a.clinic_id, ["clinic_system"], label="MIS")
    prefix, url = made.principal.key_prefix, f"{API}/visits?date=2026-11-25"
    assert (await key_row(ctx, prefix)).last_used_at is None
    await client.get(url, headers=bearer(made.key))
    first = (await key_row(ctx, prefix)).last_used_at
    assert first == ctx.clock.now()
    ctx.clock.advance(dt.timedelta(seconds=59))
    await client.get(url, headers=bearer(made.key))
    assert (await key_row(ctx, prefix)).last_used_at == first  # no write for every request
    ctx.clock.advance(dt.timedelta(seconds=2))
    await client.get(url, headers=bearer(made.key))
    assert (await key_row(ctx, prefix)).last_used_at == ctx.clock.now()


async def test_operator_lists_and_revokes_keys_from_the_cli(client, ctx, tenants):
    a, b = tenants
    added = await rastau(ctx.settings, "add-api-key", "--clinic", str(a.clinic_id), "--scope", "clinic_system",
                         "--scope", "webcam", "--doctor", str(a.doctor_id), "--label", "room 12 webcam",
                         "--expires-in", "90d")
    assert added.returncode == 0, added.stderr
    key = re.search(r"rk_[0-9a-f]{12}_\S+", added.stdout).group(0)
    prefix = key.split("_")[1]
    assert "expires" in added.stdout
    assert (await client.get(f"{API}/visits/999", headers=bearer(key))).status == 404  # the key works
    row = await key_row(ctx, prefix)
    assert dt.timedelta(days=89) < row.expires_at - row.created_at <= dt.timedelta(days=90)

    listed = await rastau(ctx.settings, "list-api-keys", "--clinic", str(a.clinic_id))
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if prefix in line)
    assert "room 12 webcam" in line and "clinic_system,webcam" in line and f"doctor {a.doctor_id}" in line
    assert "live" in line and "expires" in listed.stdout.lower() and "last used" in listed.stdout.lower()
    assert key not in listed.stdout and row.key_hash not in listed.stdout
    assert not any(re.search(r"rk_[0-9a-f]{12}_\S", text) for text in (listed.stdout, listed.stderr))
    b_prefixes = [k.split("_")[1] for k in b.keys.values()]
    assert not any(p in listed.stdout for p in b_prefixes)  # --clinic shows one clinic's keys
    everything = await rastau(ctx.settings, "list-api-keys")
    assert all(p in everything.stdout for p in b_prefixes)

    revoked = await rastau(ctx.settings, "revoke-api-key", prefix)
    assert revoked.returncode == 0 and f"API key {prefix} revoked" in revoked.stdout, revoked.stderr
    refused = await client.get(f"{API}/visits/999", headers=bearer(key))
    assert refused.status == 401 and (await refused.json())["code"] == "invalid_api_key"
    again = await rastau(ctx.settings, "revoke-api-key", prefix)
    assert again.returncode == 2 and "already revoked" in again.stderr
    unknown = await rastau(ctx.settings, "revoke-api-key", "0123456789ab")
    assert unknown.returncode == 2 and "no API key with prefix 0123456789ab" in unknown.stderr
    assert "revoked" in (await rastau(ctx.settings, "list-api-keys", "--clinic", str(a.clinic_id))).stdout
    async with ctx.uow(read_only=True) as uow:
        actions = [(r.action, r.details) for r in await uow.audit.records()]
    assert ("api_key.revoke", {"clinic": a.clinic_id, "prefix": prefix}) in actions


def test_an_unreadable_expiry_is_refused_plainly(tmp_path):
    from tests.conftest import test_settings

    settings = test_settings(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    for bad in ("90", "90x", "0d", "-1d", "d"):
        done = run_command(rastau_main, "rastau", _env(settings), "add-api-key", "--clinic", "1", "--scope", "admin",
                           f"--expires-in={bad}")
        assert done.returncode == 2 and "--expires-in" in done.stderr and "90d" in done.stderr, (bad, done.stderr)
