"""The console's HTML, rendered on the server from plain data: every value that came from a
device, a release or a person goes through ``html.escape`` (``_e``) on its way into the page.

Each page is a fixed frame (navigation, forms) around a live fragment; ``console.js`` fetches
the fragment again every few seconds from ``/ui/api/live/...`` and swaps it in, so forms the
operator is filling in are never replaced under their hands.
"""

from __future__ import annotations

import time
from collections import Counter
from html import escape
from urllib.parse import quote, urlencode

from gateway.console import charts
from gateway.console.queries import PAGE_SIZES, SORT_KEYS, DeviceQuery
from gateway.devices.inventory import Device

NAV = (
    ("/ui/", "Fleet"),
    ("/ui/devices", "Devices"),
    ("/ui/releases", "Releases"),
    ("/ui/rollouts", "Rollouts"),
    ("/ui/data", "Data"),
)


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _when(ts: float | None) -> str:
    if not ts:
        return "—"
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
    return f'<time datetime="{text.replace(" ", "T")}Z">{text} UTC</time>'


def _bytes(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def _table(caption: str, head: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (escaped by the caller); headers and caption are escaped here."""
    if not rows:
        return f"<p>{_e(caption)}: none.</p>"
    th = "".join(f'<th scope="col">{_e(h)}</th>' for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<div class="scroll"><table><caption>{_e(caption)}</caption>'
        f"<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _device_link(device: str) -> str:
    return f'<a href="/ui/devices/{quote(device, safe="")}">{_e(device)}</a>'


def _rollout_link(rollout_id: str) -> str:
    return f'<a href="/ui/rollouts/{quote(rollout_id, safe="")}">{_e(rollout_id)}</a>'


def _version(d: Device) -> str:
    if not d.model:
        return "no model"
    return f"{d.model} v{d.model_version}" if d.model_version is not None else d.model


# -- frame ----------------------------------------------------------------------------------


def layout(
    title: str, site: str, body: str, *, role: str | None, csrf: str | None, current: str = ""
) -> str:
    nav = "".join(
        f'<li><a href="{href}"{" aria-current=page" if href == current else ""}>{name}</a></li>'
        for href, name in NAV
    )
    account = ""
    if role is not None:
        account = (
            '<form class="account" method="post" action="/ui/logout">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            f'<span class="role">Signed in as {_e(role)}</span> '
            '<button type="submit">Sign out</button></form>'
        )
    menu = f'<nav aria-label="Console"><ul>{nav}</ul></nav>' if role is not None else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} · edgefleet {_e(site)}</title>"
        '<link rel="stylesheet" href="/ui/static/console.css">'
        '<script src="/ui/static/console.js" defer></script></head><body>'
        '<a class="skip" href="#main">Skip to content</a>'
        f'<header><p class="brand">edgefleet · site {_e(site)}</p>{menu}{account}</header>'
        f'<main id="main"><h1>{_e(title)}</h1>{body}</main></body></html>'
    )


def live(source: str, fragment: str) -> str:
    """The part of a page ``console.js`` refreshes from ``source``."""
    return f'<div id="live" data-live="{_e(source)}">{fragment}</div>'


def notice(message: str, kind: str = "error") -> str:
    return f'<p class="notice {kind}" role="alert">{_e(message)}</p>'


def login(site: str, error: str | None = None) -> str:
    body = (notice(error) if error else "") + (
        '<form method="post" action="/ui/login" class="login">'
        '<label for="token">Admin or viewer token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        'required maxlength="4096" autofocus>'
        '<button type="submit">Sign in</button></form>'
        "<p>The tokens are in the gateway's <code>admin.token</code> and "
        "<code>viewer.token</code> files.</p>"
    )
    return layout("Sign in", site, body, role=None, csrf=None)


# -- fleet overview ---------------------------------------------------------------------------


def overview(status: dict, devices: list[Device], dead_letters: dict) -> str:
    online = sum(d.state == "online" for d in devices)
    alarms = [d for d in devices if d.drift_alarm]
    versions = Counter(_version(d) for d in devices)
    updates = Counter(d.update_state or "none" for d in devices)
    spool = status.get("spool", {})
    traffic = status.get("traffic", {})
    device_bytes, cloud_bytes = traffic.get("device_bytes", 0), traffic.get("cloud_bytes", 0)
    deep = sorted((d for d in devices if d.spool_depth), key=lambda d: -(d.spool_depth or 0))[:5]
    depth_total = sum(d.spool_depth or 0 for d in devices)
    cards = [
        ("Devices", len(devices)),
        ("Online", online),
        ("Offline", len(devices) - online),
        ("Drift alarms", len(alarms)),
        ("Cloud backlog (records)", spool.get("records", 0)),
        ("Dead letters", dead_letters.get("entries", 0)),
    ]
    summary = "".join(f'<div class="card"><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>' for k, v in cards)
    ratio = traffic.get("ratio")
    kept = max(device_bytes - cloud_bytes, 0)
    return (
        f'<dl class="cards">{summary}</dl>'
        "<h2>Model versions</h2>"
        + charts.shares(sorted(versions.items()), "Devices by model version")
        + "<h2>Update states</h2>"
        + charts.shares(sorted(updates.items()), "Devices by update state")
        + "<h2>Data to the cloud</h2>"
        + charts.shares(
            [("sent to the cloud", cloud_bytes), ("kept at the site", kept)],
            "Record bytes from devices",
        )
        + f"<p>{_bytes(device_bytes)} in from devices, {_bytes(cloud_bytes)} confirmed by "
        f"the cloud (ratio {_e(ratio if ratio is not None else '—')}). "
        f"Gateway spool: {_e(spool.get('records', 0))} records, {_bytes(spool.get('bytes'))}, "
        f"{_e(spool.get('dropped', 0))} dropped. Dead letters: "
        f"{_e(dead_letters.get('entries', 0))} ({_e(dead_letters.get('records', 0))} records)."
        "</p>"
        + "<h2>Drift alarms</h2>"
        + _table(
            "Devices with a drift alarm",
            ["Device", "Model", "Largest PSI", "Alarms seen"],
            [
                [_device_link(d.device), _e(_version(d)), _e(d.max_psi), _e(d.drift_alarms)]
                for d in alarms[:50]
            ],
        )
        + f"<h2>Device spools</h2><p>{_e(depth_total)} records waiting on devices in all.</p>"
        + _table(
            "Deepest device spools",
            ["Device", "Waiting", "Dropped"],
            [[_device_link(d.device), _e(d.spool_depth), _e(d.spool_dropped)] for d in deep],
        )
    )


# -- devices ------------------------------------------------------------------------------------

SORT_LABELS = {
    "device": "Device",
    "model": "Model",
    "version": "Version",
    "update": "Update",
    "state": "State",
    "last_seen": "Last seen",
    "spool": "Spool",
}


def device_filters(query: DeviceQuery, models: list[str]) -> str:
    def field(name: str, label: str, value: str, kind: str = "text", extra: str = "") -> str:
        return (
            f'<label for="f-{name}">{label}</label>'
            f'<input id="f-{name}" name="{name}" type="{kind}" value="{_e(value)}" '
            f'maxlength="128"{extra}>'
        )

    states = "".join(
        f'<option value="{s}"{" selected" if s == query.state else ""}>{s or "any"}</option>'
        for s in ("", "online", "offline", "unknown")
    )
    sizes = "".join(
        f"<option{' selected' if n == query.per_page else ''}>{n}</option>" for n in PAGE_SIZES
    )
    model_list = "".join(f'<option value="{_e(m)}">' for m in models)
    version = "" if query.version is None else str(query.version)
    return (
        '<form class="filters" method="get" action="/ui/devices" role="search">'
        + field("q", "Device id contains", query.search, "search")
        + field("model", "Model", query.model, extra=' list="models"')
        + f'<datalist id="models">{model_list}</datalist>'
        + field("version", "Version", version, "number")
        + field("update", "Update state", query.update)
        + f'<label for="f-state">State</label><select id="f-state" name="state">{states}</select>'
        + f'<label for="f-per_page">Per page</label>'
        f'<select id="f-per_page" name="per_page">{sizes}</select>'
        f'<input type="hidden" name="sort" value="{_e(query.sort)}">'
        f'<input type="hidden" name="order" value="{"desc" if query.descending else "asc"}">'
        '<button type="submit">Filter</button></form>'
    )


def devices(rows: list[Device], total: int, query: DeviceQuery) -> str:
    def header(key: str) -> str:
        descending = query.sort == key and not query.descending
        order = "desc" if descending else "asc"
        href = "/ui/devices?" + urlencode(query.params(sort=key, order=order, page=1))
        mark = ""
        if query.sort == key:
            mark = " ▼" if query.descending else " ▲"
        sort = ' aria-sort="descending"' if query.descending else ' aria-sort="ascending"'
        return (
            f'<th scope="col"{sort if query.sort == key else ""}>'
            f'<a href="{_e(href)}">{SORT_LABELS[key]}{mark}</a></th>'
        )

    head = "".join(header(key) for key in SORT_KEYS) + '<th scope="col">Drift</th>'
    body = "".join(
        "<tr>"
        f"<td>{_device_link(d.device)}</td><td>{_e(d.model or '—')}</td>"
        f"<td>{_e(d.model_version if d.model_version is not None else '—')}</td>"
        f"<td>{_e(d.update_state or '—')}</td>"
        f'<td><span class="state {_e(d.state)}">{_e(d.state)}</span></td>'
        f"<td>{_when(d.last_seen)}</td>"
        f"<td>{_e(d.spool_depth if d.spool_depth is not None else '—')}</td>"
        f"<td>{'alarm' if d.drift_alarm else ''}</td></tr>"
        for d in rows
    )
    pages = max(1, -(-total // query.per_page))
    links = []
    if query.page > 1:
        prev = urlencode(query.params(page=query.page - 1))
        links.append(f'<a rel="prev" href="/ui/devices?{_e(prev)}">Previous</a>')
    if query.page < pages:
        nxt = urlencode(query.params(page=query.page + 1))
        links.append(f'<a rel="next" href="/ui/devices?{_e(nxt)}">Next</a>')
    first = (query.page - 1) * query.per_page + 1 if rows else 0
    return (
        f'<p class="count">{first}–{first + len(rows) - 1 if rows else 0} of {total} devices '
        f"(page {query.page} of {pages})</p>"
        '<div class="scroll"><table class="devices"><caption>Devices</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
        f'<nav class="pager" aria-label="Pages">{" ".join(links)}</nav>'
    )


def device(d: Device) -> str:
    fields = [
        ("State", d.state),
        ("Health", d.health),
        ("Agent", d.agent_version or "—"),
        ("Model", _version(d)),
        ("Update state", d.update_state or "—"),
        ("Drift alarm", "yes" if d.drift_alarm else "no"),
        ("Drift alarms seen", d.drift_alarms),
        ("Largest PSI", d.max_psi if d.max_psi is not None else "—"),
        ("Device spool", d.spool_depth if d.spool_depth is not None else "—"),
        ("Device spool dropped", d.spool_dropped if d.spool_dropped is not None else "—"),
        ("Records received", d.records),
        ("Hardware tags", ", ".join(d.hardware_tags) or "—"),
        ("Arena bytes", d.arena_bytes if d.arena_bytes is not None else "—"),
        ("Last event", d.last_event or "—"),
    ]
    dl = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in fields)
    times = (
        f"<div><dt>First seen</dt><dd>{_when(d.first_seen)}</dd></div>"
        f"<div><dt>Last seen</dt><dd>{_when(d.last_seen)}</dd></div>"
        f"<div><dt>Last event at</dt><dd>{_when(d.last_event_at)}</dd></div>"
    )
    rollout = (
        f"<p>Last rollout: {_rollout_link(d.last_rollout)}"
        + (f" — {_e(d.last_reason)}" if d.last_reason else "")
        + "</p>"
        if d.last_rollout
        else "<p>No rollout has named this device yet.</p>"
    )
    mcus = _table(
        "Attached MCUs",
        ["Name", "Version", "State"],
        [[_e(m.get("name")), _e(m.get("version")), _e(m.get("state"))] for m in d.mcus],
    )
    return f'<dl class="fields">{dl}{times}</dl><h2>Rollout</h2>{rollout}<h2>MCUs</h2>{mcus}'


# -- releases and rollouts ----------------------------------------------------------------------


def releases(rows: list[dict] | None) -> str:
    if rows is None:
        return "<p>This gateway serves no repository (no <code>[repository]</code> section).</p>"

    def evaluation(row: dict) -> str:
        ev = row.get("evaluation")
        if ev is None:
            return "—"
        verdict = "passed" if ev["passed"] else "below minimum"
        return f"{ev['accuracy']:.3f} ({verdict})"

    return _table(
        "Served releases",
        ["Name", "Version", "Kind", "Size", "SHA-256", "Evaluation"],
        [
            [
                _e(r["name"]),
                _e(r["version"]) + (f" ({_e(r['image_version'])})" if r["image_version"] else ""),
                _e(r["kind"]),
                _bytes(r["length"]),
                f"<code>{_e(r['sha256'][:16])}…</code>",
                _e(evaluation(r)),
            ]
            for r in rows
        ],
    )


def rollouts(listing: list[dict]) -> str:
    rows = [
        [
            _rollout_link(r["id"]),
            _e(f"{r['model']} v{r['version']}"),
            f'<span class="state {_e(r["state"])}">{_e(r["state"])}</span>',
            _e(r["stage"]),
            charts.progress(r["committed"], r["failed"], r["devices"], r["id"]),
            _e(r["blocked"]),
            _when(r.get("updated_at")),
        ]
        for r in sorted(listing, key=lambda r: -(r.get("created_at") or 0))
    ]
    return _table(
        "Rollouts", ["Rollout", "Release", "State", "Stage", "Progress", "Blocked", "Updated"], rows
    )


def start_form(csrf: str, releases: list[dict] | None) -> str:
    options = "".join(
        f'<option value="{_e(r["name"])}">' for r in {r["name"]: r for r in releases or []}.values()
    )
    return (
        '<form class="start" method="post" action="/ui/rollouts"><fieldset>'
        "<legend>Start a rollout</legend>"
        f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
        '<label for="r-model">Model</label>'
        '<input id="r-model" name="model" required maxlength="128" list="release-names">'
        f'<datalist id="release-names">{options}</datalist>'
        '<label for="r-version">Version</label>'
        '<input id="r-version" name="version" type="number" min="1" required>'
        '<label for="r-stages">Stages (percent, comma separated)</label>'
        '<input id="r-stages" name="stages" value="10,50,100" maxlength="128">'
        '<label for="r-soak">Soak per stage (seconds)</label>'
        '<input id="r-soak" name="soak_s" type="number" min="0" step="any" value="0">'
        '<label for="r-rate">Largest failure rate (0 to 1)</label>'
        '<input id="r-rate" name="max_failure_rate" type="number" min="0" max="1" '
        'step="any" value="0.05">'
        '<label class="check"><input id="r-auto" name="auto_rollback" type="checkbox"> '
        "Roll back failed devices automatically</label>"
        '<button type="submit">Start rollout</button></fieldset></form>'
    )


def rollout(view: dict) -> str:
    plan = view.get("plan", {})
    stages = "".join(
        f"<li><h3>Stage {_e(s.get('stage'))}: {_e(s.get('percent'))} %</h3>"
        + charts.progress(
            s.get("committed", 0),
            s.get("failed", 0),
            s.get("devices", 0),
            f"Stage {s.get('stage')}",
        )
        + f"<p>{_e(s.get('devices', 0))} devices, {_e(s.get('committed', 0))} committed, "
        f"{_e(s.get('failed', 0))} failed, {_e(s.get('blocked', 0))} blocked</p></li>"
        for s in view.get("stages", [])
    )
    progress = _table(
        "Devices in this rollout",
        ["Device", "Stage", "State", "Reason"],
        [
            [_device_link(p["device"]), _e(p["stage"]), _e(p["state"]), _e(p.get("detail") or "")]
            for p in view.get("progress", [])
        ],
    )
    skipped = _table(
        "Devices left out",
        ["Device", "Reason"],
        [[_device_link(s["device"]), _e(s["reason"])] for s in view.get("skipped", [])],
    )
    reason = f" — {_e(view['reason'])}" if view.get("reason") else ""
    return (
        f'<p class="rollout-state">State: <strong class="state {_e(view.get("state"))}" '
        f'id="rollout-state">{_e(view.get("state"))}</strong>{reason}. '
        f"{_e(view.get('model'))} version {_e(view.get('version'))}, stage "
        f"{_e(view.get('stage'))}; soak {_e(plan.get('soak_s'))} s, largest failure rate "
        f"{_e(plan.get('max_failure_rate'))}, automatic rollback "
        f"{'on' if plan.get('auto_rollback') else 'off'}.</p>"
        f'<ol class="stages">{stages}</ol><h2>Devices</h2>{progress}<h2>Left out</h2>{skipped}'
    )


def rollout_actions(rollout_id: str, csrf: str) -> str:
    target = "/ui/rollouts/" + quote(rollout_id, safe="")
    return (
        '<div class="actions">'
        + "".join(
            f'<form method="post" action="{_e(target)}/{action}">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            f'<button type="submit" name="action" value="{action}">{label}</button></form>'
            for action, label in (("pause", "Pause"), ("resume", "Resume"), ("abort", "Abort"))
        )
        + "</div>"
    )


# -- data ---------------------------------------------------------------------------------------


def data(campaigns: list[dict], traffic: dict) -> str:
    rows = [
        [
            _e(c.get("name")),
            _e(c.get("model")),
            _e(c.get("state")),
            charts.progress(c.get("received", 0), 0, c.get("total", 0), str(c.get("name")))
            + f" {_e(c.get('received', 0))} / {_e(c.get('total', 0))}",
            _e(c.get("devices", 0)),
            f"<code>{_e(c.get('trigger'))}</code>",
        ]
        for c in campaigns
    ]
    dropped = [
        (f"{stream} · {rule}", count)
        for stream, rules in sorted((traffic.get("curated_out") or {}).items())
        for rule, count in sorted(rules.items())
    ]
    device_bytes, cloud_bytes = traffic.get("device_bytes", 0), traffic.get("cloud_bytes", 0)
    saved = max(device_bytes - cloud_bytes, 0)
    return (
        "<h2>Capture campaigns</h2>"
        + _table(
            "Capture campaigns",
            ["Name", "Model", "State", "Received / total", "Devices", "Trigger"],
            rows,
        )
        + "<h2>Curation</h2>"
        + (
            charts.shares(dropped, "Records dropped by rule")
            if dropped
            else "<p>Curation has dropped no records.</p>"
        )
        + f"<p>{_bytes(saved)} saved: {_bytes(device_bytes)} in from devices, "
        f"{_bytes(cloud_bytes)} confirmed by the cloud.</p>"
    )
