"""``rastau-enrol``: enrol a clinic's patients from a CSV file and a folder of ID photos.

Each row is validated and its photos analysed before anything is written, so a bad row leaves nothing
behind; it goes to the failure report with the reason, and the batch carries on.
"""
from __future__ import annotations

import asyncio
import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from core import csvfile
from core.cli import CONTEXT_SETTINGS
from core.clock import SystemClock
from core.config import MissingSecrets, Settings
from core.db.engine import create_engine
from core.db.migrate import SchemaNotCurrent, ensure_schema_current
from core.db.uow import UnitOfWorkFactory
from core.errors import DomainError
from core.face_references import MAX_REFERENCES
from core.iin import mask_iin, parse_iin
from core.logs import configure_logging, get_logger
from core.model import Language
from core.phone import normalise_phone
from core.services import Context, registry
from core.services.access import BULK_ENROL
from server.face.image import ImageRejected
from server.face.pipeline import FaceAnalysis
from server.face.pool import FacePool, FacePoolBroken

COLUMNS = ("iin", "full_name", "phone", "language", "photo")
REPORT_COLUMNS = ("line", "iin", "full_name", "photo", "reason", "detail")
EXIT_OK, EXIT_SOME_FAILED, EXIT_CANNOT_RUN = 0, 1, 2

log = get_logger(__name__)


class CannotRun(click.ClickException):
    exit_code = EXIT_CANNOT_RUN


class RowFailed(Exception):
    def __init__(self, reason: str, detail: str, photo: str = ""):
        super().__init__(detail)
        self.reason, self.detail, self.photo = reason, detail, photo


@dataclass
class Row:
    line: int
    iin: str
    full_name: str
    phone: str
    language: Language | None  # blank: a new patient gets ru, an existing one keeps theirs
    photos: list[Path]
    encodings: list[tuple[float, ...]] = field(default_factory=list)


@dataclass(frozen=True)
class Failure:
    line: int
    iin: str
    full_name: str
    photo: str
    reason: str
    detail: str


