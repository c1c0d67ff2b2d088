"""Use cases. Each opens one unit of work, applies domain rules, records events and outbox messages, commits."""
from __future__ import annotations

from dataclasses import dataclass

from core.clock import Clock
from core.codes import CodeHasher
from core.config import Settings
from core.db.key_cache import KeyCache
from core.db.keystore import PatientKeyStore, default_keystore_url
from core.db.uow import UnitOfWorkFactory
from core.face_references import TemplateCipher


@dataclass
class Context:
    """Everything a use case needs, built once at start by the server or the bot."""
    uow: UnitOfWorkFactory
    clock: Clock
    settings: Settings
    hasher: CodeHasher
    cipher: TemplateCipher
    keys: PatientKeyStore  # the patients' own keys for their face references (issue 16: crypto-shredding)
    key_cache: KeyCache | None = None  # the server's, on PostgreSQL: API key rows kept while notified of changes

    @classmethod
    def build(cls, settings: Settings, uow: UnitOfWorkFactory, clock: Clock,
              key_cache: KeyCache | None = None) -> Context:
        return cls(uow=uow, clock=clock, settings=settings, hasher=CodeHasher(settings.code_key_bytes()),
                   cipher=TemplateCipher(settings.template_key_bytes()),
                   keys=PatientKeyStore(settings.keystore_url or default_keystore_url(settings.database_url),
                                        settings.template_key_bytes()), key_cache=key_cache)
