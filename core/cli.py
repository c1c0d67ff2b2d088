"""``rastau``: operator commands shared by the server and the bot (migrations, audit chain, directory).

Written with click, like ``rastau-enrol``: one library for every console script (click is a dependency anyway),
with typed options that are refused before any work, exit status 2, naming the option.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import io
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import click
from click.decorators import FC

from core import csvfile, signing
from core.audit import GLOBAL_CHAIN, ChainBreak, clinic_chain, find_break
from core.checkpoint import BadCheckpoint, Checkpoint, check_chain, first_break, read_checkpoint
from core.clock import SystemClock, to_local
from core.config import Settings
from core.db.engine import create_engine
from core.db.migrate import current_revision, head_revision, upgrade_to_head
from core.db.repositories import StoredAuditor
from core.db.uow import UnitOfWorkFactory
from core.errors import DomainError, InvalidValue
from core.logs import configure_logging
from core.model import OutboxStatus
from core.services import Context, api_keys, auditors, flag_lists, payer, registry
from core.services.checkpoints import checkpoint_now
from core.services.flags import find_flags, flags_csv

EXIT_OK, EXIT_AUDIT_BROKEN, EXIT_REFUSED = 0, 1, 2  # 2 is also click's status for a command line it refuses
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
_READABLE_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _run(work: Callable[[Settings], Coroutine[Any, Any, int]]) -> NoReturn:
    """Run one command: settings from the environment, logs through the usual redaction, and a request the
    domain refuses (unknown clinic, duplicate phone, revoked key…) reported as ``error: …`` with status 2."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)  # library warnings pass the same redaction
    try:
        code = asyncio.run(work(settings))
    except DomainError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        code = EXIT_REFUSED
    raise SystemExit(code)


def _in_directory(act: Callable[[Context], Awaitable[None]]) -> NoReturn:
    """Run ``act`` on the clinics directory (clinics, staff, API keys), which needs the secrets."""
    async def work(settings: Settings) -> int:
        await _directory_work(settings, act)
        return EXIT_OK

    _run(work)


async def _directory_work(settings: Settings, act: Callable[[Context], Awaitable[None]]) -> None:
    """What _in_directory runs, for a command whose exit status depends on the outcome."""
    settings = settings.require_secrets()
    engine = create_engine(settings.database_url)
    try:
        await act(Context.build(settings, UnitOfWorkFactory(engine), SystemClock()))
    finally:
        await engine.dispose()


