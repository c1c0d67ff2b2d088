"""``rastau``: operator commands shared by the server and the bot (migrations, audit chain, directory)."""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys

from core.clock import SystemClock, to_local
from core.config import Settings
from core.db.engine import create_engine
from core.db.migrate import current_revision, head_revision, upgrade_to_head
from core.db.uow import UnitOfWorkFactory
from core.errors import DomainError
from core.logs import configure_logging
from core.services import Context, keys, registry


async def _migrate(settings: Settings) -> int:
    engine = create_engine(settings.database_url)
    try:
        before = await current_revision(engine)
        await upgrade_to_head(engine)
        print(f"schema upgraded: {before or 'empty'} -> {head_revision()}")
    finally:
        await engine.dispose()
    return 0


async def _verify_audit(settings: Settings) -> int:
    from core.audit import find_break
    engine = create_engine(settings.database_url)
    try:
        async with UnitOfWorkFactory(engine)() as uow:
            records = await uow.audit.records()
            head_seq, head_hash = await uow.audit.head()
    finally:
        await engine.dispose()
    broken = find_break(records)
    if broken is None and records and (records[-1].seq != head_seq or records[-1].hash != head_hash):
        print(f"audit chain BROKEN at row {records[-1].seq + 1}: rows after {records[-1].seq} were deleted "
              f"(head says {head_seq})")
        return 1
    if broken is None and not records and head_seq:
        print(f"audit chain BROKEN at row 1: all {head_seq} rows were deleted")
        return 1
    if broken:
        print(f"audit chain BROKEN at row {broken.seq}: {broken.reason}")
        return 1
    print(f"audit chain intact: {len(records)} rows")
    return 0


async def _directory(settings: Settings, args) -> int:
    settings = settings.require_secrets()
    engine = create_engine(settings.database_url)
    try:
        ctx = Context.build(settings, UnitOfWorkFactory(engine), SystemClock())
        if args.command == "add-clinic":
            clinic = await registry.create_clinic(ctx, args.name)
            print(f"clinic {clinic.id}: {clinic.name}")
        elif args.command == "add-doctor":
            doctor = await registry.add_doctor(ctx, args.clinic, args.name, args.phone, args.external_ref)
            print(f"doctor {doctor.id}: {doctor.full_name} {doctor.phone}")
        elif args.command == "add-admin":
            admin = await registry.add_admin(ctx, args.clinic, args.name, args.phone)
            print(f"clinic admin {admin.id}: {admin.full_name} {admin.phone}")
        elif args.command == "add-api-key":
            made = await keys.create_api_key(ctx, args.clinic, args.scope, args.doctor, args.label, args.expires_in)
            scopes = ", ".join(sorted(s.value for s in made.principal.scopes))
            doctor = f", doctor {args.doctor}" if args.doctor else ""
            expiry = f"expires {_local(made.expires_at)} Asia/Almaty" if made.expires_at else "never expires"
            print(f"API key {made.principal.key_prefix} for clinic {args.clinic} ({scopes}{doctor}; {expiry}):\n\n"
                  f"    {made.key}\n\n"
                  "Store it in the clinic system's configuration now: it is shown only this once and cannot be "
                  "recovered (Rastau keeps only a hash).", file=sys.stdout)
        elif args.command == "list-api-keys":
            _print_keys(await keys.list_api_keys(ctx, args.clinic), ctx.clock.now())
        elif args.command == "revoke-api-key":
            revoked = await keys.revoke_api_key(ctx, args.prefix)
            print(f"API key {revoked.prefix} revoked (clinic {revoked.clinic_id}, {revoked.label or 'no label'}); "
                  "requests with it now answer 401")
    finally:
        await engine.dispose()
    return 0


def _local(moment: dt.datetime | None) -> str:
    return to_local(moment).strftime("%Y-%m-%d %H:%M") if moment else "-"


_KEY_COLUMNS = "{:<13} {:>6}  {:<8} {:<27} {:<11} {:<16}  {:<16}  {:<16}  {}"


def _print_keys(found: list[keys.ApiKeyInfo], now: dt.datetime) -> None:
    """One line per key: prefix and facts, never the key or its hash. Times in Asia/Almaty."""
    if not found:
        print("no API keys")
        return
    print(_KEY_COLUMNS.format("prefix", "clinic", "status", "scopes", "doctor", "created", "expires", "last used",
                              "label") + "   (times: Asia/Almaty)")
    for key in found:
        print(_KEY_COLUMNS.format(key.prefix, key.clinic_id, key.status(now), ",".join(sorted(key.scopes)),
                                  f"doctor {key.doctor_id}" if key.doctor_id else "any", _local(key.created_at),
                                  _local(key.expires_at) if key.expires_at else "never",
                                  _local(key.last_used_at) if key.last_used_at else "never", key.label))


def _lifetime(text: str) -> dt.timedelta:
    try:
        return keys.parse_lifetime(text)
    except DomainError as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rastau", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="upgrade the database schema to this version's head")
    sub.add_parser("audit-verify", help="check the audit log's hash chain; names the first broken row")
    p = sub.add_parser("add-clinic", help="register a clinic")
    p.add_argument("name")
    for name in ("add-doctor", "add-admin"):
        p = sub.add_parser(name, help=f"register a clinic's {name[4:]}")
        p.add_argument("--clinic", type=int, required=True)
        p.add_argument("--name", required=True)
        p.add_argument("--phone", required=True)
        if name == "add-doctor":
            p.add_argument("--external-ref", default=None)
    p = sub.add_parser("add-api-key", help="make a clinic API key for the verification server (shown once)")
    p.add_argument("--clinic", type=int, required=True)
    p.add_argument("--scope", action="append", required=True, choices=["clinic_system", "webcam", "admin"],
                   help="repeat for several scopes")
    p.add_argument("--doctor", type=int, default=None, help="bind the key to this doctor's visits only")
    p.add_argument("--label", default="", help="where the key is used, e.g. 'MIS reception' or 'room 12 webcam'")
    p.add_argument("--expires-in", type=_lifetime, default=None, metavar="90d|12h",
                   help="the key answers 401 after this many days (d) or hours (h) [default: never]")
    p = sub.add_parser("list-api-keys", help="list API keys: prefix, clinic, status, scopes, doctor, created, "
                                             "expires, last used, label (never the key or its hash)")
    p.add_argument("--clinic", type=int, default=None, help="only this clinic's keys")
    p = sub.add_parser("revoke-api-key", help="revoke an API key by its prefix; it answers 401 from now on")
    p.add_argument("prefix", help="the 12-character prefix shown by add-api-key and list-api-keys")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)  # library warnings pass the same redaction
    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        if args.command == "audit-verify":
            return asyncio.run(_verify_audit(settings))
        return asyncio.run(_directory(settings, args))
    except DomainError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
