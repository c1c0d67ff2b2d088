"""Audit-chain checkpoints made and pushed out: on demand (``rastau audit-checkpoint``) and at the interval
``RASTAU_CHECKPOINT_MINUTES`` (the bot's scheduler), to every linked auditor's chat and to the payer's webhook.

Making one is not itself audit-logged: a record would move the operator chain's head, so every checkpoint would
differ from the last and none could be skipped. The same heads make the same event (its id is a hash of them), so
a quiet hour, a restart or a second bot adds nothing.
"""
from __future__ import annotations

from core.checkpoint import Checkpoint, make_checkpoint
from core.model import OutboxKind, OutboxMessage, Recipient
from core.services import Context
from core.services.payer import queue_payer_event
from core.signing import Signer


async def checkpoint_now(ctx: Context, signer: Signer) -> tuple[Checkpoint, str]:
    """The current head of every chain, signed: the checkpoint and its file's text."""
    async with ctx.uow(read_only=True) as uow:
        heads = await uow.audit.heads()
    return make_checkpoint(signer, heads, ctx.clock.now())


async def push_checkpoint(ctx: Context, signer: Signer) -> int:
    """Make a checkpoint and queue it to every linked auditor and the payer's webhook; how many messages were queued
    (0 when these heads were pushed already)."""
    checkpoint, text = await checkpoint_now(ctx, signer)
    now = ctx.clock.now()
    queued = 0
    async with ctx.uow() as uow:
        for auditor in await uow.auditors.linked():
            queued += await uow.outbox.add(OutboxMessage(
                kind=OutboxKind.AUDIT_CHECKPOINT, recipient_kind=Recipient.AUDITOR, recipient_id=auditor.id,
                due_at=now, payload={"file": text}, dedupe_key=f"{checkpoint.event_id}:auditor:{auditor.id}"),
                now) is not None
        queued += await queue_payer_event(uow, ctx.settings, checkpoint.event_id, "audit.checkpoint", now,
                                          checkpoint.body() | {"file": text})
        await uow.commit()
    return queued