class _InWorkflowOrder(click.Group):
    """Lists the commands in the order an operator meets them (schema first), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_InWorkflowOrder, context_settings=CONTEXT_SETTINGS)
def main() -> None:
    """Operator commands for Rastau: the database schema, the audit log, clinics, their staff and API keys.

    Settings come from RASTAU_* environment variables or a .env file in the working directory
    (RASTAU_DATABASE_URL names the database; the directory commands need the same secrets as the server).
    Exit status: 0 done, 1 the audit chain is broken, 2 the request was refused (the reason is printed).
    """


@main.command()
def migrate() -> NoReturn:
    """Upgrade the database schema to this version's head.

    Run it after every upgrade, before starting the server and the bot: they refuse to start on an old
    schema and say so.
    """
    async def work(settings: Settings) -> int:
        engine = create_engine(settings.database_url)
        try:
            before = await current_revision(engine)
            await upgrade_to_head(engine)
            click.echo(f"schema upgraded: {before or 'empty'} -> {head_revision()}")
        finally:
            await engine.dispose()
        return EXIT_OK

    _run(work)


@main.command("audit-verify")
@click.option("--clinic", "clinic_id", type=int, help="Check only this clinic's chain.")
@click.option("--checkpoint", "checkpoints", multiple=True, type=_READABLE_FILE, metavar="FILE",
              help="a signed checkpoint (rastau audit-checkpoint, or the file the auditors received): prove that no "
                   "row it covers was changed or removed since, even re-hashed; repeat it to narrow a change down")
@click.option("--public-key", "public_key", default=None, metavar="KEY|FILE",
              help="with --checkpoint: the signing key's public half (base64, a file, or PEM) [default: the "
                   "public half of RASTAU_SIGNING_KEY]")
def audit_verify(clinic_id: int | None, checkpoints: tuple[Path, ...], public_key: str | None) -> NoReturn:
    """Check the audit log's hash chains: every clinic's, the operator's and the closed global one.

    Names each broken chain and its first broken row; exit status 1 when a row was changed, rows were deleted
    from the middle or the end, or a clinic's whole chain is gone. With --checkpoint, also each chain the
    checkpoint signed against it: whoever rewrites the table and recomputes every hash still fails here.
    A checkpoint that cannot be read or whose signature does not hold: exit status 2.
    """
    _run(lambda settings: _verify_audit(settings, clinic_id, checkpoints, public_key))


def _read_checkpoints(settings: Settings, files: tuple[Path, ...], public_key: str | None) -> list[Checkpoint]:
    """Every checkpoint with its signature checked, or a refusal naming the file (exit status 2)."""
    if not files:
        return []
    try:
        if public_key is not None:
            given = Path(public_key)
            public = signing.load_public_key(given.read_text() if given.is_file() else public_key)
        else:
            public = signing.Signer.from_settings(settings).public
        return [read_checkpoint(path.read_text(encoding="utf-8"), public) for path in files]
    except (OSError, UnicodeDecodeError, signing.BadKey, BadCheckpoint) as exc:
        raise InvalidValue(f"checkpoint refused: {exc}") from None


async def _verify_audit(settings: Settings, clinic_id: int | None, checkpoint_files: tuple[Path, ...] = (),
                        public_key: str | None = None) -> int:
    checkpoints = _read_checkpoints(settings, checkpoint_files, public_key)
    engine = create_engine(settings.database_url)
    try:
        async with UnitOfWorkFactory(engine)(read_only=True) as uow:
            clinics = [await uow.clinics.get(clinic_id)] if clinic_id is not None else await uow.clinics.list()
            chains = [clinic_chain(clinic_id)] if clinic_id is not None else await uow.audit.chains()
            heads = {head.chain: head for head in await uow.audit.heads()}
            opened_before_chains = {r.subject for r in await uow.audit.records(GLOBAL_CHAIN)
                                    if r.action == "clinic.create"}
            signed = {h.chain for cp in checkpoints for h in cp.heads if clinic_id is None or h.chain in chains}
            rows = {chain: await uow.audit.records(chain) for chain in sorted(set(chains) | signed)}
    finally:
        await engine.dispose()
    checked = {chain: first_break([check_chain(h, rows[chain]) for cp in checkpoints for h in cp.heads
                                   if h.chain == chain]) for chain in sorted(signed)}
    for chain, moved in checked.items():
        if moved is None:
            covered = max(h.seq for cp in checkpoints for h in cp.heads if h.chain == chain)
            click.echo(f"audit chain {chain} matches the checkpoint: rows 1-{covered} unchanged")
        else:
            click.echo(f"audit chain {chain} CHANGED since the checkpoint, at row {moved.seq}: {moved.reason}")
    breaks = {chain: find_break(chain, records, heads.get(chain)) for chain, records in rows.items()}
    for clinic in clinics:  # a clinic's creation opens its chain (or lies in the global chain, before 0006)
        chain = clinic_chain(clinic.id or 0)
        if not rows.get(chain) and chain not in heads and f"clinic:{clinic.id}" not in opened_before_chains:
            breaks[chain] = ChainBreak(chain, 1, f"clinic {clinic.id} exists but its whole chain is missing")
    for chain, broken in sorted(breaks.items()):
        if broken is None:
            click.echo(f"audit chain {chain} intact: {len(rows[chain])} rows")
        else:
            click.echo(f"audit chain {chain} BROKEN at row {broken.seq}: {broken.reason}")
    return EXIT_AUDIT_BROKEN if any(breaks.values()) or any(checked.values()) else EXIT_OK


@main.command("audit-checkpoint")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, writable=True, path_type=Path),
              metavar="FILE", help="where to write the signed checkpoint (JSON); keep it away from this database")
def audit_checkpoint(out: Path) -> NoReturn:
    """Sign the current head of every audit chain (with RASTAU_SIGNING_KEY) into FILE.

    The bot pushes one to the auditors and the payer's webhook every RASTAU_CHECKPOINT_MINUTES; this makes one
    on demand. Later, rastau audit-verify --checkpoint FILE proves no row up to these heads changed.
    """
    async def work(settings: Settings) -> int:
        engine = create_engine(settings.database_url)
        try:
            ctx = Context.build(settings.require_secrets(signing=True), UnitOfWorkFactory(engine), SystemClock())
            checkpoint, text = await checkpoint_now(ctx, signing.Signer.from_settings(ctx.settings))
        finally:
            await engine.dispose()
        await asyncio.to_thread(out.write_text, text, encoding="utf-8")
        click.echo(f"checkpoint of {len(checkpoint.heads)} chains ({sum(h.seq for h in checkpoint.heads)} rows), "
                   f"key {checkpoint.key_id}, written to {out}")
        return EXIT_OK

    _run(work)


@main.command("add-clinic")
@click.argument("name")
def add_clinic(name: str) -> NoReturn:
    """Register a clinic named NAME; prints its id.

    The other commands take that id as --clinic.
    """
    async def act(ctx: Context) -> None:
        clinic = await registry.create_clinic(ctx, name)
        click.echo(f"clinic {clinic.id}: {clinic.name}")

    _in_directory(act)


def _clinic_option(**extra: Any) -> Callable[[FC], FC]:
    return click.option("--clinic", "clinic_id", type=int, metavar="ID",
                        help="the clinic's id (printed by add-clinic)", **extra)


def _staff_options(command: FC) -> FC:
    """--clinic, --name and --phone: the same for doctors and admins."""
    command = click.option("--phone", required=True,
                           help="Kazakhstan mobile number in any common spelling, e.g. '8 701 111 22 33'; "
                                "the bot recognises the person by it")(command)
    command = click.option("--name", required=True, help="full name as patients and admins will see it")(command)
    return _clinic_option(required=True)(command)


@main.command("add-doctor")
@_staff_options
@click.option("--external-ref", default=None, metavar="REF",
              help="the doctor's id in the clinic information system, if it has one")
def add_doctor(clinic_id: int, name: str, phone: str, external_ref: str | None) -> NoReturn:
    """Register a clinic's doctor."""
    async def act(ctx: Context) -> None:
        doctor = await registry.add_doctor(ctx, clinic_id, name, phone, external_ref)
        click.echo(f"doctor {doctor.id}: {doctor.full_name} {doctor.phone}")

    _in_directory(act)