def read_rows(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, values) per data row; refuses a file without the expected header."""
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel writes a BOM
        reader = csv.DictReader(handle)
        header = [name.strip().lower() for name in reader.fieldnames or []]
        missing = [name for name in COLUMNS if name not in header]
        if missing:
            raise CannotRun(
                f"{csv_path} lacks the column(s) {', '.join(missing)}; the header must be "
                f"{','.join(COLUMNS)} (save from Excel as 'CSV UTF-8 (comma delimited)')")
        reader.fieldnames = header
        return [(reader.line_num, {k: (v or "").strip() for k, v in raw.items() if k}) for raw in reader]


def validate(line: int, values: dict[str, str], photos_dir: Path, max_bytes: int) -> Row:
    """Everything that can be checked without the face workers; raises RowFailed."""
    try:
        iin = parse_iin(values["iin"]).iin
        phone = normalise_phone(values["phone"])
    except DomainError as exc:
        raise RowFailed(exc.code, exc.detail) from None
    if not values["full_name"]:
        raise RowFailed("invalid_value", "full_name is empty")
    try:
        language = Language(values["language"].lower()) if values["language"] else None
    except ValueError:
        raise RowFailed("invalid_value", f"language must be kk or ru, got {values['language']!r}") from None
    names = [name.strip() for name in values["photo"].split(";") if name.strip()]
    if not 1 <= len(names) <= MAX_REFERENCES:
        raise RowFailed("invalid_value", f"give 1 to {MAX_REFERENCES} photo file names separated by ';', "
                                         f"got {len(names)}")
    return Row(line, iin, values["full_name"], phone, language, [_photo_path(photos_dir, n, max_bytes) for n in names])


def _photo_path(photos_dir: Path, name: str, max_bytes: int) -> Path:
    path = (photos_dir / name).resolve()
    if not path.is_relative_to(photos_dir.resolve()):
        raise RowFailed("missing_photo", f"{name} is outside the photos folder", name)
    if not path.is_file():
        raise RowFailed("missing_photo", f"{name} was not found in {photos_dir}", name)
    size = path.stat().st_size
    if size > max_bytes:
        raise RowFailed("too_large", f"{name} is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.1f} MB",
                        name)
    return path


async def analyse_photos(row: Row, photos_dir: Path, pool: FacePool) -> Row:
    """Fill in one encoding per photo; every photo must show exactly one face."""
    root = photos_dir.resolve()  # noqa: ASYNC240 - one stat per row, beside seconds of face analysis
    for path in row.photos:
        name = str(path.relative_to(root))
        try:
            analysis = await _analyse_once_more_if_worker_died(pool, await asyncio.to_thread(path.read_bytes))
        except OSError as exc:
            raise RowFailed("unreadable", f"{name}: cannot read the file ({exc.strerror})", name) from None
        except ImageRejected as exc:
            raise RowFailed(exc.reason, f"{name}: {exc.message}", name) from None
        except FacePoolBroken as exc:
            raise RowFailed("worker_failed", f"{name}: {exc}", name) from None
        if analysis.outcome == "no_face":
            raise RowFailed("no_face", f"{name}: no face found; use a frontal photo with the face clearly visible",
                            name)
        if analysis.outcome == "multiple_faces":
            raise RowFailed("multiple_faces", f"{name}: several faces found; use a photo of the patient alone",
                            name)
        assert analysis.encoding is not None, "an ok analysis carries its encoding"
        row.encodings.append(analysis.encoding)
    return row


async def _analyse_once_more_if_worker_died(pool: FacePool, data: bytes) -> FaceAnalysis:
    try:
        return await pool.analyse(data)
    except FacePoolBroken:
        return await pool.analyse(data)


async def enrol_rows(ctx: Context, pool: FacePool, clinic_id: int, rows: list[tuple[int, dict[str, str]]],
                     photos_dir: Path, consent_by: str,
                     on_row_done: Callable[[], object]) -> tuple[int, list[Failure]]:
    """Validate every row, analyse photos with all workers busy, then write the good rows in file order."""
    failures: list[Failure] = []
    seen_iins: dict[str, int] = {}
    window = asyncio.Semaphore(pool.workers * 2)  # enough queued to keep every worker busy, no more in memory

    async def prepare(line: int, values: dict[str, str]) -> Row:
        row = validate(line, values, photos_dir, ctx.settings.face_max_bytes)
        if row.iin in seen_iins:
            raise RowFailed("duplicate_iin", f"this IIN is already on line {seen_iins[row.iin]} of the CSV")
        seen_iins[row.iin] = line
        async with window:
            return await analyse_photos(row, photos_dir, pool)

    tasks = [(line, values, asyncio.create_task(prepare(line, values))) for line, values in rows]
    enrolled = 0
    for line, values, task in tasks:
        try:
            row = await task
            await registry.enrol_patient(ctx, clinic_id, row.iin, row.full_name, row.phone, row.language, consent_by,
                                         row.encodings, caller=BULK_ENROL)
            enrolled += 1
        except (RowFailed, DomainError) as exc:
            reason = exc.reason if isinstance(exc, RowFailed) else exc.code
            detail = exc.detail
            failures.append(Failure(line, mask_iin(values.get("iin", "")), values.get("full_name", ""),
                                    getattr(exc, "photo", ""), reason, detail))
            log.debug("enrolment row failed", line=line, iin=mask_iin(values.get("iin", "")), reason=reason)
        on_row_done()
    return enrolled, failures


def write_report(path: Path, failures: list[Failure]) -> None:
    with path.open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csvfile.writer(handle)
        writer.writerow(REPORT_COLUMNS)
        writer.writerows((f.line, f.iin, f.full_name, f.photo, f.reason, f.detail) for f in failures)


async def run(settings: Settings, clinic_id: int, csv_path: Path, photos_dir: Path, report: Path,
              workers: int, consent_by: str) -> int:
    rows = read_rows(csv_path)
    engine = create_engine(settings.database_url)
    try:
        await ensure_schema_current(engine)
        ctx = Context.build(settings, UnitOfWorkFactory(engine), SystemClock())
        async with ctx.uow(read_only=True) as uow:
            clinic = await uow.clinics.get(clinic_id)
        pool = FacePool(workers, max_bytes=settings.face_max_bytes, max_pixels=settings.face_max_pixels)
        click.echo(f"starting {workers} face worker(s)…", err=True)
        await pool.start()
        try:
            with click.progressbar(length=len(rows), label=f"enrolling into {clinic.name}",
                                   file=sys.stderr) as bar:
                enrolled, failures = await enrol_rows(ctx, pool, clinic_id, rows, photos_dir, consent_by,
                                                      lambda: bar.update(1))
        finally:
            await pool.close()
    finally:
        await engine.dispose()
    write_report(report, failures)
    click.echo(f"enrolled {enrolled}, failed {len(failures)}; report written to {report}")
    log.info("bulk enrolment finished", clinic=clinic_id, enrolled=enrolled, failed=len(failures))
    return EXIT_SOME_FAILED if failures else EXIT_OK


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--clinic", "clinic_id", type=int, required=True, help="id of the clinic the patients belong to")
@click.option("--csv", "csv_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with the columns iin,full_name,phone,language,photo (photo: file names joined by ';')")
@click.option("--photos", "photos_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path), help="folder the photo names refer to")
@click.option("--report", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="where to write the failed rows [default: <csv name>.failures.csv next to the CSV]")
@click.option("--workers", type=click.IntRange(1, 32), default=None,
              help="face worker processes [default: RASTAU_FACE_WORKERS]")
@click.option("--consent-by", required=True,
              help="who collected the patients' written consent (name or staff id); recorded with each patient")
def main(clinic_id: int, csv_path: Path, photos_dir: Path, report: Path | None, workers: int | None,
         consent_by: str) -> None:
    """Enrol a clinic's patients and their reference photos from a CSV file.

    Rows that fail (invalid IIN or phone, missing photo, no face, several faces, unreadable image)
    are listed in the report with the reason; the others are enrolled. Exit status: 0 all enrolled,
    1 some rows failed, 2 nothing could be done.
    """
    if not consent_by.strip():
        raise click.BadParameter("name who collected the consent", param_hint="--consent-by")
    report = report or csv_path.with_name(f"{csv_path.stem}.failures.csv")
    try:
        settings = Settings()
        if settings.template_key is None:  # an invented key would seal references nothing can ever open
            raise CannotRun("RASTAU_TEMPLATE_KEY is not set; references enrolled with a throwaway "
                                       "key could never be verified. Set the key the server uses.")
        settings = settings.require_secrets()
        configure_logging(settings.log_level, settings.log_format)
        code = asyncio.run(run(settings, clinic_id, csv_path, photos_dir, report, workers or settings.face_workers,
                               consent_by.strip()))
    except DomainError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        code = EXIT_CANNOT_RUN
    except (MissingSecrets, SchemaNotCurrent) as exc:
        click.echo(f"error: {exc}", err=True)
        code = EXIT_CANNOT_RUN
    sys.exit(code)


if __name__ == "__main__":
    main()
