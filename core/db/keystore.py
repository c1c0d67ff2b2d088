"""Per-patient keys for face references, kept apart from the main database so they can be destroyed.

Each patient's face references are sealed under a key of their own (a data key, 32 random bytes). The data key is
stored wrapped (AES-GCM) under a wrapping key derived from RASTAU_TEMPLATE_KEY, in a database of its own
(RASTAU_KEYSTORE_URL), not in the main one. Destroying the row destroys the references: a copy of the main database
taken before holds only ciphertext whose key no longer exists anywhere (crypto-shredding). A copy of the key store
itself would still open them, so the key store's own backups must be kept for a short time only (docs/privacy.md).

Unset, RASTAU_KEYSTORE_URL defaults to a file beside a SQLite main database (``rastau.db`` -> ``rastau.keys.db``),
and to the main database itself on PostgreSQL (then a backup of the main database holds the keys too: set a
separate database in production). SQLite deletes with ``secure_delete`` and truncates its write-ahead log after a
key is destroyed, so the key's bytes are not left behind in free pages of the file.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, delete, event, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from core.errors import TemplateDecryptError

_NONCE = 12
KEY_SIZE = 32

_metadata = MetaData()
patient_keys = Table(
    "patient_keys", _metadata,
    Column("patient_id", Integer, primary_key=True, autoincrement=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", String(40), nullable=False),
)


def default_keystore_url(database_url: str) -> str:
    """Beside a SQLite file (``x.db`` -> ``x.keys.db``); the main database itself otherwise."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        return str(url.set(database=str(path.with_name(f"{path.stem}.keys{path.suffix or '.db'}"))))
    return database_url


class PatientKeyStore:
    """Create, read and destroy the patients' data keys. Opens a connection per call (NullPool): keys are read on
    an enrolment or a face match, never on the hot paths."""

    def __init__(self, url: str, master: bytes):
        self.url = url
        wrap = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"rastau patient key wrapping v1").derive(master)
        self._aead = AESGCM(wrap)
        self._sqlite = make_url(url).get_backend_name() == "sqlite"
        self._engine: AsyncEngine | None = None
        self._ready = False

    def _engine_now(self) -> AsyncEngine:
        if self._engine is None:
            parsed = make_url(self.url)
            connect_args: dict[str, Any] = {}
            if self._sqlite:
                if parsed.database and parsed.database != ":memory:":
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                connect_args = {"timeout": 30}
            elif "search_path" in parsed.query:
                connect_args["server_settings"] = {"search_path": parsed.query["search_path"]}
                parsed = parsed.difference_update_query(["search_path"])
            engine = create_async_engine(parsed, poolclass=NullPool, hide_parameters=True, connect_args=connect_args)
            if self._sqlite:
                @event.listens_for(engine.sync_engine, "connect")
                def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
                    cursor = dbapi_connection.cursor()
                    cursor.execute("PRAGMA journal_mode=WAL")
                    cursor.execute("PRAGMA synchronous=FULL")
                    cursor.execute("PRAGMA secure_delete=ON")  # a deleted key's bytes are overwritten, not freed
                    cursor.execute("PRAGMA busy_timeout=30000")
                    cursor.close()
            self._engine = engine
        return self._engine

    async def _ensure(self) -> AsyncEngine:
        engine = self._engine_now()
        if not self._ready:
            async with engine.begin() as conn:
                await conn.run_sync(_metadata.create_all)
            self._ready = True
        return engine

    @staticmethod
    def _aad(patient_id: int) -> bytes:
        return f"rastau-patient-key:v1:patient:{patient_id}".encode()

    def _unwrap(self, patient_id: int, wrapped: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], self._aad(patient_id))
        except (InvalidTag, ValueError):
            raise TemplateDecryptError(f"the key of patient {patient_id} does not open: moved or altered") from None

    async def key(self, patient_id: int, *, create: bool = False, now: dt.datetime | None = None) -> bytes | None:
        """The patient's data key; None when there is none (never made, or destroyed) and ``create`` is False."""
        engine = await self._ensure()
        async with engine.begin() as conn:
            row = (await conn.execute(select(patient_keys.c.wrapped)
                                      .where(patient_keys.c.patient_id == patient_id))).first()
            if row is None and create:
                fresh = os.urandom(KEY_SIZE)
                nonce = os.urandom(_NONCE)
                wrapped = nonce + self._aead.encrypt(nonce, fresh, self._aad(patient_id))
                ins = (sqlite_insert if self._sqlite else postgresql_insert)(patient_keys)
                await conn.execute(ins.values(patient_id=patient_id, wrapped=wrapped,
                                              created_at=(now or dt.datetime.now(dt.UTC)).isoformat())
                                   .on_conflict_do_nothing())
                row = (await conn.execute(select(patient_keys.c.wrapped)
                                          .where(patient_keys.c.patient_id == patient_id))).first()
        return None if row is None else self._unwrap(patient_id, bytes(row.wrapped))

    async def has_key(self, patient_id: int) -> bool:
        engine = await self._ensure()
        async with engine.connect() as conn:
            return (await conn.execute(select(patient_keys.c.patient_id)
                                       .where(patient_keys.c.patient_id == patient_id))).first() is not None

    async def destroy(self, patient_ids: list[int]) -> int:
        """Delete these patients' keys for good; how many existed."""
        if not patient_ids:
            return 0
        engine = await self._ensure()
        async with engine.begin() as conn:
            res = await conn.execute(delete(patient_keys).where(patient_keys.c.patient_id.in_(patient_ids)))
            count = res.rowcount
        if self._sqlite and count:
            async with engine.connect() as conn:  # the deleted pages leave the write-ahead log too
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return count

    async def older_than(self, patient_ids: list[int], moment: dt.datetime) -> list[int]:
        """Those of these patients whose key was made before ``moment``."""
        if not patient_ids:
            return []
        engine = await self._ensure()
        async with engine.connect() as conn:
            rows = (await conn.execute(select(patient_keys.c.patient_id, patient_keys.c.created_at)
                                       .where(patient_keys.c.patient_id.in_(patient_ids)))).all()
        return [r.patient_id for r in rows if dt.datetime.fromisoformat(r.created_at) < moment]

    async def patients(self) -> list[int]:
        engine = await self._ensure()
        async with engine.connect() as conn:
            return [r.patient_id for r in (await conn.execute(select(patient_keys.c.patient_id)))]

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