@main.command("add-admin")
@_staff_options
def add_admin(clinic_id: int, name: str, phone: str) -> NoReturn:
    """Register a clinic's admin.

    Admins get the daily digest and the patients' disputes in the bot.
    """
    async def act(ctx: Context) -> None:
        admin = await registry.add_admin(ctx, clinic_id, name, phone)
        click.echo(f"clinic admin {admin.id}: {admin.full_name} {admin.phone}")

    _in_directory(act)


class Lifetime(click.ParamType[dt.timedelta]):
    """A key lifetime like ``90d`` or ``12h``; the domain's own rule (api_keys.parse_lifetime) decides."""
    name = "lifetime"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.timedelta:
        if isinstance(value, dt.timedelta):
            return value
        try:
            return api_keys.parse_lifetime(value)
        except DomainError as exc:
            self.fail(exc.detail, param, ctx)


@main.command("add-api-key")
@_clinic_option(default=None)
@click.option("--auditor", "auditor_id", type=int, default=None, metavar="ID",
              help="instead of --clinic: a key for this auditor (printed by add-auditor), which reads the evidence "
                   "of the auditor's clinics and writes nothing (the audit scope; no --scope)")
@click.option("--scope", "scopes", multiple=True, type=click.Choice([s.value for s in api_keys.CLINIC_SCOPES]),
              help="a clinic key's powers; repeat for several: clinic_system (the clinic information system: "
                   "patients, consent, enrolment, visits, codes), webcam (a doctor's webcam: face and code "
                   "checks), admin (digests, CSV, visit lists)")
@click.option("--doctor", "doctor_id", type=int, default=None, metavar="ID",
              help="bind the key to this doctor's visits only")
@click.option("--label", default="", help="where the key is used, e.g. 'MIS reception' or 'room 12 webcam'")
@click.option("--expires-in", "lifetime", type=Lifetime(), default=None, metavar="90d|12h",
              help="the key answers 401 after this many days (d) or hours (h) [default: never]")
