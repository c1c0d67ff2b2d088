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

    @field_validator("code_hmac_key", "template_key", "bot_token", "api_key_pepper", "signing_key", "webhook_secret",
                     "dispatcher_id",
                     "capture_challenge", "public_url", "payer_webhook_url", "payer_webhook_secret", mode="before")
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
