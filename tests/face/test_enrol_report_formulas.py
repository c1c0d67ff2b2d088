"""rastau-enrol's failure report opens in Excel: a hostile CSV must not turn its cells into formulas."""
from __future__ import annotations

import csv

from tests.face.test_bulk_enrol import _write_csv

FORMULA_NAMES = ['=HYPERLINK("http://x","y")', "+1", "-1", "@SUM(1)"]


async def test_the_failure_report_keeps_formulas_as_text(ctx, clinic_world, tmp_path, enrol):
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = [["900101300018", name, "87011234567", "ru", "a.jpg"] for name in FORMULA_NAMES]  # bad check digit
    rows.append(["021231500015", "Plain Name", "87011234567", "ru", '=HYPERLINK("http://x","y").jpg'])
    report = tmp_path / "failures.csv"
    code, _out, err = await enrol(ctx.settings, tmp_path, "--clinic", str(clinic_world.clinic.id),
                                 "--csv", str(_write_csv(tmp_path / "p.csv", rows)), "--photos", str(photos),
                                 "--report", str(report), "--workers", "1", "--consent-by", "Nurse")
    assert code == 1, err
    with report.open(encoding="utf-8-sig", newline="") as handle:
        reported = list(csv.DictReader(handle))
    assert [r["full_name"] for r in reported] == ["'" + name for name in FORMULA_NAMES] + ["Plain Name"]
    missing = reported[-1]
    assert missing["reason"] == "missing_photo"
    assert missing["photo"] == "'=HYPERLINK(\"http://x\",\"y\").jpg" and missing["detail"].startswith("'=HYPERLINK")
    for row in reported:
        assert not any(value.startswith(("=", "+", "-", "@", "\t", "\r")) for value in row.values())