def add_api_key(clinic_id: int | None, auditor_id: int | None, scopes: tuple[str, ...], doctor_id: int | None,
                label: str, lifetime: dt.timedelta | None) -> NoReturn:
    """Make an API key for the verification server: a clinic's (--clinic and --scope) or an auditor's (--auditor).

    The key is printed once and cannot be recovered: Rastau keeps only a hash.
    """
    if (clinic_id is None) == (auditor_id is None):
        raise click.UsageError("give either --clinic (a clinic's key) or --auditor (an auditor's key)")
    if auditor_id is not None and (scopes or doctor_id is not None):
        raise click.UsageError("an auditor's key has the audit scope only: drop --scope and --doctor")
    if clinic_id is not None and not scopes:
        raise click.UsageError("a clinic's key needs at least one --scope")

    async def act(ctx: Context) -> None:
        if auditor_id is not None:
            made = await api_keys.create_auditor_key(ctx, auditor_id, label, lifetime)
            owner, granted, where = f"auditor {auditor_id}", "audit, read only", "the auditor's tool"
        else:
            assert clinic_id is not None  # one of the two, checked above
            made = await api_keys.create_api_key(ctx, clinic_id, list(scopes), doctor_id, label, lifetime)
            owner, where = f"clinic {clinic_id}", "the clinic system's configuration"
            granted = ", ".join(sorted(s.value for s in made.principal.scopes))
            granted += f", doctor {doctor_id}" if doctor_id else ""
        expiry = f"expires {_local(made.expires_at)} Asia/Almaty" if made.expires_at else "never expires"
        click.echo(f"API key {made.principal.key_prefix} for {owner} ({granted}; {expiry}):\n\n"
                   f"    {made.key}\n\n"
                   f"Store it in {where} now: it is shown only this once and cannot be "
                   "recovered (Rastau keeps only a hash).")

    _in_directory(act)


@main.command("list-api-keys")
@_clinic_option(default=None)
def list_api_keys(clinic_id: int | None) -> NoReturn:
    """List API keys, never the key or its hash.

    One line per key: prefix, clinic, status, scopes, doctor, created, expires, last used, label. Without
    --clinic, every clinic's keys. Times are Asia/Almaty.
    """
    async def act(ctx: Context) -> None:
        _print_keys(await api_keys.list_api_keys(ctx, clinic_id), ctx.clock.now())

    _in_directory(act)


@main.command("revoke-api-key")
@click.argument("prefix")
def revoke_api_key(prefix: str) -> NoReturn:
    """Revoke an API key: it answers 401 from now on.

    PREFIX is the 12-character prefix shown by add-api-key and list-api-keys. The revocation is audit-logged.
    """
    async def act(ctx: Context) -> None:
        revoked = await api_keys.revoke_api_key(ctx, prefix)
        click.echo(f"API key {revoked.prefix} revoked (clinic {revoked.clinic_id}, {revoked.label or 'no label'}); "
                   "requests with it now answer 401")

    _in_directory(act)


def _local(moment: dt.datetime | None) -> str:
    return to_local(moment).strftime("%Y-%m-%d %H:%M") if moment else "-"


_KEY_COLUMNS = "{:<13} {:>6}  {:<8} {:<27} {:<11} {:<16}  {:<16}  {:<16}  {}"


def _print_keys(found: list[api_keys.ApiKeyInfo], now: dt.datetime) -> None:
    """One line per key: prefix and facts, never the key or its hash. Times in Asia/Almaty."""
    if not found:
        click.echo("no API keys")
        return
    click.echo(_KEY_COLUMNS.format("prefix", "clinic", "status", "scopes", "doctor", "created", "expires",
                                   "last used", "label") + "   (times: Asia/Almaty)")
    for key in found:
        owner = key.clinic_id if key.clinic_id is not None else f"auditor {key.auditor_id}"
        click.echo(_KEY_COLUMNS.format(key.prefix, owner, key.status(now), ",".join(sorted(key.scopes)),
                                       f"doctor {key.doctor_id}" if key.doctor_id else "any",
                                       _local(key.created_at), _local(key.expires_at) if key.expires_at else "never",
                                       _local(key.last_used_at) if key.last_used_at else "never", key.label))


# --- the payer's auditors (issue 12) --------------------------------------------------------------------------------

