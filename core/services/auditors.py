"""The payer's auditors: the operator's people who read the evidence of the clinics in their scope and write nothing.

Made, listed and removed by the operator (``rastau add-auditor`` …), never by a clinic: a clinic that could make or
unmake its own auditors would choose who watches it. Every change is audit-logged in the operator's chain.
"""
from __future__ import annotations

from collections.abc import Iterable

from core.db.repositories import StoredAuditor
from core.errors import Conflict, InvalidValue
from core.model import Language
from core.names import clean_name
from core.phone import normalise_phone
from core.services import Context


async def add_auditor(ctx: Context, full_name: str, phone: str, *, clinic_ids: Iterable[int] = (),
                      all_clinics: bool = False, language: Language | str = Language.RU) -> StoredAuditor:
    """An auditor reading the listed clinics, or every clinic (those added later too) when ``all_clinics``."""
    clinics = sorted(set(clinic_ids))
    if all_clinics == bool(clinics):
        raise InvalidValue("an auditor reads either the clinics listed or all clinics: give one of the two")
    name, number = clean_name(full_name), normalise_phone(phone)
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        for clinic_id in clinics:
            await uow.clinics.get(clinic_id)
        if any(a.removed_at is None for a in await uow.auditors.by_phone(number)):
            raise Conflict("an auditor with this phone number exists already (rastau list-auditors)")
        auditor_id = await uow.auditors.add(full_name=name, phone=number, language=Language(language),
                                            all_clinics=all_clinics, clinic_ids=clinics, now=now)
        await uow.audit.append(now, "admin", "auditor.create", f"auditor:{auditor_id}",
                               {"clinics": "all" if all_clinics else clinics}, clinic_id=None)
        auditor = await uow.auditors.get(auditor_id)
        await uow.commit()
    return auditor


async def list_auditors(ctx: Context) -> list[StoredAuditor]:
    async with ctx.uow(read_only=True) as uow:
        return await uow.auditors.list()


async def remove_auditor(ctx: Context, auditor_id: int) -> tuple[StoredAuditor, list[str]]:
    """Remove the auditor and revoke every key of theirs at once; the auditor and the prefixes revoked."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        await uow.auditors.get(auditor_id)
        if not await uow.auditors.remove(auditor_id, now):
            raise Conflict(f"auditor {auditor_id} was already removed")
        revoked = await uow.api_keys.revoke_auditors(auditor_id, now)
        await uow.audit.append(now, "admin", "auditor.remove", f"auditor:{auditor_id}", {"keys_revoked": revoked},
                               clinic_id=None)
        auditor = await uow.auditors.get(auditor_id)
        await uow.commit()
    return auditor, revoked
