"""What browsers send, generated: query parameters and the rollout form either parse into
checked values or are refused with one line naming the field, and never raise anything else.
The rendered pages escape whatever devices report."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.console import charts, pages
from gateway.console.queries import (
    PAGE_SIZES,
    SORT_KEYS,
    DeviceQuery,
    QueryError,
    device_query,
    rollout_body,
    select,
)
from gateway.devices.inventory import Device

KEYS = ["q", "model", "version", "update", "state", "sort", "order", "page", "per_page"]
FORM_KEYS = ["model", "version", "stages", "soak_s", "max_failure_rate", "auto_rollback", "x"]
hostile = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["", "-1", "0", "1e9", "nan", "inf", "1_000", "٣", "²", " 7 ", "10,50,100"]),
    st.integers().map(str),
    st.floats().map(str),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), hostile))
def test_device_query_parameters_parse_or_are_refused_in_one_line(params):
    try:
        query = device_query(params)
    except QueryError as exc:
        message = str(exc)
        assert "\n" not in message and message.split(":")[0] in KEYS
        return
    assert query.sort in SORT_KEYS and query.per_page in PAGE_SIZES and query.page >= 1
    assert len(query.search) <= 128 and len(query.model) <= 128
    rows, total = select([], query)
    assert rows == [] and total == 0
    assert device_query(query.params()) == query  # links carry the same query


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FORM_KEYS), hostile))
def test_the_rollout_form_parses_or_is_refused_in_one_line(form):
    try:
        body = rollout_body(form)
    except QueryError as exc:
        assert "\n" not in str(exc) and str(exc).split(":")[0] in FORM_KEYS
        return
    assert isinstance(body["model"], str) and 1 <= len(body["model"]) <= 128
    assert isinstance(body["version"], int) and body["version"] >= 1
    assert all(isinstance(s, int) and 0 <= s <= 999 for s in body["stages"])
    assert 0 <= body["soak_s"] <= 30 * 86400 and 0 <= body["max_failure_rate"] <= 1


def test_a_rollout_form_becomes_the_api_body():
    form = {"model": "kws", "version": "2", "stages": "10, 50,100", "soak_s": "60",
            "max_failure_rate": "0.1", "auto_rollback": "on"}  # fmt: skip
    assert rollout_body(form) == {
        "model": "kws", "version": 2, "stages": [10, 50, 100], "soak_s": 60.0,
        "max_failure_rate": 0.1, "auto_rollback": True,
    }  # fmt: skip


def _device(i: int, **kw) -> Device:
    return Device(device=f"d{i:04d}", first_seen=1.0, last_seen=float(i), **kw)


def test_select_filters_sorts_and_pages():
    devices = [
        _device(i, state="online" if i % 2 else "offline", model="kws", model_version=1 + i % 3)
        for i in range(120)
    ]
    query = DeviceQuery(state="online", version=2, sort="last_seen", descending=True, per_page=25)
    rows, total = select(devices, query)
    assert total == len([d for d in devices if d.state == "online" and d.model_version == 2])
    assert [d.last_seen for d in rows] == sorted((d.last_seen for d in rows), reverse=True)
    rows2, _ = select(devices, dataclasses.replace(query, page=2))
    assert not {d.device for d in rows} & {d.device for d in rows2}
    assert select(devices, DeviceQuery(search="D011"))[1] == 10  # d0110..d0119


class Tags(HTMLParser):
    """Every tag and attribute name in a page, and the text it shows."""

    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)

    def handle_data(self, data):
        self.text.append(data)


def _parsed(html: str) -> Tags:
    parser = Tags()
    parser.feed(html)
    parser.close()
    return parser


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60), st.text(max_size=60))
def test_whatever_a_device_reports_is_shown_as_text_never_as_markup(name, reason):
    def render(name: str, reason: str) -> str:
        row = Device(
            device=name, first_seen=1.0, last_seen=2.0, state=name, model=name,
            update_state=name, last_event=reason, last_rollout=name, last_reason=reason,
            hardware_tags=(name,), mcus=({"name": name, "version": reason, "state": reason},),
        )  # fmt: skip
        return (
            pages.device(row)
            + pages.devices([row], 1, DeviceQuery())
            + pages.overview({}, [row], {})
            + charts.shares([(name, 1)], reason)
        )

    plain, hostile_page = _parsed(render("dev", "why")), _parsed(render(name, reason))
    assert hostile_page.tags == plain.tags and hostile_page.attrs == plain.attrs
    shown = "".join(hostile_page.text)
    assert name.replace("\r", "\n") in shown.replace("\r", "\n") or not name.strip()