class ClinicList(click.ParamType[list[int]]):
    """Clinic ids separated by commas, e.g. ``1,2,5``."""
    name = "clinic ids"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        parts = [part.strip() for part in str(value).split(",")]
        if not all(part.isascii() and part.isdigit() and 0 < int(part) < 2**31 for part in parts):
            self.fail(f"{value!r} is not a list of clinic ids like 1,2,5", param, ctx)
        return [int(part) for part in parts]


@main.command("add-auditor")
@click.option("--name", required=True, help="full name, as the audit log and the chat will show it")
@click.option("--phone", required=True, help="Kazakhstan mobile number in any common spelling; the bot will "
                                             "recognise the auditor by it")
@click.option("--clinics", "clinic_ids", type=ClinicList(), default=None, metavar="1,2",
              help="the clinics the auditor reads")
@click.option("--all", "all_clinics", is_flag=True, help="instead of --clinics: every clinic, those added later too")
@click.option("--language", type=click.Choice(["kk", "ru"]), default="ru", show_default=True,
              help="the auditor's language in the chat")
def add_auditor(name: str, phone: str, clinic_ids: list[int] | None, all_clinics: bool, language: str) -> NoReturn:
    """Register an auditor of the payer: reads the evidence of the clinics given, never writes.

    Then make the auditor a key with add-api-key --auditor ID. Audit-logged.
    """
    if (clinic_ids is None) == (not all_clinics):
        raise click.UsageError("give either --clinics 1,2 or --all")

    async def act(ctx: Context) -> None:
        auditor = await auditors.add_auditor(ctx, name, phone, clinic_ids=clinic_ids or (),
                                             all_clinics=all_clinics, language=language)
        click.echo(f"auditor {auditor.id}: {auditor.full_name} {auditor.phone}, reads {_scope(auditor)}")

    _in_directory(act)


@main.command("list-auditors")
def list_auditors() -> NoReturn:
    """List auditors: id, status, phone, language, the clinics each reads, name."""
    async def act(ctx: Context) -> None:
        found = await auditors.list_auditors(ctx)
        if not found:
            click.echo("no auditors")
        for auditor in found:
            status = f"removed {_local(auditor.removed_at)}" if auditor.removed_at else "active"
            click.echo(f"{auditor.id:>5}  {status:<24} {auditor.phone}  {auditor.language.value}  "
                       f"{_scope(auditor):<24} {auditor.full_name}")

    _in_directory(act)


@main.command("remove-auditor")
@click.argument("auditor_id", type=int, metavar="ID")
def remove_auditor(auditor_id: int) -> NoReturn:
    """Remove an auditor: every key of theirs answers 401 at once. Audit-logged; the row stays for the log."""
    async def act(ctx: Context) -> None:
        auditor, revoked = await auditors.remove_auditor(ctx, auditor_id)
        keys = ", ".join(revoked) if revoked else "none"
        click.echo(f"auditor {auditor.id} ({auditor.full_name}) removed; keys revoked: {keys}")

    _in_directory(act)


def _scope(auditor: StoredAuditor) -> str:
    return "all clinics" if auditor.all_clinics else "clinics " + ",".join(map(str, auditor.clinic_ids))


EXPORT_VALID, EXPORT_TAMPERED, EXPORT_UNREADABLE = 0, 1, 2


@main.command("payer-events")
@click.option("--failed", is_flag=True, help="only the dead letters: events given up after every retry failed")
@click.option("--requeue", "requeue", type=int, default=None, metavar="ID",
              help="send this failed event again, with a fresh retry budget (after the payer fixed its receiver)")
def payer_events(failed: bool, requeue: int | None) -> NoReturn:
    """The events for the payer's webhook (RASTAU_PAYER_WEBHOOK_URL): disputes, flags, checkpoints, and their state.

    Delivered at least once by the bot; an event whose every retry failed stays here as a dead letter until
    requeued. The payer dedupes by event id, so a requeued event that had in fact arrived does no harm.
    """
    async def act(ctx: Context) -> None:
        if requeue is not None:
            await payer.requeue_payer_event(ctx, requeue)
            click.echo(f"payer event {requeue} queued again")
            return
        for e in await payer.payer_events(ctx, OutboxStatus.FAILED if failed else None):
            click.echo(f"{e.outbox_id}\t{e.status}\t{e.event_type}\t{e.event_id}\tcreated {_local(e.created_at)}"
                       f"\tsent {_local(e.sent_at)}\tfailures {e.failures}\t{e.last_error or ''}")

    _in_directory(act)


