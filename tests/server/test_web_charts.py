"""The scorecard's 30-day chart (issue 13): server-side SVG, read back with xml.etree as a screen reader or an
auditor's script would: it names itself, says what it shows, labels its axis and days, has a legend, and its bars
are as tall as the counts."""
from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from core.services.dashboard import DayCounts
from server.web.charts import ChartText, nice_step, stacked_days_svg

NS = {"s": "http://www.w3.org/2000/svg"}
LAST = dt.date(2026, 11, 24)
LABELS = {"face_live": "Live face", "face": "Face (one frame)", "code": "Code", "unverified": "No evidence",
          "scheduled": "Waiting", "confirmed": "Yes", "claimed": "Yes, unverified", "disputed": "I wasn't there",
          "no_answer": "No answer"}


def text(**overrides: object) -> ChartText:
    values: dict[str, object] = dict(title="Dr Ghost, 26.10–24.11", desc="20 visits: 15 by code, 1 face.",
                                     y_axis="visits", methods="Verified by", answers="Patient's answer",
                                     labels=LABELS, empty="No visits in these 30 days")
    return ChartText(**{**values, **overrides})  # type: ignore[arg-type]


def days(**last: int) -> list[DayCounts]:
    series = [DayCounts(LAST - dt.timedelta(days=29 - n)) for n in range(30)]
    series[-1] = DayCounts(LAST, **last)
    series[-3] = DayCounts(LAST - dt.timedelta(days=2), face_live=4, confirmed=4)
    return series


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def bars(root: ET.Element, day: dt.date) -> dict[str, ET.Element]:
    return {r.get("class", "").removeprefix("seg-"): r for r in root.iterfind(".//s:rect[@data-day]", NS)
            if r.get("data-day") == day.isoformat()}


def test_the_chart_names_itself_for_a_screen_reader_and_labels_axis_days_and_legend():
    root = parse(stacked_days_svg(days(code=15, face=1, unverified=4, confirmed=14, disputed=2, no_answer=4),
                                  text(), id_prefix="ghost"))
    assert root.get("role") == "img" and root.get("aria-labelledby") == "ghost-title ghost-desc"
    assert root.find("s:title", NS).get("id") == "ghost-title"
    assert root.find("s:title", NS).text == "Dr Ghost, 26.10–24.11"
    assert root.find("s:desc", NS).text == "20 visits: 15 by code, 1 face."
    words = [t.text for t in root.iterfind(".//s:text", NS)]
    assert "visits" in words and "24.11" in words and "19.11" in words and "26.10" not in words  # every 5th day
    legend = [t.text for t in root.iterfind(".//s:g[@class='legend']/s:text", NS)]
    assert legend == ["Verified by", "Live face", "Face (one frame)", "Code", "No evidence", "Waiting",
                      "Patient's answer", "Yes", "Yes, unverified", "I wasn't there", "No answer"]
    ticks = [t.text for t in root.iterfind(".//s:g[@class='y-axis']/s:text", NS)]
    assert ticks[:5] == ["0", "5", "10", "15", "20"]
    assert "style" not in ET.tostring(root, encoding="unicode")  # the page's CSP forbids inline styles


def test_bars_stack_each_count_at_its_height_and_say_it_in_their_title():
    root = parse(stacked_days_svg(days(code=15, face=1, unverified=4, confirmed=14, disputed=2, no_answer=4), text()))
    last = bars(root, LAST)
    assert set(last) == {"face", "code", "unverified", "confirmed", "disputed", "no_answer"}  # zero counts: no part
    heights = {key: float(r.get("height")) for key, r in last.items()}
    assert heights["code"] == 15 * heights["face"]
    assert heights["face"] + heights["code"] + heights["unverified"] == \
        heights["confirmed"] + heights["disputed"] + heights["no_answer"]  # both bars stand for the same 20 visits
    method_x, answer_x = float(last["code"].get("x")), float(last["confirmed"].get("x"))
    assert answer_x > method_x  # the answers' bar beside the methods' bar
    face_top = float(last["face"].get("y"))
    assert float(last["code"].get("y")) + heights["code"] == face_top  # code stacked right on top of face
    assert last["disputed"].find("s:title", NS).text == "24.11: Patient's answer: I wasn't there 2"
    assert bars(root, LAST - dt.timedelta(days=2))["face_live"].get("data-count") == "4"
    assert bars(root, LAST - dt.timedelta(days=1)) == {}


def test_an_empty_month_says_so_and_hostile_names_stay_text():
    root = parse(stacked_days_svg(days(), text(title='<script>alert(1)</script> & "Dr"',
                                                labels={**LABELS, "code": "</text><script>x</script>"})))
    assert root.find("s:title", NS).text == '<script>alert(1)</script> & "Dr"'
    assert root.find(".//s:script", NS) is None
    assert "Code" not in [t.text for t in root.iterfind(".//s:text", NS)]
    root = parse(stacked_days_svg([DayCounts(LAST - dt.timedelta(days=n)) for n in range(29, -1, -1)], text()))
    assert "No visits in these 30 days" in [t.text for t in root.iterfind(".//s:text", NS)]
    assert root.find(".//s:rect[@data-day]", NS) is None


def test_ticks_are_round_numbers():
    assert [nice_step(n) for n in (0, 4, 7, 20, 23, 99, 100, 1442)] == [1, 1, 2, 5, 5, 20, 20, 500]
