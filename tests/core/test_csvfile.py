"""The one CSV writer: a cell a spreadsheet would run as a formula is written as text."""
from __future__ import annotations

import csv
import io

from core import csvfile


def test_cells_that_start_a_formula_get_a_quote_and_the_rest_stay_as_they_are():
    out = io.StringIO()
    writer = csvfile.writer(out)
    hostile = ['=HYPERLINK("http://x","y")', "+77011234567", "-1", "@SUM(1)", "\tx", "\rx"]
    writer.writerow(hostile)
    writer.writerows([["Asel", "a=b", " =1", 42, -5, 1.5, None, ""]])
    rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert rows[0] == ["'" + cell for cell in hostile]
    assert rows[1] == ["Asel", "a=b", " =1", "42", "-5", "1.5", "", ""]  # numbers are never formulas
