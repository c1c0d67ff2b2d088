"""``rastau``: operator commands shared by the server and the bot (migrations, audit chain, directory)."""
from __future__ import annotations

import argparse
import asyncio
import sys

from core.clock import SystemClock
from core.config import Settings
from core.db.engine import create_engine
from core.db.migrate import current_revision, head_revision, upgrade_to_head
from core.db.uow import UnitOfWorkFactory
from core.errors import DomainError
from core.services import Context, registry


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
            from core.services import keys
            made = await keys.create_api_key(ctx, args.clinic, args.scope, args.doctor, args.label)
            scopes = ", ".join(sorted(s.value for s in made.principal.scopes))
            doctor = f", doctor {args.doctor}" if args.doctor else ""
            print(f"API key {made.principal.key_prefix} for clinic {args.clinic} ({scopes}{doctor}):\n\n"
                  f"    {made.key}\n\n"
                  "Store it in the clinic system's configuration now: it is shown only this once and cannot be "
                  "recovered (Rastau keeps only a hash).", file=sys.stdout)
    finally:
        await engine.dispose()
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
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
