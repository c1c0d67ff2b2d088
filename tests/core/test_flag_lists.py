"""The operator's lists the red flags read: a date-of-death file and the service rules, as the operator imports them
(in process, and once through `rastau` itself). Bad rows are named by line and reason, never by IIN; importing a file
twice changes nothing."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.cli import main as rastau
from core.errors import InvalidValue, NotFound
from core.iin import make_iin
from core.services import flag_lists
from tests.conftest import migrate_from_template

ROOT = Path(__file__).resolve().parents[2]
TODAY = dt.date(2026, 11, 25)
MAN_1950 = make_iin(dt.date(1950, 7, 7), True, 10)
WOMAN_1990 = make_iin(dt.date(1990, 2, 3), False, 20)
BAD_CHECK_DIGIT = MAN_1950[:11] + str((int(MAN_1950[11]) + 1) % 10)

DEATHS_FILE = "\n".join([
    "IIN,date",                        # 1: a header, skipped
    f"{MAN_1950},2025-06-01",          # 2
    f"{WOMAN_1990},03.02.2024",        # 3: day.month.year
    "",                                # 4: blank, skipped
    f"{BAD_CHECK_DIGIT},2025-01-01",   # 5
    f"{WOMAN_1990},2026-13-01",        # 6
    f"{WOMAN_1990},2026-11-26",        # 7: tomorrow
    f"{MAN_1950},1949-01-01",          # 8: before the birth the IIN gives
    f"{MAN_1950},2025-06-02",          # 9: a second, different date
    f"{MAN_1950},2025-06-01",          # 10: the same again: harmless
    f"{WOMAN_1990}",                   # 11
]) + "\n"


def test_a_death_list_is_checked_row_by_row_and_reasons_never_carry_the_iin():
    deaths, rejected = flag_lists.read_deaths(DEATHS_FILE, TODAY)
    assert deaths == {MAN_1950: dt.date(2025, 6, 1), WOMAN_1990: dt.date(2024, 2, 3)}
    assert [(r.line, r.reason) for r in rejected] == [
        (5, "IIN check digit does not match; please re-check the number"),
        (6, "the date must be YYYY-MM-DD or DD.MM.YYYY"),
        (7, "the date of death is in the future"),
        (8, "the date of death is before the birth date the IIN gives"),
        (9, "the same IIN is listed on line 2 with another date"),
        (11, "expected 2 columns (IIN,date), found 1"),
    ]
    assert not any(iin in r.reason for r in rejected for iin in (MAN_1950, WOMAN_1990, BAD_CHECK_DIGIT))


async def test_importing_a_death_list_twice_changes_nothing_and_a_new_date_replaces_the_old(ctx):
    first = await flag_lists.import_deaths(ctx, DEATHS_FILE, "registry 2026-11")
    assert (first.added, first.updated, first.unchanged, len(first.rejected)) == (2, 0, 0, 6)
    again = await flag_lists.import_deaths(ctx, DEATHS_FILE, "registry 2026-11")
    assert (again.added, again.updated, again.unchanged) == (0, 0, 2)
    corrected = await flag_lists.import_deaths(ctx, f"{WOMAN_1990},2024-02-04\n", "correction")
    assert (corrected.added, corrected.updated, corrected.unchanged) == (0, 1, 0)
    async with ctx.uow(read_only=True) as uow:
        assert await uow.deaths.count() == 2


@pytest.mark.parametrize("row, reason", [
    ("X1,male,30,20,order", "min_age is above max_age"),
    ("X1,man,30,70,order", "sex must be male, female"),
    ("X1,female,thirty,,order", "min_age must be a whole number"),
    ("X1,female,,131,order", "max_age must be a whole number"),
    ("X1,,,,order", "fits everyone"),
    ("X1,female,30,70,", "say where the rule comes from"),
    (",female,30,70,order", "service code must be 1-64"),
    ("X1,female,30,70", "expected 5 columns"),
])
def test_a_service_rule_that_cannot_be_right_is_refused_saying_why(row, reason):
    with pytest.raises(InvalidValue, match=reason):
        flag_lists.read_rule(row.split(","))


async def test_the_seeded_screenings_come_with_their_source_and_the_operator_edits_them(ctx):
    seeded = {r.service_code: r for r in await flag_lists.service_rules(ctx)}
    assert {code: (r.sex, r.min_age, r.max_age) for code, r in seeded.items()} == {
        "SCREEN-CERVICAL": ("female", 30, 70), "SCREEN-BREAST": ("female", 40, 70),
        "SCREEN-COLORECTAL": (None, 50, 70)}
    assert all("ҚР ДСМ-174/2020" in r.source for r in seeded.values())
    done = await flag_lists.import_service_rules(ctx, "SCREEN-CERVICAL,female,30,70,"  # as it is: unchanged
                                                      f"\"{seeded['SCREEN-CERVICAL'].source}\"\n"
                                                      "A02.001,female,25,65,regional order 12\nbad,row\n")
    assert (done.added, done.changed, [r.line for r in done.rejected]) == (1, 0, [3])
    await flag_lists.remove_service_rule(ctx, "A02.001")
    with pytest.raises(NotFound):
        await flag_lists.remove_service_rule(ctx, "A02.001")


def test_the_commands_explain_themselves():
    for argv in (["import-deaths", "-h"], ["service-rules", "-h"], ["service-rules", "import", "-h"], ["flags", "-h"]):
        done = CliRunner().invoke(rastau, argv, prog_name="rastau")
        assert done.exit_code == 0, done.output
    text = " ".join(CliRunner().invoke(rastau, ["import-deaths", "-h"], prog_name="rastau").output.split())
    assert "IIN,date" in text and "DD.MM.YYYY" in text and "never the IIN" in text
    done = CliRunner().invoke(rastau, ["flags", "--from", "25.11.2026"], prog_name="rastau")
    assert done.exit_code == 2 and "--from" in done.output


@pytest.mark.slow  # the rastau CLI as a process
async def test_rastau_import_deaths_reports_rejected_lines_without_iins_and_flags_prints_them(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'rastau.db'}"
    await migrate_from_template(url)
    listing = tmp_path / "deaths.csv"
    listing.write_text("\ufeff" + DEATHS_FILE.replace(f"{WOMAN_1990},2026-11-26", f"{WOMAN_1990},2099-01-01"))
    env = {"RASTAU_DATABASE_URL": url, "RASTAU_MODE": "dev", "PATH": "/usr/bin:/bin"}

    def rastau_run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "core.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                              env=env, timeout=60)

    done = rastau_run("import-deaths", str(listing))
    assert done.returncode == 2, done.stderr
    assert "deaths: 2 added, 0 updated, 0 already listed, 6 rejected" in done.stdout
    assert "line 5: IIN check digit does not match" in done.stderr and "line 7: the date of death is in the future" \
        in done.stderr
    for iin in (MAN_1950, WOMAN_1990, BAD_CHECK_DIGIT):
        assert iin not in done.stdout + done.stderr
    again = rastau_run("import-deaths", str(listing), "--source", "registry")
    assert "deaths: 0 added, 0 updated, 2 already listed, 6 rejected" in again.stdout

    flags = rastau_run("flags", "--from", "2026-11-01", "--to", "2026-11-30", "--csv", str(tmp_path / "flags.csv"))
    assert flags.returncode == 0, flags.stderr
    assert "0 flags" in flags.stdout
    assert (tmp_path / "flags.csv").read_text().startswith("clinic_id,doctor_id,day,kind,value,threshold")


def test_service_rules_round_trip_through_the_command_line(tmp_path):
    """What `service-rules list` prints, `service-rules import` takes back unchanged; a bad row exits 2 by line."""
    import asyncio
    url = f"sqlite+aiosqlite:///{tmp_path / 'rastau.db'}"
    asyncio.run(migrate_from_template(url))
    env = {"RASTAU_DATABASE_URL": url, "RASTAU_MODE": "dev"}
    listed = CliRunner().invoke(rastau, ["service-rules", "list"], prog_name="rastau", env=env)
    assert listed.exit_code == 0, listed.output
    table = listed.stdout
    assert 'SCREEN-CERVICAL,female,30,70,"cervical cancer screening: women 30-70 (MoH order ҚР ДСМ-174/2020,' in table
    (tmp_path / "rules.csv").write_text(table + "A02.001,male,50,,regional order 12\nA03,,,,nothing\n")
    done = CliRunner().invoke(rastau, ["service-rules", "import", str(tmp_path / "rules.csv")], prog_name="rastau",
                              env=env)
    assert done.exit_code == 2
    assert "service rules: 1 added, 0 changed, 1 rejected" in done.stdout
    assert "line 6: a rule without a sex or an age bound fits everyone" in done.output
