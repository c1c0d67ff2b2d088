"""Table definitions. Alembic migrations are the source of truth for the live schema; these must match."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s", "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s"})


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on both engines (SQLite has no time zones)."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use UTC-aware datetimes")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


clinics = Table(
    "clinics", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

doctors = Table(
    "doctors", metadata,
    Column("id", Integer, primary_key=True),
    Column("clinic_id", ForeignKey("clinics.id", ondelete="RESTRICT"), nullable=False, index=True),
    Column("full_name", String(200), nullable=False),
    Column("phone", String(16), nullable=False, index=True),
    Column("external_ref", String(64)),
    Column("chat_id", BigInteger, index=True),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("clinic_id", "phone", name="uq_doctors_clinic_phone"),
)

clinic_admins = Table(
    "clinic_admins", metadata,
    Column("id", Integer, primary_key=True),
    Column("clinic_id", ForeignKey("clinics.id", ondelete="RESTRICT"), nullable=False, index=True),
    Column("full_name", String(200), nullable=False),
    Column("phone", String(16), nullable=False, index=True),
    Column("chat_id", BigInteger, index=True),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("clinic_id", "phone", name="uq_clinic_admins_clinic_phone"),
)

patients = Table(
    "patients", metadata,
    Column("id", Integer, primary_key=True),
    Column("clinic_id", ForeignKey("clinics.id", ondelete="RESTRICT"), nullable=False, index=True),
    Column("iin", String(12), nullable=False),
    Column("full_name", String(200), nullable=False),
    Column("phone", String(16), nullable=False, index=True),
    Column("language", String(2), nullable=False, server_default="ru"),
    Column("chat_id", BigInteger, index=True),
    Column("chat_blocked", Boolean, nullable=False, server_default=false()),
    Column("consent_at", UtcDateTime),
    Column("consent_by", String(200)),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("clinic_id", "iin", name="uq_patients_clinic_iin"),
    Column("preferred_channel", String(16)),  # issue 14: tried first; NULL: bot/channels/base.py FALLBACK_ORDER
)

face_templates = Table(
    "face_templates", metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_id", ForeignKey("patients.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("sealed", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
    Column("enrolment_id", ForeignKey("patient_changes.id", ondelete="SET NULL")),
    # 1: sealed under RASTAU_TEMPLATE_KEY itself (before 0010); 2: under the patient's own key (core/db/keystore.py)
    Column("key_version", Integer, nullable=False, server_default="1"),
)

# Every change to what identifies a patient (face enrolment, replacement, revocation, phone, consent), with who
# made it; the patient hears of each in the chat and can answer "this wasn't me" (disputed_at).
patient_changes = Table(
    "patient_changes", metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_id", ForeignKey("patients.id", ondelete="CASCADE"), nullable=False),
    Column("clinic_id", ForeignKey("clinics.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(24), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("disputed_at", UtcDateTime),
    Index("ix_patient_changes_patient_kind_at", "patient_id", "kind", "at"),
    Index("ix_patient_changes_clinic_at", "clinic_id", "at"),
)

visits = Table(
    "visits", metadata,
    Column("id", Integer, primary_key=True),
    Column("clinic_id", ForeignKey("clinics.id", ondelete="RESTRICT"), nullable=False),
    Column("doctor_id", ForeignKey("doctors.id", ondelete="RESTRICT"), nullable=False),
    Column("patient_id", ForeignKey("patients.id", ondelete="RESTRICT"), nullable=False, index=True),
    Column("start_at", UtcDateTime, nullable=False),
    Column("duration_s", Integer, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("service_code", String(64), nullable=False),
    Column("state", String(24), nullable=False),
    Column("verified_by", String(12)),
    Column("verified_at", UtcDateTime),
    Column("answered_at", UtcDateTime),
    Column("dispute_reason", Text),
    Column("attended_claim_at", UtcDateTime),
    Column("code_attempts", Integer, nullable=False, server_default="0"),
    Column("face_failures", Integer, nullable=False, server_default="0"),
    Column("face_lockouts", Integer, nullable=False, server_default="0"),
    Column("face_retry_at", UtcDateTime),
    Column("registered_late", Boolean, nullable=False, server_default=false()),
    Column("verified_enrolment_id", ForeignKey("patient_changes.id", ondelete="SET NULL")),
    Column("code_requests", Integer, nullable=False, server_default="0"),
    # The generation of the visit's code in visit_codes (None: none issued), written with it (CodeRepo.put) under
    # this row's lock: a code check's count sees it as the lock left it (VisitRepo.count_code_attempt).
    Column("code_generation", Integer),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_visits_clinic_start", "clinic_id", "start_at"),
    Index("ix_visits_doctor_start", "doctor_id", "start_at"),
    Index("ix_visits_state_start", "state", "start_at"),
)

visit_codes = Table(
    "visit_codes", metadata,
    Column("visit_id", ForeignKey("visits.id", ondelete="CASCADE"), primary_key=True),
    Column("generation", Integer, nullable=False),
    Column("code_hash", String(64), nullable=False),
    Column("issued_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime),
)

doctor_code_failures = Table(
    "doctor_code_failures", metadata,
    Column("doctor_id", ForeignKey("doctors.id", ondelete="CASCADE"), primary_key=True),
    Column("hour_start", UtcDateTime, primary_key=True),
    Column("failures", Integer, nullable=False),
)

# Failed face checks per hour, per patient, doctor and clinic (scope): a new visit does not reset these.
face_failures_hourly = Table(
    "face_failures_hourly", metadata,
    Column("scope", String(8), primary_key=True),
    Column("subject_id", Integer, primary_key=True, autoincrement=False),
    Column("hour_start", UtcDateTime, primary_key=True),
    Column("failures", Integer, nullable=False),
)

clinic_code_failures = Table(
    "clinic_code_failures", metadata,
    Column("clinic_id", ForeignKey("clinics.id", ondelete="CASCADE"), primary_key=True),
    Column("hour_start", UtcDateTime, primary_key=True),
    Column("failures", Integer, nullable=False),
)

visit_events = Table(
    "visit_events", metadata,
    Column("id", Integer, primary_key=True),
    Column("visit_id", ForeignKey("visits.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("at", UtcDateTime, nullable=False),
    Column("step", String(40), nullable=False),
    Column("from_state", String(24)),
    Column("to_state", String(24), nullable=False),
    Column("actor", String(24), nullable=False),
    Column("method", String(12)),
    Column("detail", Text),
)

# A capture session: one visit's one-time webcam page (Rastau's own), its random head-turn challenge and what came
# of it. Only a SHA-256 of the URL's token is stored; the session is opened (state "open" → "claimed") once, within
# expires_at, and one session is one face attempt against the visit's and the hourly caps.
capture_sessions = Table(
    "capture_sessions", metadata,
    Column("id", Integer, primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("visit_id", ForeignKey("visits.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("clinic_id", ForeignKey("clinics.id", ondelete="CASCADE"), nullable=False),
    Column("challenge", String(200), nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("claimed_at", UtcDateTime),
    Column("finished_at", UtcDateTime),
    Column("state", String(12), nullable=False),
    Column("outcome", String(24)),
    Column("reason", String(24)),
)

outbox = Table(
    "outbox", metadata,
    Column("id", Integer, primary_key=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("due_at", UtcDateTime, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("recipient_kind", String(16), nullable=False),
    Column("recipient_id", Integer, nullable=False),
    Column("visit_id", ForeignKey("visits.id", ondelete="CASCADE"), index=True),
    Column("payload", Text, nullable=False, server_default="{}"),
    Column("dedupe_key", String(120), unique=True),
    Column("status", String(12), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),  # claims, less those handed back
    Column("failures", Integer, nullable=False, server_default="0"),  # sends that failed: the retry budget
    Column("parts_sent", Integer, nullable=False, server_default="0"),
    Column("claimed_by", String(64)),
    Column("claim_expires_at", UtcDateTime),
    Column("sent_at", UtcDateTime),
    Column("last_error", String(300)),
    Column("chat_message_id", BigInteger),
    Column("chat_id", BigInteger),  # the chat chat_message_id is in (0013): old code messages are edited there
    Index("ix_outbox_status_due", "status", "due_at"),
    # issue 14: the channel that carried (or last tried) the row, the provider's id and its delivery reports, and why
    # channels were skipped on the way (fallback)
    Column("channel", String(16)),
    Column("channel_message_id", String(128)),
    Column("delivery_status", String(12)),
    Column("delivery_status_at", UtcDateTime),
    Column("channel_note", String(300)),
    Index("ix_outbox_channel_message", "channel", "channel_message_id"),
)

audit_log = Table(  # one hash chain per clinic, plus the operator's and the closed global one (core/audit.py)
    "audit_log", metadata,
    Column("chain", String(40), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", String(40), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(120), nullable=False),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_head = Table(  # each chain's last row: the row a writer of that chain locks to append
    "audit_head", metadata,
    Column("chain", String(40), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("last_hash", String(64), nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("clinic_id", ForeignKey("clinics.id", ondelete="CASCADE"), index=True),  # NULL: an auditor's key
    Column("key_prefix", String(16), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False),
    Column("scopes", String(100), nullable=False),
    Column("doctor_id", ForeignKey("doctors.id", ondelete="CASCADE")),
    Column("label", String(200), nullable=False, server_default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
    Column("expires_at", UtcDateTime),
    Column("last_used_at", UtcDateTime),
    Column("auditor_id", ForeignKey("auditors.id", ondelete="RESTRICT"), index=True),
    CheckConstraint("(clinic_id IS NULL) <> (auditor_id IS NULL)", name="one_owner"),  # a clinic's or an auditor's
)

# The payer's auditors (issue 12): the operator's people, of no clinic, who read the evidence of the clinics in their
# scope (auditor_clinics, or every clinic when all_clinics) and never write. A removed auditor's row stays
# (removed_at), so the audit log's "auditor:<id>" keeps naming someone.
auditors = Table(
    "auditors", metadata,
    Column("id", Integer, primary_key=True),
    Column("full_name", String(200), nullable=False),
    Column("phone", String(16), nullable=False, index=True),
    Column("language", String(2), nullable=False, server_default="ru"),
    Column("chat_id", BigInteger, index=True),
    Column("all_clinics", Boolean, nullable=False, server_default=false()),
    Column("created_at", UtcDateTime, nullable=False),
    Column("removed_at", UtcDateTime),
)

auditor_clinics = Table(
    "auditor_clinics", metadata,
    Column("auditor_id", ForeignKey("auditors.id", ondelete="CASCADE"), primary_key=True),
    Column("clinic_id", ForeignKey("clinics.id", ondelete="RESTRICT"), primary_key=True),
)

idempotency_keys = Table(
    "idempotency_keys", metadata,
    Column("clinic_id", ForeignKey("clinics.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("response_status", Integer, nullable=False),
    Column("response_body", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

chat_users = Table(
    "chat_users", metadata,
    Column("chat_id", BigInteger, primary_key=True),
    Column("language", String(2), nullable=False),
    Column("stopped", Boolean, nullable=False, server_default=false()),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

processed_updates = Table(
    "processed_updates", metadata,
    Column("update_id", BigInteger, primary_key=True, autoincrement=False),
    Column("bot_id", BigInteger, primary_key=True, autoincrement=False),
    Column("at", UtcDateTime, nullable=False),
)


# --- red flags (issue 12): the operator's lists the rules read ------------------------------------------------------
# Deaths from the civil registry, imported by the operator (rastau import-deaths): the IIN kept as patients' IINs are
# (12 digits, so the rules join on it), the date of death, the file it came from and when. Not per clinic: a death is
# a fact about the person, whichever clinic bills for them afterwards.
deaths = Table(
    "deaths", metadata,
    Column("iin", String(12), primary_key=True),
    Column("died_on", Date, nullable=False),
    Column("source", String(200), nullable=False),
    Column("imported_at", UtcDateTime, nullable=False),
)

# Which patients a service may be billed for, by sex and age as the IIN gives them (rastau service-rules): a man's
# cervical screening is a red flag. Seeded by migration 0008; the operator edits it.
service_rules = Table(
    "service_rules", metadata,
    Column("service_code", String(64), primary_key=True),
    Column("sex", String(6)),  # "male" | "female" | NULL: either
    Column("min_age", Integer),  # inclusive, in whole years on the visit's day; NULL: no lower bound
    Column("max_age", Integer),  # inclusive; NULL: no upper bound
    Column("source", String(300), nullable=False),  # where the band comes from
    Column("updated_at", UtcDateTime, nullable=False),
)

# --- web dashboard (issue 13, dashboard-web): one-time sign-in links and sessions -------------------------------------
# Both hold only the SHA-256 of their token: a copy of the database signs no one in. A link is for one chat and one
# role row (a clinic admin's or an auditor's id), used once (used_at) before expires_at; a session ends at expires_at,
# at sign-out (ended_at), or as soon as its admin or auditor is gone or moved to another chat (checked per request).
web_links = Table(
    "web_links", metadata,
    Column("id", Integer, primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("chat_id", BigInteger, nullable=False, index=True),
    Column("role", String(8), nullable=False),  # "admin" | "auditor"
    Column("subject_id", Integer, nullable=False),  # clinic_admins.id or auditors.id
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime),
)

web_sessions = Table(
    "web_sessions", metadata,
    Column("id", Integer, primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("chat_id", BigInteger, nullable=False),
    Column("role", String(8), nullable=False),
    Column("subject_id", Integer, nullable=False),
    Column("language", String(2), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("ended_at", UtcDateTime),
    Index("ix_web_sessions_subject", "role", "subject_id"),
)

# --- web dashboard (issue 13, dashboard-data): reviews of patients' disputes ----------------------------------------
# An admin's or auditor's outcome and note on one dispute: a visit the patient said they were not at (visit_id) or a
# change to the patient's face, phone or consent they said was not theirs (change_id). Append-only: a review never
# removes or changes the dispute, a later review is a new row, and each is also a row of the clinic's audit chain.
dispute_reviews = Table(
    "dispute_reviews", metadata,
    Column("id", Integer, primary_key=True),
    Column("clinic_id", ForeignKey("clinics.id", ondelete="RESTRICT"), nullable=False),
    Column("visit_id", ForeignKey("visits.id", ondelete="RESTRICT"), index=True),
    Column("change_id", ForeignKey("patient_changes.id", ondelete="RESTRICT"), index=True),
    Column("reviewer_kind", String(8), nullable=False),  # "admin" | "auditor"
    Column("reviewer_id", Integer, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("note", Text, nullable=False, server_default=""),
    Column("at", UtcDateTime, nullable=False),
    CheckConstraint("(visit_id IS NULL) <> (change_id IS NULL)", name="one_dispute"),
    Index("ix_dispute_reviews_clinic_at", "clinic_id", "at"),
)
# The disputes queue reads one clinic's disputes oldest first, a page at a time.
Index("ix_visits_clinic_state_answered", visits.c.clinic_id, visits.c.state, visits.c.answered_at)
Index("ix_patient_changes_clinic_disputed", patient_changes.c.clinic_id, patient_changes.c.disputed_at)
# scorecard-speed: what a scorecard's red flags read of a clinic-month, in one index (0012; the id is SQLite's rowid).
Index("ix_visits_clinic_start_evidence", visits.c.clinic_id, visits.c.start_at, visits.c.doctor_id, visits.c.mode,
      visits.c.state, visits.c.verified_by, postgresql_include=["id"])


# --- channels (issue 14): how each patient is reached -----------------------------------------------------------------
# One row per patient and channel ("telegram" | "whatsapp" | "sms"): the address on it (chat id, wa_id, E.164 phone),
# when it was proven, and when and why it failed for good. A gone row counts only while its address is the patient's.
# Telegram's own state stays in patients.chat_id/chat_blocked; SMS is proven by the registered phone (no row needed).
patient_channels = Table(
    "patient_channels", metadata,
    Column("patient_id", ForeignKey("patients.id", ondelete="CASCADE"), primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("address", String(64), nullable=False),
    Column("proven_at", UtcDateTime, nullable=False),
    Column("gone_at", UtcDateTime),
    Column("gone_reason", String(200)),
    Column("last_inbound_at", UtcDateTime),  # the patient's last message on it: WhatsApp's 24-hour window
    Index("ix_patient_channels_channel_address", "channel", "address"),
)

# SMS sent per clinic per Asia/Almaty day, against the daily cap; warned_at: when the operator was told it is near.
sms_daily_usage = Table(
    "sms_daily_usage", metadata,
    Column("clinic_id", ForeignKey("clinics.id", ondelete="CASCADE"), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("sent", Integer, nullable=False, server_default="0"),
    Column("warned_at", UtcDateTime),
)

# Inbound webhook messages already handled, by the provider's id: a replayed body changes nothing.
inbound_messages = Table(
    "inbound_messages", metadata,
    Column("channel", String(16), primary_key=True),
    Column("external_id", String(128), primary_key=True),
    Column("received_at", UtcDateTime, nullable=False),
    Column("payload", Text),  # the one message or status as JSON, for the worker that handles it
    Column("handled_at", UtcDateTime),  # NULL until handled
    Index("ix_inbound_messages_pending", "handled_at"),
)


# --- the patient's record (issue 16): what the retention purge removed, per kind, for /metrics ---------------------
# One row per kind of purge (core/services/retention.py): rows removed or reduced in all, how many runs removed
# something, and the last such run. Counts only, never what was removed.
purge_totals = Table(
    "purge_totals", metadata,
    Column("kind", String(40), primary_key=True),
    Column("rows", BigInteger, nullable=False, server_default="0"),
    Column("runs", Integer, nullable=False, server_default="0"),
    Column("last_at", UtcDateTime),
)