@main.command("verify-export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--public-key", "public_key", required=True, metavar="KEY|FILE",
              help="the signing key's public half as GET /api/v1/audit/signing-key gives it (base64), or a file "
                   "holding it (or a PEM public key); get it from the operator, not only from the server")
def verify_export(file: str, public_key: str) -> NoReturn:
    """Check a signed evidence export (JSON lines or CSV) with the public key alone: no database, no settings.

    Exit status: 0 the file is complete and unmodified, 1 it is not (says where: its line or byte count, its
    content, or its signature), 2 the file or the key cannot be read.
    """
    import pathlib

    from core import signed_file, signing

    try:
        given = pathlib.Path(public_key)
        key = signing.load_public_key(given.read_text() if given.is_file() else public_key)
        data = pathlib.Path(file).read_bytes()
    except (OSError, UnicodeDecodeError, signing.BadKey) as exc:
        click.echo(f"error: cannot read {exc}", err=True)
        raise SystemExit(EXPORT_UNREADABLE) from None
    verdict = signed_file.verify(data, key)
    click.echo(f"{file}: {verdict.message}" if verdict.valid else f"{file}: TAMPERED: {verdict.message}")
    raise SystemExit(EXPORT_VALID if verdict.valid else EXPORT_TAMPERED)


# --- red flags (issue 12): the operator's lists the rules read, and the flags themselves ---------------------------

def _text_of(path: Path) -> str:
    """A CSV file's text: UTF-8, with or without the byte-order mark spreadsheets write."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"{path.name} is not UTF-8 text (byte {exc.start}); save it as CSV UTF-8") from None


def _report_rejected(rejected: list[flag_lists.Rejected]) -> int:
    for row in rejected:
        click.echo(f"line {row.line}: {row.reason}", err=True)
    return EXIT_REFUSED if rejected else EXIT_OK


_CSV_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@main.command("import-deaths")
@click.argument("file", type=_CSV_FILE)
@click.option("--source", default=None, help="where the list comes from, kept with each row [default: the file's name]")
def import_deaths(file: Path, source: str | None) -> NoReturn:
    """Import a date-of-death list for the red flags: CSV rows IIN,date.

    Dates as YYYY-MM-DD or DD.MM.YYYY; a header row is allowed. Each row is checked (the IIN and its check digit, a
    date neither in the future nor before the birth date the IIN gives); the good rows are stored in one go.
    Importing a file again changes nothing; an IIN listed again with another date takes the new one. Rejected rows
    are printed with their line number and reason, never the IIN; exit status 2 when there were any (the good rows
    are stored all the same). Audit-logged.
    """
    text = _text_of(file)

    async def work(settings: Settings) -> int:
        outcome: list[int] = []

        async def act(ctx: Context) -> None:
            done = await flag_lists.import_deaths(ctx, text, source or file.name)
            click.echo(f"deaths: {done.added} added, {done.updated} updated, {done.unchanged} already listed, "
                       f"{len(done.rejected)} rejected")
            outcome.append(_report_rejected(done.rejected))

        await _directory_work(settings, act)
        return outcome[0]

    _run(work)


@main.group("service-rules", cls=_InWorkflowOrder)
def service_rules() -> None:
    """Which sex and age band each service may be billed for (the red flag "service_misfit").

    A rule is service_code,sex,min_age,max_age,source: sex male, female or empty for either; ages inclusive, whole
    years on the visit's day as the patient's IIN gives them, empty for no bound; source says where the band comes
    from. Seeded with the cancer screenings of order ҚР ДСМ-174/2020 under placeholder codes (SCREEN-*): import your
    payer's codes.
    """


@service_rules.command("list")
def list_service_rules() -> NoReturn:
    """Print every rule as a CSV row, the form import takes."""
    async def act(ctx: Context) -> None:
        out = io.StringIO()
        writer = csvfile.writer(out, lineterminator="\n")
        writer.writerow(["service_code", "sex", "min_age", "max_age", "source"])
        writer.writerows([r.service_code, r.sex, r.min_age, r.max_age, r.source]
                         for r in await flag_lists.service_rules(ctx))
        click.echo(out.getvalue(), nl=False)

    _in_directory(act)


@service_rules.command("import")
@click.argument("file", type=_CSV_FILE)
def import_service_rules(file: Path) -> NoReturn:
    """Add or change the rules in a CSV file (service_code,sex,min_age,max_age,source; a header row is allowed).

    Services not in the file keep their rules. Rejected rows are printed with their line number and reason; exit
    status 2 when there were any (the good rows are stored all the same). Each change is audit-logged.
    """
    text = _text_of(file)

    async def work(settings: Settings) -> int:
        outcome: list[int] = []

        async def act(ctx: Context) -> None:
            done = await flag_lists.import_service_rules(ctx, text)
            click.echo(f"service rules: {done.added} added, {done.changed} changed, {len(done.rejected)} rejected")
            outcome.append(_report_rejected(done.rejected))

        await _directory_work(settings, act)
        return outcome[0]

    _run(work)


@service_rules.command("remove")
@click.argument("service_code")
def remove_service_rule(service_code: str) -> NoReturn:
    """Remove a service's rule: it may then be billed for anyone. Audit-logged."""
    async def act(ctx: Context) -> None:
        await flag_lists.remove_service_rule(ctx, service_code)
        click.echo(f"rule for {service_code} removed")

    _in_directory(act)


