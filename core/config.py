"""Settings from the environment (prefix ``RASTAU_``) and ``.env``.

Production refuses to start without its secrets; ``dev`` mode invents throwaway ones and says so loudly.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import secrets
import sys
from functools import cached_property

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.clock import Clock, ShiftedClock, SystemClock
from core.codes import CodePolicy


class Mode(str, enum.Enum):
    DEV = "dev"
    PRODUCTION = "production"


class MissingSecrets(SystemExit):
    """Raised at start when production secrets are absent; the message names each one."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RASTAU_", env_file=".env", env_file_encoding="utf-8",
                                      extra="ignore")

    mode: Mode = Mode.PRODUCTION
    database_url: str = "sqlite+aiosqlite:///./data/rastau.db"
    code_hmac_key: SecretStr | None = None
    template_key: SecretStr | None = None
    bot_token: SecretStr | None = None
    api_key_pepper: SecretStr | None = None
    signing_key: SecretStr | None = None  # Ed25519 seed for signed exports: base64 of 32 bytes (core.signing)

    log_level: str = "INFO"
    log_format: str = Field("console", pattern="^(json|console)$")
    clock_offset_seconds: float = 0.0

    code_issue_lead_minutes: int = Field(15, ge=0, le=240)
    code_validity_minutes: int = Field(10, ge=1, le=240)
    code_max_attempts: int = Field(5, ge=1, le=20)
    doctor_code_failures_per_hour: int = Field(20, ge=1, le=1000)
    clinic_code_failures_per_hour: int = Field(100, ge=1, le=100_000)
    code_requests_per_visit: int = Field(3, ge=1, le=20)
    visit_grace_minutes: int = Field(15, ge=0, le=240)

    face_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    face_workers: int = Field(2, ge=1, le=32)
    face_max_bytes: int = Field(5 * 1024 * 1024, ge=1024)
    face_max_pixels: int = Field(25_000_000, ge=10_000)
    patient_face_failures_per_hour: int = Field(10, ge=1, le=1000)
    doctor_face_failures_per_hour: int = Field(30, ge=1, le=10_000)
    clinic_face_failures_per_hour: int = Field(300, ge=1, le=100_000)
    face_replacement_min_days: int = Field(30, ge=0, le=3650)
    # POST /visits/{id}/face (one frame from the clinic's system: a photo of the patient passes it) is refused
    # unless the operator enables it; capture sessions (a live head-turn challenge) are the face evidence
    single_frame_face: bool = False
    # tests and dev only: every capture session gets this challenge (e.g. "straight,left,straight") instead of a
    # random one, so a recorded clip can follow it; production refuses it
    capture_challenge: str | None = Field(None, pattern=r"^(straight|left|right)(,(straight|left|right)){2,15}$")
    # tests and dev only: the liveness tracker takes core.liveness.STILLS (turns of ~10°, what the fixture photos show)
    # instead of the measured thresholds; a print tilted 40° passes it, so production refuses it
    liveness_stills: bool = False
    # the address the clinic's browsers reach Rastau at (https://rastau.example.kz), for capture session URLs;
    # unset: the address the request came to
    public_url: str | None = Field(None, pattern=r"^https?://[^/?#\s]+$")

    server_host: str = "127.0.0.1"
    server_port: int = Field(8080, ge=1, le=65535)
    server_processes: int = Field(1, ge=1, le=64)  # each with its own face workers and database pool

    telegram_api_base: str | None = None
    bot_mode: str = Field("polling", pattern="^(polling|webhook)$")
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_host: str = "127.0.0.1"
    webhook_port: int = Field(8081, ge=1, le=65535)
    redis_url: str | None = None
    code_send_lead_minutes: int = Field(10, ge=0, le=240)
    prompt_delay_minutes: int = Field(60, ge=0, le=7 * 24 * 60)
    # chat-disputes (issue 17): how long the bot waits for the reason after "I wasn't there", how long the patient may
    # take that answer back, and how long a clinic's batch of backdated visits is gathered into one question
    dispute_reason_minutes: int = Field(30, ge=1, le=24 * 60)
    dispute_undo_minutes: int = Field(15, ge=1, le=48 * 60)
    late_prompt_gather_minutes: int = Field(5, ge=0, le=24 * 60)
    digest_time: str = Field("08:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    send_rate_global: float = Field(30.0, gt=0)
    send_rate_per_chat: float = Field(1.0, gt=0)
    dispatcher_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    # the payer's system hears of every dispute, flag and checkpoint by webhook (core/services/payer.py): a POST of
    # JSON signed with HMAC-SHA256 under the secret, which is required when the URL is set
    payer_webhook_url: str | None = Field(None, pattern=r"^https?://[^\s]+$")
    payer_webhook_secret: SecretStr | None = None
    checkpoint_minutes: int = Field(60, ge=1, le=24 * 60)  # how often the audit chains' heads are signed and pushed

    # red flags (core/services/flags.py): thresholds from the public record where it has one, else stated as ours
    flag_daily_visit_norm: int = Field(24, ge=1, le=1000)  # the norm the Finance Ministry's audit measured against
    flag_daily_visit_factor: float = Field(2.0, ge=1.0, le=100.0)  # a doctor-day over norm × factor is flagged
    flag_min_visit_gap_minutes: int = Field(5, ge=1, le=120)
    flag_close_visits_per_day: int = Field(3, ge=1, le=1000)
    flag_min_visits: int = Field(20, ge=1, le=100_000)  # a share is judged over at least this many visits
    flag_code_share_factor: float = Field(2.0, ge=1.0, le=100.0)
    flag_code_share_max: float = Field(0.2, gt=0.0, le=1.0)
    flag_unverified_share: float = Field(0.05, gt=0.0, le=1.0)
    flag_disputed_share: float = Field(0.02, gt=0.0, le=1.0)
    flag_no_answer_share: float = Field(0.5, gt=0.0, le=1.0)
    flag_face_replacements: int = Field(5, ge=1, le=100_000)
    flag_patients_per_phone: int = Field(5, ge=1, le=1000)
    flag_cap_hours: int = Field(3, ge=1, le=10_000)  # hours at a clinic's code or face cap

    # --- the patient's record (issue 16): where the patients' own keys live, and how long things are kept ---------
    # A database apart from RASTAU_DATABASE_URL, with backups kept briefly (docs/privacy.md); unset: beside a SQLite
    # file (rastau.keys.db), or the main database on PostgreSQL (then its backups hold the keys too)
    keystore_url: str | None = None
    # delivered chat messages' payload (codes' visit, notices' chat ids) and Telegram message ids: kept 30 days, for a
    # patient to press "this wasn't me" in an old chat and for support to trace a delivery; the row itself stays
    retain_outbox_days: int = Field(30, ge=1, le=3650)
    # face references of a patient with no visit for this long are shredded (key destroyed): two years covers the
    # yearly screening a patient may skip once; they enrol again at their next visit with a new consent
    retain_face_idle_days: int = Field(730, ge=30, le=3650)
    # idempotency records: a client retries within minutes; a day covers a clinic system down overnight
    retain_idempotency_hours: int = Field(24, ge=1, le=24 * 365)
    # capture sessions: kept a week after they expired, for the clinic's support questions
    retain_capture_days: int = Field(7, ge=1, le=365)
    # visits and their evidence: the billing-audit period (the payer's audits reach back five years), after which a
    # patient with no newer visit keeps only what the payer must: no phone, no chat, the IIN masked to its birth date
    # and sex digit
    retain_billing_years: int = Field(5, ge=1, le=50)

    # the web dashboard (issue 13): /web in an admin's or auditor's chat answers a one-time sign-in link
    web_link_minutes: int = Field(5, ge=1, le=60)  # how long a sign-in link may wait to be opened
    web_links_per_hour: int = Field(5, ge=1, le=100)  # links one chat may ask for in an hour
    web_session_hours: int = Field(12, ge=1, le=24 * 7)  # a session ends this long after sign-in

    # --- WhatsApp Business Cloud API (issue 14, bot/channels/whatsapp*.py) ------------------------------------------
    # On when the phone number id is set; then the access token, the app secret (webhook signatures) and the verify
    # token (the webhook's GET handshake) are required, or the bot refuses to start.
    whatsapp_phone_number_id: str | None = Field(None, pattern=r"^\d{1,32}$")
    whatsapp_access_token: SecretStr | None = None
    whatsapp_app_secret: SecretStr | None = None
    whatsapp_verify_token: SecretStr | None = None
    whatsapp_api_base: str = Field("https://graph.facebook.com", pattern=r"^https?://[^\s?#]+$")
    whatsapp_api_version: str = Field("v21.0", pattern=r"^v\d+\.\d+$")
    whatsapp_webhook_path: str = Field("/whatsapp/webhook", pattern=r"^/[A-Za-z0-9/_-]+$")
    whatsapp_code_template: str = Field("rastau_code", pattern=r"^[a-z0-9_]{1,512}$")  # AUTHENTICATION, copy-code
    whatsapp_question_template: str = Field("rastau_visit_check", pattern=r"^[a-z0-9_]{1,512}$")  # UTILITY, 2 buttons
    whatsapp_notice_template: str = Field("rastau_notice", pattern=r"^[a-z0-9_]{1,512}$")  # UTILITY, one parameter
    whatsapp_language_kk: str = Field("kk", pattern=r"^[a-z]{2,3}(_[A-Z]{2})?$")  # template language codes
    whatsapp_language_ru: str = Field("ru", pattern=r"^[a-z]{2,3}(_[A-Z]{2})?$")
    whatsapp_rate: float = Field(80.0, gt=0, le=1000)  # messages per second per business number
    whatsapp_rate_per_recipient: float = Field(1.0, gt=0, le=80)  # per patient

    @property
    def whatsapp_enabled(self) -> bool:
        return self.whatsapp_phone_number_id is not None

    @model_validator(mode="after")
    def _whatsapp_complete(self) -> Settings:
        if not self.whatsapp_enabled:
            return self
        missing = [env for env, value in (("RASTAU_WHATSAPP_ACCESS_TOKEN", self.whatsapp_access_token),
                                          ("RASTAU_WHATSAPP_APP_SECRET", self.whatsapp_app_secret),
                                          ("RASTAU_WHATSAPP_VERIFY_TOKEN", self.whatsapp_verify_token))
                   if value is None or not value.get_secret_value().strip()]
        if missing:
            raise ValueError("RASTAU_WHATSAPP_PHONE_NUMBER_ID is set, so WhatsApp needs " + ", ".join(missing)
                             + " too (from the Meta app's settings): without the app secret a forged webhook could "
                             "not be told from Meta's")
        verify = self.whatsapp_verify_token.get_secret_value() if self.whatsapp_verify_token else ""
        if len(verify) < 16:
            raise ValueError("RASTAU_WHATSAPP_VERIFY_TOKEN is too short: use at least 16 random characters")
        return self

    # --- SMS (issue 14, bot/channels/sms.py): codes and "were you there?" for patients with no messenger ----------
    # On when the gateway URL is set; then the gateway's credentials and the sender name are required. Inbound
    # replies ("1"/"0") come to RASTAU_SMS_INBOUND_PATH on the bot's webhook app, HMAC-signed with the inbound secret;
    # without that secret no inbound is accepted and the question says how to dispute (RASTAU_SMS_DISPUTE_CONTACT).
    sms_provider: str = Field("generic", pattern=r"^[a-z0-9_]{1,32}$")  # bot/channels/sms.py PROVIDERS
    sms_gateway_url: str | None = Field(None, pattern=r"^https?://[^\s?#]+$")
    sms_login: str | None = Field(None, max_length=200)
    sms_password: SecretStr | None = None
    sms_sender: str = Field("Rastau", pattern=r"^[A-Za-z0-9 .-]{1,11}$")  # alphanumeric sender id: 11 chars at most
    sms_inbound_secret: SecretStr | None = None
    sms_inbound_path: str = Field("/sms/inbound", pattern=r"^/[A-Za-z0-9/_-]+$")
    sms_dispute_contact: str = Field("", max_length=40)  # a short link or phone shown when there is no inbound
    sms_daily_cap: int = Field(500, ge=0, le=10_000_000)  # SMS segments per clinic per Asia/Almaty day
    sms_warn_share: float = Field(0.8, gt=0.0, le=1.0)  # the operator is warned once a clinic's day reaches this
    sms_rate: float = Field(10.0, gt=0, le=1000)  # messages per second to the gateway
    sms_timeout_seconds: float = Field(10.0, gt=0, le=60)

    @property
    def sms_enabled(self) -> bool:
        return self.sms_gateway_url is not None

    @property
    def sms_inbound_enabled(self) -> bool:
        return self.sms_enabled and self.sms_inbound_secret is not None

    @model_validator(mode="after")
    def _sms_complete(self) -> Settings:
        if not self.sms_enabled:
            return self
        missing = [env for env, value in (("RASTAU_SMS_LOGIN", self.sms_login),
                                          ("RASTAU_SMS_PASSWORD",
                                           self.sms_password.get_secret_value() if self.sms_password else None))
                   if value is None or not value.strip()]
        if missing:
            raise ValueError("RASTAU_SMS_GATEWAY_URL is set, so SMS needs " + ", ".join(missing)
                             + " too (the gateway account's credentials)")
        if self.sms_inbound_secret is not None and len(self.sms_inbound_secret.get_secret_value()) < 16:
            raise ValueError("RASTAU_SMS_INBOUND_SECRET is too short: use at least 16 random characters, shared with "
                             "the gateway")
        if self.sms_inbound_secret is None and not self.sms_dispute_contact.strip():
            raise ValueError("SMS without inbound replies (no RASTAU_SMS_INBOUND_SECRET) must say how to dispute: set "
                             "RASTAU_SMS_DISPUTE_CONTACT (a short link or a phone number)")
        return self

    @field_validator("code_hmac_key", "template_key", "bot_token", "api_key_pepper", "signing_key", "webhook_secret",
                     "dispatcher_id", "keystore_url",
                     "capture_challenge", "public_url", "payer_webhook_url", "payer_webhook_secret",
                     "whatsapp_phone_number_id", "whatsapp_access_token", "whatsapp_app_secret",
                     "whatsapp_verify_token",
                     "sms_gateway_url", "sms_login", "sms_password", "sms_inbound_secret", mode="before")
    @classmethod
    def _blank_is_missing(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _production_runs_on_the_system_clock(self) -> Settings:
        if self.mode is Mode.PRODUCTION and self.clock_offset_seconds:
            raise ValueError("RASTAU_CLOCK_OFFSET_SECONDS is for tests and dev: production runs on the system clock")
        if self.mode is Mode.PRODUCTION and self.liveness_stills:
            raise ValueError("RASTAU_LIVENESS_STILLS is for tests and dev: production uses the measured liveness "
                             "thresholds")
        if self.mode is Mode.PRODUCTION and self.capture_challenge:
            raise ValueError("RASTAU_CAPTURE_CHALLENGE is for tests and dev: production draws every challenge at "
                             "random")
        if self.payer_webhook_url and (self.payer_webhook_secret is None
                                       or len(self.payer_webhook_secret.get_secret_value()) < 16):
            raise ValueError("RASTAU_PAYER_WEBHOOK_URL is set, so RASTAU_PAYER_WEBHOOK_SECRET must be too (at least 16 "
                             "characters, shared with the payer): without it the payer cannot tell our events from "
                             "forged ones")
        return self

    def clock(self) -> Clock:
        """The system clock, shifted by ``clock_offset_seconds`` in dev mode (tests pin the clock hour of
        server processes with it)."""
        return ShiftedClock(self.clock_offset_seconds) if self.clock_offset_seconds else SystemClock()

    @cached_property
    def code_policy(self) -> CodePolicy:
        return CodePolicy(issue_lead=dt.timedelta(minutes=self.code_issue_lead_minutes),
                          validity=dt.timedelta(minutes=self.code_validity_minutes),
                          max_attempts=self.code_max_attempts,
                          doctor_failures_per_hour=self.doctor_code_failures_per_hour,
                          clinic_failures_per_hour=self.clinic_code_failures_per_hour)

    @property
    def visit_grace(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.visit_grace_minutes)

    def code_key_bytes(self) -> bytes:
        return _secret_bytes(self.code_hmac_key, "RASTAU_CODE_HMAC_KEY", min_len=32)

    def template_key_bytes(self) -> bytes:
        raw = _secret_bytes(self.template_key, "RASTAU_TEMPLATE_KEY", min_len=32)
        return raw[:32]

    def pepper_bytes(self) -> bytes:
        return _secret_bytes(self.api_key_pepper, "RASTAU_API_KEY_PEPPER", min_len=16)

    def require_secrets(self, *, bot: bool = False, signing: bool = False) -> Settings:
        """Check secrets at start. Production: name every missing one and stop. Dev: invent them, loudly.
        ``signing``: the process signs evidence exports (the server), so RASTAU_SIGNING_KEY is needed too."""
        needed = {"RASTAU_CODE_HMAC_KEY": "code_hmac_key", "RASTAU_TEMPLATE_KEY": "template_key",
                  "RASTAU_API_KEY_PEPPER": "api_key_pepper"}
        if signing:
            needed["RASTAU_SIGNING_KEY"] = "signing_key"
        if bot:
            needed["RASTAU_BOT_TOKEN"] = "bot_token"
            if self.bot_mode == "webhook":
                needed["RASTAU_WEBHOOK_SECRET"] = "webhook_secret"
        missing = [env for env, attr in needed.items() if getattr(self, attr) is None]
        bad = []
        for env, attr in needed.items():
            if env in missing or attr == "bot_token" or attr == "webhook_secret":
                continue
            try:
                raw = _secret_bytes(getattr(self, attr), env, min_len=32 if attr != "api_key_pepper" else 16)
            except ValueError as exc:
                bad.append(str(exc))
                continue
            if attr == "signing_key" and len(raw) != 32:
                bad.append(f"{env} must be base64 of exactly 32 bytes (an Ed25519 seed): python -c 'import base64, "
                           "secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())'")
        if self.mode is Mode.PRODUCTION:
            if missing or bad:
                lines = [f"  - {env} is not set" for env in missing] + [f"  - {b}" for b in bad]
                raise MissingSecrets(
                    "Rastau refuses to start in production mode without its secrets:\n" + "\n".join(lines)
                    + "\nGenerate each with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                    + "\n(or set RASTAU_MODE=dev on a developer machine to use throwaway secrets)")
            return self
        invented = {}
        for attr in needed.values():
            if getattr(self, attr) is None and attr != "bot_token":
                invented[attr] = SecretStr(secrets.token_urlsafe(32))
        if invented:
            banner = ("!" * 78 + "\n!! RASTAU DEV MODE: throwaway secrets generated for "
                      + ", ".join(sorted(invented)) + ".\n!! Codes and face references made now will not verify "
                      "after a restart. Never use dev mode with real patients.\n" + "!" * 78)
            print(banner, file=sys.stderr)  # noqa: T201 - on the terminal whatever the log format
        return self.model_copy(update=invented)


def _secret_bytes(value: SecretStr | None, env: str, *, min_len: int) -> bytes:
    """Accept a base64/urlsafe-base64 string or raw text; require enough entropy either way."""
    if value is None:
        raise ValueError(f"{env} is not set")
    text = value.get_secret_value().strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) < min_len:
        raw = text.encode()
    if len(raw) < min_len:
        raise ValueError(f"{env} is too short: use at least {min_len} random bytes "
                         "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return raw
