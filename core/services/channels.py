"""How each patient is reached (issue 14): the channels they have proven and which still work, in the order the
dispatcher tries them; a channel that failed for good; the SMS budget per clinic and day; answers that come back by
SMS.

Telegram works while the patient's chat is linked, not blocked and not stopped (core.services.chat.reachable_chat);
WhatsApp while a proven row (the patient wrote from that number) has not failed; SMS, when the operator configured a
gateway, while the registered phone has not failed (a registered phone is an SMS channel). A patient with none of
these is ``no_channel``: nobody can ask them "were you there?", which the digest and the exports say apart from "no
answer"."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from core.channels import FALLBACK_ORDER, ChannelName
from core.clock import to_local
from core.config import Settings
from core.db.uow import UnitOfWork
from core.errors import IllegalTransition, InvalidPhone, NotFound
from core.logs import get_logger
from core.model import Actor, Patient, VisitEvent, VisitState
from core.phone import normalise_phone
from core.services import Context
from core.services.chat import reachable_chat
from core.services.visits import patient_confirms, patient_disputes

log = get_logger("rastau.channels")


@dataclass(frozen=True)
class Route:
    """One way to reach a patient now: the channel and the address on it (never logged)."""
    channel: ChannelName
    address: str


def enabled_channels(settings: Settings) -> frozenset[ChannelName]:
    """The channels this deployment can send on: Telegram always, WhatsApp and SMS when configured."""
    on = {ChannelName.TELEGRAM}
    if getattr(settings, "whatsapp_enabled", False):
        on.add(ChannelName.WHATSAPP)
    if settings.sms_enabled:
        on.add(ChannelName.SMS)
    return frozenset(on)


async def patient_routes(uow: UnitOfWork, patient: Patient, enabled: frozenset[ChannelName]) -> list[Route]:
    """The patient's working channels among ``enabled``: the preferred one first, then FALLBACK_ORDER."""
    assert patient.id is not None  # read from storage
    rows = {r.channel: r for r in await uow.channels.for_patient(patient.id)}
    found: dict[ChannelName, str] = {}
    if ChannelName.TELEGRAM in enabled:
        chat_id = await reachable_chat(uow, patient)
        if chat_id is not None:
            found[ChannelName.TELEGRAM] = str(chat_id)
    wa = rows.get(ChannelName.WHATSAPP.value)
    if ChannelName.WHATSAPP in enabled and wa is not None and wa.gone_at is None:
        found[ChannelName.WHATSAPP] = wa.address
    sms = rows.get(ChannelName.SMS.value)
    if ChannelName.SMS in enabled and patient.phone and not (
            sms is not None and sms.gone_at is not None and sms.address == patient.phone):
        found[ChannelName.SMS] = patient.phone
    preferred = await uow.channels.preferred(patient.id)
    order = [ChannelName(preferred)] if preferred in found else []
    order += [c for c in FALLBACK_ORDER if c not in order]
    return [Route(c, found[c]) for c in order if c in found]


async def record_gone(ctx: Context, patient_id: int, channel: ChannelName, address: str, reason: str) -> None:
    """The channel can never reach the patient at this address: the next message goes on the next channel."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        await uow.channels.mark_gone(patient_id, channel.value, address, now, reason)
        if channel is ChannelName.TELEGRAM and address.lstrip("-").isdigit():
            await uow.patients.mark_chat_blocked(int(address))
        await uow.commit()
    log.warning("channel gone; falling back", patient_id=patient_id, channel=channel.value, reason=reason)


# --- the SMS budget --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SmsSpend:
    allowed: bool
    used: int  # segments counted for the clinic's day after this spend (before it, when not allowed)
    cap: int
    warned: bool = False  # this spend crossed the warning share: the operator was told
    day: dt.date = dt.date.min  # the clinic's Asia/Almaty day it was counted on


async def spend_sms(ctx: Context, clinic_id: int, segments: int) -> SmsSpend:
    """Count an SMS against its clinic's Asia/Almaty day before it is sent. Over the cap it is not counted and must
    not be sent; crossing ``sms_warn_share`` of the cap warns the operator once a day (the log, at WARNING)."""
    settings, now = ctx.settings, ctx.clock.now()
    day, cap = to_local(now).date(), settings.sms_daily_cap
    async with ctx.uow() as uow:
        total = await uow.channels.sms_spend(clinic_id, day, segments, cap)
        if total is None:
            used = await uow.channels.sms_used(clinic_id, day)
            first = await uow.channels.sms_warn_once(clinic_id, day, now)
            await uow.commit()
            log.error("SMS daily cap reached: message not sent", clinic_id=clinic_id, day=day.isoformat(), used=used,
                      cap=cap, first_warning=first)
            return SmsSpend(False, used, cap, warned=first, day=day)
        warned = total >= settings.sms_warn_share * cap and await uow.channels.sms_warn_once(clinic_id, day, now)
        await uow.commit()
    if warned:
        log.warning("SMS daily cap nearly reached", clinic_id=clinic_id, day=day.isoformat(), used=total, cap=cap)
    return SmsSpend(True, total, cap, warned=warned, day=day)


async def refund_sms(ctx: Context, clinic_id: int, spent: SmsSpend, segments: int) -> None:
    """The gateway did not take the SMS counted by :func:`spend_sms`: its segments go back to the clinic's day."""
    async with ctx.uow() as uow:
        await uow.channels.sms_refund(clinic_id, spent.day, segments)
        await uow.commit()