@main.command("flags")
@click.option("--from", "first_day", type=click.DateTime(["%Y-%m-%d"]), required=True, metavar="YYYY-MM-DD",
              help="the first day (Asia/Almaty) whose visits are looked at")
@click.option("--to", "last_day", type=click.DateTime(["%Y-%m-%d"]), default=None, metavar="YYYY-MM-DD",
              help="the last day, included [default: the first]")
@_clinic_option(default=None)
@click.option("--doctor", "doctor_id", type=int, default=None, metavar="ID", help="one doctor's flags only")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write every flag with all its visit ids to this CSV file")
def flags(first_day: dt.datetime, last_day: dt.datetime | None, clinic_id: int | None, doctor_id: int | None,
          csv_path: Path | None) -> NoReturn:
    """Print the red flags the visits of a period raise: one line per flag, what was measured against which
    threshold (RASTAU_FLAG_* settings), and the visits that raised it."""
    async def act(ctx: Context) -> None:
        found = await find_flags(ctx, first_day.date(), (last_day or first_day).date(), clinic_id=clinic_id,
                                 doctor_id=doctor_id)
        for flag in found:
            shown = " ".join(map(str, flag.visit_ids[:10])) + (" …" if len(flag.visit_ids) > 10 else "")
            click.echo(f"clinic {flag.clinic_id}  {flag.kind.value}: {flag.explain()}; "
                       f"visits ({len(flag.visit_ids)}): {shown or 'none'}")
        click.echo(f"{len(found)} flags")
        if csv_path is not None:
            await asyncio.to_thread(csv_path.write_text, flags_csv(found), encoding="utf-8")

    _in_directory(act)


# --- retention (issue 16) ---------------------------------------------------------------------------------------------
@main.command()
@click.option("--dry-run", is_flag=True, help="count what would go, change nothing")
def purge(dry_run: bool) -> NoReturn:
    """Remove what the retention periods say (RASTAU_RETAIN_*; docs/privacy.md), as the bot's daily job does.

    Prints one line per kind with how many rows were (or, with --dry-run, would be) removed or reduced. Visits,
    their evidence and the audit log are kept; each real run is audit-logged (counts only).
    """
    from core.services.retention import purge as run_purge

    async def work(settings: Settings) -> int:
        settings = settings.require_secrets()
        engine = create_engine(settings.database_url)
        ctx = Context.build(settings, UnitOfWorkFactory(engine), settings.clock())  # dev: RASTAU_CLOCK_OFFSET_SECONDS
        try:
            report = await run_purge(ctx, dry_run=dry_run)
        finally:
            await ctx.keys.close()
            await engine.dispose()
        verb = "would purge" if dry_run else "purged"
        for kind, count in report.counts.items():
            click.echo(f"{verb} {kind}: {count}")
        click.echo(f"{verb} {report.total} in all" + (" (dry run: nothing changed)" if dry_run else ""))
        return EXIT_OK

    _run(work)


if __name__ == "__main__":
    main(prog_name="rastau")
