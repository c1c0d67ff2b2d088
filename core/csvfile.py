"""The one CSV writer for every file Rastau writes (the digest from the server and the bot, rastau-enrol's report).

Names, reasons and file names come from clinic systems and patients; a spreadsheet runs a cell that starts with
``= + - @``, TAB or CR as a formula (``=HYPERLINK(...)`` as a patient's name). Such a text cell gets a leading
single quote, as OWASP advises, so it is shown as the text it is. Phone numbers (``+7701…``) are escaped too:
telling a phone from a formula is the guess this rule exists to avoid. Numbers are never formulas.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO, Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    if value is None or isinstance(value, (int, float)):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


class SafeWriter:
    """``csv.writer`` with every cell passed through :func:`safe_cell`."""

    def __init__(self, out: IO[str], **fmt: Any) -> None:
        self._writer = csv.writer(out, **fmt)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([safe_cell(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(out: IO[str], **fmt: Any) -> SafeWriter:
    return SafeWriter(out, **fmt)


# Excel opens a .csv by double-click with the list separator of the computer's regional settings: ";" under Russian
# and Kazakh settings (the decimal separator there is ","), so a ","-separated file lands in one column. The BOM
# makes it read the bytes as UTF-8 (Cyrillic) instead of the ANSI code page. Files meant for people's
# spreadsheets use both; files meant for programs (the API's CSV, signed exports) keep their documented format.
SPREADSHEET_DELIMITER = ";"
BOM = "\ufeff"


def spreadsheet_writer(out: IO[str]) -> SafeWriter:
    """A writer for a file people open in Excel with ru/kk settings: ";"-separated, CRLF, formulas kept as text.
    Write :data:`BOM` first (or encode with ``utf-8-sig``)."""
    return SafeWriter(out, delimiter=SPREADSHEET_DELIMITER, lineterminator="\r\n")
