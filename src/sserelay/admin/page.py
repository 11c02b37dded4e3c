"""The operator's page as HTML, rendered here and nowhere else: the whole page for
``GET /admin``, and its ``<main>`` alone for each update on ``/admin/stream`` (the page's
script swaps it in). One renderer, so the first load and the updates cannot differ, and
every value a client controls (channel names, subjects, addresses) is escaped here.

No build step and no external asset: the style and the script are inline, allowed by
the page's Content-Security-Policy through a nonce made per response.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Iterable, Sequence
from typing import Any

#: The reasons as the page explains them (docs/admin.md says the same).
REASON_HELP = {
    "expired": "its token expired, or it reached max_stream_lifetime",
    "revoked": "its token was revoked",
    "slow": "the client did not take what it was sent (max_client_buffer)",
    "limit": "refused at (re)connection by a limit: streams or channels per process, "
    "client or subject",
    "client_gone": "the client closed the connection",
    "shutdown": "the relay shut down and told the client to come back",
}


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if value else "0"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else _e(value)


def _clock(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%H:%M:%S")


def _stamp(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="seconds")


def _table(
    caption: str,
    heads: Sequence[str],
    rows: Iterable[Sequence[str]],
    empty: str,
    cls: str = "",
    tr: str = "<tr>",
) -> str:
    """A scrollable table (cells already escaped, each row opened by ``tr``); ``empty``
    when there are no rows."""
    body = "".join(tr + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f"<h2>{caption}</h2><p class='empty'>{empty}</p>"
    head = "".join(f"<th>{h}</th>" for h in heads)
    return (
        f"<h2>{caption}</h2><div class='scroll'><table class='{cls}'><thead><tr>{head}</tr>"
        f"</thead><tbody>{body}</tbody></table></div>"
    )


def _cards(view: dict[str, Any]) -> str:
    totals, rates = view.get("totals", {}), view.get("rates", {})
    cards = [
        ("relays", len(view.get("relays", ()))),
        ("streams", totals.get("streams", 0)),
        ("channels", totals.get("channels", 0)),
        ("deliveries/s", rates.get("deliveries", 0.0)),
        ("events/s", rates.get("events", 0.0)),
        ("slow dropped/s", rates.get("slow", 0.0)),
    ]
    items = "".join(
        f"<div class='card'><b>{_number(v)}</b><span>{_e(k)}</span></div>" for k, v in cards
    )
    return f"<section class='cards'>{items}</section>"


def _relay_row(snap: dict[str, Any], own: str, now: float) -> list[str]:
    listener = snap.get("listener") or {}
    capture = snap.get("capture")
    state = snap.get("problem") or "ok"
    bus = "connected" if listener.get("connected") else "disconnected"
    lag = listener.get("lag")
    bus += f", probe {lag * 1000:.0f} ms" if isinstance(lag, int | float) else ""
    bus += f", {listener.get('connects', 0)} connects, {listener.get('failures', 0)} failures"
    if listener.get("last_error"):
        bus += f" (last: {listener['last_error']})"
    if capture is None:
        cap = "off"
    else:
        cap = f"{capture.get('role', '?')}, lag {_number(capture.get('lag_seconds'))} s"
        cap += f", {_number(capture.get('lag_bytes'))} bytes"
        cap += f" ({capture['error']})" if capture.get("error") else ""
    rates = snap.get("rates", {})
    name = _e(snap.get("relay"))
    name += " <small>(this one)</small>" if snap.get("relay") == own else ""
    up = max(now - float(snap.get("started", now)), 0)
    return [
        name,
        f"<span class='{'ok' if state == 'ok' else 'bad'}'>{_e(state)}</span>",
        _e(snap.get("bus")),
        _number(snap.get("streams")),
        _number(snap.get("channels")),
        _number(rates.get("deliveries", 0.0)),
        _number(rates.get("events", 0.0)),
        _number(snap.get("totals", {}).get("slow", 0)),
        _e(bus),
        _e(cap),
        _e(f"{up / 3600:.1f} h" if up >= 3600 else f"{up:.0f} s"),
    ]


def _limits(view: dict[str, Any]) -> str:
    own = next((r for r in view.get("relays", ()) if r.get("relay") == view.get("relay")), None)
    limits = (own or {}).get("limits", {})
    items = "".join(
        f"<div><span>{_e(name)}</span><b>{_number(value) if value else 'off'}</b></div>"
        for name, value in limits.items()
    )
    return f"<h2>Limits in force (this relay)</h2><div class='limits'>{items}</div>"


def _endings(view: dict[str, Any]) -> str:
    rows = []
    for relay, at, reason, channels, subject, client in view.get("endings", ()):
        rows.append(
            [
                f"<time datetime='{_e(_stamp(at))}' title='{_e(_stamp(at))}'>{_clock(at)}</time>",
                f"<span class='r-{_e(reason)}' title='{_e(REASON_HELP.get(reason, ''))}'>"
                f"{_e(reason)}</span>",
                _e(", ".join(channels)),
                _e(subject or "-"),
                _e(client or "-"),
                _e(relay),
            ]
        )
    counts = " · ".join(
        f"<span class='r-{_e(r)}' title='{_e(REASON_HELP.get(r, ''))}'>{_e(r)}</span> {_number(n)}"
        for r, n in view.get("ended", {}).items()
    )
    heads = ["time (UTC)", "reason", "channels", "subject", "client", "relay"]
    caption = f"Stream endings (newest first, {len(rows)})"
    since = f"<p class='counts'>Since start, all relays: {counts}</p>" if counts else ""
    # data-ending: the rows the page's filter looks through.
    table = _table(caption, heads, rows, "No stream has ended yet.", "endings", "<tr data-ending>")
    return table + since


def main(view: dict[str, Any]) -> str:
    """The ``<main>`` of the page: every panel, from the view of all relays."""
    now = float(view.get("at", 0.0))
    own = str(view.get("relay", ""))
    relays = [_relay_row(s, own, now) for s in view.get("relays", ())]
    heads = ["relay", "state", "bus", "streams", "channels", "deliveries/s", "events/s",
             "slow dropped", "listener", "capture", "up"]  # fmt: skip
    subs = [[_e(c), _number(n)] for c, n in view.get("top_subscribers", ())]
    rates = [[_e(c), _number(r)] for c, r in view.get("top_rates", ())]
    return (
        _cards(view)
        + _table("Relays", heads, relays, "No relay heard from yet.", "relays")
        + "<div class='pair'><div>"
        + _table("Top channels by subscribers", ["channel", "streams"], subs, "No streams.")
        + "</div><div>"
        + _table("Top channels by events/s", ["channel", "events/s"], rates, "No events.")
        + "</div></div>"
        + _endings(view)
        + _limits(view)
    )


STYLE = """
:root{color-scheme:light dark;--fg:#1d2430;--bg:#f6f7f9;--card:#fff;--line:#d9dde3;
--muted:#5f6b7a;--ok:#137333;--bad:#b3261e;--accent:#1a5fb4}
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ef;--bg:#15181d;--card:#1e232a;
--line:#343b45;--muted:#9aa5b4;--ok:#6ccf8e;--bad:#ff8a80;--accent:#8ab4f8}}
*{box-sizing:border-box}body{margin:0;font:15px/1.4 system-ui,sans-serif;color:var(--fg);
background:var(--bg)}header{position:sticky;top:0;z-index:1;display:flex;flex-wrap:wrap;
gap:.5rem 1rem;align-items:center;padding:.6rem 1rem;background:var(--card);
border-bottom:1px solid var(--line)}h1{font-size:1.1rem;margin:0}
h2{font-size:1rem;margin:1.4rem 0 .5rem}main{padding:0 1rem 2rem;max-width:80rem;margin:auto}
#state{font-size:.85rem;padding:.1rem .5rem;border-radius:1rem;border:1px solid var(--line)}
#state.live{color:var(--ok)}#state.down{color:var(--bad)}
#filter{flex:1 1 14rem;min-width:0;padding:.35rem .5rem;font:inherit;color:inherit;
background:var(--bg);border:1px solid var(--line);border-radius:.3rem}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(8.5rem,1fr));gap:.6rem;
margin-top:1rem}.card{background:var(--card);border:1px solid var(--line);
border-radius:.4rem;padding:.6rem .8rem}.card b{display:block;font-size:1.4rem}
.card span{color:var(--muted);font-size:.85rem}
.pair{display:grid;grid-template-columns:repeat(auto-fit,minmax(18rem,1fr));gap:0 1.2rem}
.scroll{overflow-x:auto;background:var(--card);border:1px solid var(--line);
border-radius:.4rem}table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid var(--line);
vertical-align:top}th{color:var(--muted);font-weight:600;white-space:nowrap}
td{overflow-wrap:anywhere}.relays td{white-space:nowrap}
.relays td:nth-child(9),.relays td:nth-child(10){white-space:normal;min-width:9rem}
tr:last-child td{border-bottom:0}.ok{color:var(--ok)}
.bad{color:var(--bad)}.empty,.counts{color:var(--muted)}small{color:var(--muted)}
.counts{font-size:.85rem;margin:.4rem 0 0}
[class^=r-]{font-weight:600}.r-slow,.r-limit,.r-revoked{color:var(--bad)}
.r-expired,.r-shutdown{color:var(--accent)}.r-client_gone{color:var(--muted)}
.limits{display:grid;grid-template-columns:repeat(auto-fill,minmax(17rem,1fr));gap:.4rem}
.limits div{display:flex;justify-content:space-between;gap:.5rem;background:var(--card);
border:1px solid var(--line);border-radius:.3rem;padding:.3rem .6rem;font-size:.9rem}
.limits span{color:var(--muted);overflow-wrap:break-word;min-width:0}
@media (max-width:40rem){main{padding:0 .5rem 2rem}th,td{padding:.3rem .4rem}
.relays td:nth-child(n+9),.relays th:nth-child(n+9){display:none}}
"""

SCRIPT = """
const view = document.getElementById("view");
const state = document.getElementById("state");
const filter = document.getElementById("filter");
function applyFilter() {
  const q = filter.value.trim().toLowerCase();
  for (const row of view.querySelectorAll("tr[data-ending]")) {
    row.hidden = q !== "" && !row.textContent.toLowerCase().includes(q);
  }
}
function show(text, cls) { state.textContent = text; state.className = cls; }
filter.addEventListener("input", applyFilter);
const source = new EventSource(location.pathname.replace(/\\/?$/, "/stream"));
source.onopen = () => show("live", "live");
source.addEventListener("view", (e) => {
  view.innerHTML = e.data;
  applyFilter();
  show("live", "live");
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
});
source.onerror = () => {
  show("reconnecting", "down");
  // Refused (the page's cookie expired): load the page again, which signs in again.
  if (source.readyState === EventSource.CLOSED) setTimeout(() => location.reload(), 5000);
};
"""


def page(view: dict[str, Any], nonce: str) -> str:
    """The whole page, its style and script allowed by ``nonce``."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        "<title>sserelay · operator</title>"
        f"<style nonce='{nonce}'>{STYLE}</style></head><body data-updates='0'>"
        "<header><h1>sserelay · operator</h1><span id='state'>loading</span>"
        "<input id='filter' type='search' placeholder='Filter endings: subject, channel, "
        "client, reason' aria-label='Filter stream endings'></header>"
        f"<main id='view'>{main(view)}</main>"
        f"<script nonce='{nonce}'>{SCRIPT}</script></body></html>"
    )