# --- answers by SMS --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InboundOutcome:
    outcome: str  # "recorded" | "replay" | "unknown_sender" | "nothing_asked" | "not_an_answer" | "unchanged"
    visit_id: int | None = None


async def record_sms_answer(ctx: Context, *, sender: str, external_id: str, attended: bool | None,
                            payload: str | None = None) -> InboundOutcome:
    """An authenticated inbound SMS (the webhook checked its signature): "1" (``attended``) or "0" answers the newest
    visit this phone was asked about by SMS and has not answered; a replayed message id changes nothing."""
    now = ctx.clock.now()
    async with ctx.uow() as uow:
        first = await uow.channels.inbound_first_seen(ChannelName.SMS.value, external_id, now, payload=payload,
                                                      handled=True)
        await uow.commit()
    if not first:
        return InboundOutcome("replay")
    if attended is None:
        return InboundOutcome("not_an_answer")
    try:
        phone = normalise_phone(sender)
    except InvalidPhone:
        return InboundOutcome("unknown_sender")
    async with ctx.uow(read_only=True) as uow:
        patient_ids = [p.id for p in await uow.patients.by_phone(phone) if p.id is not None]
        asked = await uow.channels.asked_visits(ChannelName.SMS.value, patient_ids) if patient_ids else []
        open_visits = []
        for visit_id in dict.fromkeys(asked):
            visit = await uow.visits.get(visit_id)
            if visit.state not in (VisitState.CANCELLED, VisitState.PATIENT_CONFIRMED, VisitState.PATIENT_DISPUTED):
                open_visits.append(visit_id)
    if not patient_ids:
        return InboundOutcome("unknown_sender")
    if not open_visits:
        return InboundOutcome("nothing_asked")
    visit_id = open_visits[0]
    try:
        result = (await patient_confirms(ctx, visit_id, patient_ids) if attended
                  else await patient_disputes(ctx, visit_id, patient_ids))
    except (IllegalTransition, NotFound):
        return InboundOutcome("unchanged", visit_id)
    if result.changed:  # the visit's timeline (and audit chain) says the answer came by SMS: a phone the clinic
        # registered, weaker than a chat the patient linked, so an auditor can weigh it
        async with ctx.uow() as uow:
            visit = await uow.visits.get(visit_id, lock=True)
            await uow.visits.record_event(visit, VisitEvent(visit_id, ctx.clock.now(), "answer_channel", visit.state,
                                                            visit.state, Actor.PATIENT, "sms",
                                                            "attended" if attended else "not attended"))
            await uow.commit()
    log.info("answer recorded from SMS", visit_id=visit_id, attended=attended)
    return InboundOutcome("recorded" if result.changed else "unchanged", visit_id)


def inbound_payload(data: dict[str, object]) -> str:
    """What is kept of an inbound message (its provider id and text, not the sender)."""
    return json.dumps({k: v for k, v in data.items() if k in ("id", "text")}, ensure_ascii=False)


def local_day(moment: dt.datetime) -> dt.date:
    return to_local(moment).date()
