"""Reports of a RUN (replay) or SWEEP document: a terminal summary and a self-contained HTML
page (inline CSS and SVG; it loads nothing from anywhere)."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from loadtest.charts import PALETTE, Chart, Line, bars
from loadtest.run import SWEEP_KIND

OUTCOMES = ("ok", "partial", "expired", "rejected", "lost", "error")
LATENCY_KEYS = ("p50", "p90", "p99", "p99.9", "max")


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _num(v: float | None, unit: str = "") -> str:
    if v is None:
        return "–"
    text = f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:,.1f}"
    return text + unit


# ---- terminal --------------------------------------------------------------------------------


def text_summary(doc: dict[str, Any]) -> str:
    if doc.get("kind") == SWEEP_KIND:
        from loadtest.sweep import steps_table

        return steps_table(doc)
    s, lat, sch = doc["summary"], doc["latency_ms"], doc["schedule"]
    out = doc["summary"]["outcomes"]
    warm = (f", warm-up {sch['warmup_s']:g} s: {s['warmup_requests']} left out"
            if s["warmup_requests"] else "")
    lines = [
        f"adstream load test: {s['sent']} requests sent ({sch['arrival']}, "
        f"{sch['span_s']:.1f} s{warm})" + ("  [interrupted]" if s["interrupted"] else ""),
        "  outcomes  " + "  ".join(f"{k} {out[k]}" for k in OUTCOMES),
        (f"  rate      offered {_num(s['offered_rate'])}/s  achieved {_num(s['achieved_rate'])}/s"
        f"  candidates scored {_num(s['candidates_scored_per_s'])}/s"
        f"  backlog growth {s['backlog_growth_per_s']:+.1f}/s"),
        "  latency   " + "  ".join(f"{k} {_ms(lat[k])}" for k in LATENCY_KEYS)
        + " ms (from intended send times)",
        "  stages    p50 ms: " + " | ".join(
            f"{st['name']} {_ms(st.get('p50'))}" for st in doc["stages"]),
    ]
    lag = doc["sender"]["lag_ms"]
    if lag.get("count") and lag["p99"] > 5:
        lines.append(f"  note      requests left late (send lag p99 {lag['p99']:.1f} ms): this "
                     "process was busy (with --with-workers it runs the roles too); the "
                     "latencies include it")
    slo = doc.get("slo")
    if slo is not None:
        verdict = "met" if slo["met"] else "MISSED: " + "; ".join(slo["reasons"])
        lines.append(f"  SLO       p99 ≤ {slo['p99_ms']:g} ms and nothing lost: {verdict}")
    return "\n".join(lines)


# ---- HTML ------------------------------------------------------------------------------------


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:920px;color:#111827;line-height:1.4;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid
#e5e7eb;padding-bottom:4px}code{font-size:12px;background:#f3f4f6;padding:1px 4px;
border-radius:3px;word-break:break-all}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{padding:3px 10px;
border-bottom:1px solid #f0f0f0;text-align:right}th{background:#f9fafb;font-weight:600}
td:first-child,th:first-child{text-align:left}.kv td{text-align:left}
.steps td{white-space:nowrap}.steps td:last-child{text-align:left;white-space:normal}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}.card{border:1px solid #e5e7eb;
border-radius:6px;padding:8px 12px;min-width:110px}.card b{display:block;font-size:20px}
.card span{font-size:12px;color:#6b7280}.ok{background:#f0fdf4;border-color:#bbf7d0}
.bad{background:#fef2f2;border-color:#fecaca}.verdict{padding:8px 12px;border-radius:6px;
margin:10px 0;font-weight:600}.muted{color:#6b7280;font-size:12px}svg{max-width:100%;
height:auto}
"""


def render_html(doc: dict[str, Any]) -> str:
    if doc.get("kind") == SWEEP_KIND:
        title = "adstream load test — rate sweep"
        body = _sweep_body(doc)
    else:
        title = "adstream load test — replay"
        body = _run_body(doc)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{escape(title)}</h1>\n"
            f"<div class=\"muted\">{escape(doc.get('created', ''))} · "
            f"<code>{escape(doc.get('command', ''))}</code></div>\n{body}\n</body></html>\n")


def _kv(rows: dict[str, Any]) -> str:
    return "<table class=\"kv\">" + "".join(
        f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>"
        for k, v in rows.items()) + "</table>"


def _card(value: str, label: str, cls: str = "") -> str:
    return f'<div class="card {cls}"><b>{escape(value)}</b><span>{escape(label)}</span></div>'


def _run_body(doc: dict[str, Any]) -> str:
    parts = [_verdict(doc.get("slo")), _run_details(doc), _environment(doc)]
    return "\n".join(p for p in parts if p)


def _verdict(slo: dict[str, Any] | None) -> str:
    if slo is None:
        return ""
    if slo["met"]:
        return (f'<div class="verdict ok">SLO met: p99 ≤ {slo["p99_ms"]:g} ms and no request '
                "lost</div>")
    return (f'<div class="verdict bad">SLO missed: {escape("; ".join(slo["reasons"]))}'
            "</div>")


def _run_details(doc: dict[str, Any]) -> str:
    s, lat, out = doc["summary"], doc["latency_ms"], doc["summary"]["outcomes"]
    sch, tr = doc["schedule"], doc["traffic"]
    cards = [
        _card(_num(s["sent"]), "requests sent"),
        _card(_num(s["answered"]), "answered (measured)"),
        *(_card(_num(out[k]), k, "bad" if k in ("lost", "error") and out[k] else
                "ok" if k == "ok" else "") for k in OUTCOMES),
        _card(_num(s["offered_rate"], "/s"), "offered rate"),
        _card(_num(s["achieved_rate"], "/s"), "achieved rate"),
        _card(_num(s["candidates_scored_per_s"], "/s"), "candidates scored"),
    ]
    pct = ("<table><tr>" + "".join(f"<th>{k}</th>" for k in ("", *LATENCY_KEYS, "mean"))
           + "</tr><tr><td>end to end (ms)</td>"
           + "".join(f"<td>{_ms(lat.get(k))}</td>" for k in (*LATENCY_KEYS, "mean"))
           + f"</tr></table><div class=\"muted\">{lat.get('count', 0)} answers in the measured "
           "window; latency counts from each request's intended send time (open loop, no "
           "coordinated omission), recorded in an HdrHistogram (1 µs – 1 h, 3 significant "
           "digits). Lost requests are not in the percentiles; they are counted above.</div>")
    warm = (f"; the first {sch['warmup_s']:g} s ({s['warmup_requests']} requests) are a "
            "warm-up, left out of every number but the plots" if s["warmup_requests"] else "")
    what = (f"<p>{s['sent']} requests ({escape(sch['arrival'])}) over {sch['span_s']:.1f} s "
            f"from <code>{escape(tr['file'])}</code> ({tr['entries']} distinct requests, "
            f"{tr['candidates']['mean']:g} candidates on average){warm}. Timeout "
            f"{sch['timeout_s']:g} s; deadline: {escape(str(sch['deadline_ms']))}"
            f"{' ms' if isinstance(sch['deadline_ms'], int) else ''}.</p>")
    return "\n".join([
        "<h2>Summary</h2>", what, f'<div class="cards">{"".join(cards)}</div>',
        "<h2>Latency percentiles</h2>", pct,
        main_chart_svg(doc), _throughput_chart(doc), _percentile_chart(doc),
        "<h2>Where the time goes</h2>", _stages(doc),
    ])


def main_chart_svg(doc: dict[str, Any]) -> str:
    """Latency over time: every request (sampled) by its intended send time, with p50 and
    p99 per interval, lost requests marked on top."""
    if doc.get("kind") == SWEEP_KIND:
        return _sweep_chart(doc)
    ser, smp = doc["series"], doc["samples"]
    w = ser["bucket_s"]
    mid = [t + w / 2 for t in ser["t"]]
    chart = Chart("Latency over time (by intended send time)", "seconds since start",
                  "latency (ms)", log_y=_wide(smp["ms"]))
    chart.lines.append(Line("request", smp["t"], smp["ms"], PALETTE["grey"], points=True))
    chart.lines.append(Line(f"p50 per {w:g} s", mid, ser["p50"], PALETTE["blue"]))
    chart.lines.append(Line(f"p99 per {w:g} s", mid, ser["p99"], PALETTE["orange"]))
    if ser.get("warmup_s"):
        chart.shade = (0.0, ser["warmup_s"], "warm-up")
    chart.marks = smp.get("lost_t", [])
    chart.marks_label = "lost"
    slo = doc.get("slo")
    if slo is not None:
        chart.hlines.append((slo["p99_ms"], f"p99 bound {slo['p99_ms']:g} ms", PALETTE["red"]))
    return chart.svg()


def _wide(values: list[float]) -> bool:
    """Log scale when the slowest requests are far above the typical ones."""
    vals = sorted(v for v in values if v is not None and v > 0)
    if len(vals) < 10:
        return False
    return vals[-1] > 20 * vals[len(vals) // 2]


def _throughput_chart(doc: dict[str, Any]) -> str:
    ser = doc["series"]
    w = ser["bucket_s"]
    mid = [t + w / 2 for t in ser["t"]]
    chart = Chart(f"Throughput over time (per {w:g} s)", "seconds since start",
                  "requests / s")
    chart.lines.append(Line("offered", mid, ser["offered"], PALETTE["grey"], dashed=True))
    chart.lines.append(Line("sent", mid, ser["sent"], PALETTE["blue"]))
    chart.lines.append(Line("answered", mid, ser["answered"], PALETTE["green"]))
    if ser.get("warmup_s"):
        chart.shade = (0.0, ser["warmup_s"], "warm-up")
    backlog = Chart("Requests in flight (sent, not yet answered)", "seconds since start",
                    "requests")
    backlog.lines.append(Line("in flight", [*ser["t"][1:], ser["t"][-1] + w],
                              ser["backlog"], PALETTE["purple"]))
    return chart.svg() + "\n" + backlog.svg()


def _percentile_chart(doc: dict[str, Any]) -> str:
    pts = [(p, v) for p, v in doc["percentile_curve"] if 0 < p < 100]
    if not pts:
        return ""
    xs = [math.log10(100.0 / (100.0 - p)) for p, _ in pts]
    ticks = [(math.log10(100.0 / (100.0 - p)), f"{p:g}%")
             for p in (50, 90, 99, 99.9, 99.99, 99.999) if p <= pts[-1][0]]
    chart = Chart("Latency by percentile (HdrHistogram)", "percentile", "latency (ms)",
                  x_ticks=ticks, height=260)
    chart.lines.append(Line("latency", xs, [v for _, v in pts], PALETTE["blue"]))
    slo = doc.get("slo")
    if slo is not None:
        chart.hlines.append((slo["p99_ms"], f"p99 bound {slo['p99_ms']:g} ms", PALETTE["red"]))
    return chart.svg()


def _stages(doc: dict[str, Any]) -> str:
    rows = [st for st in doc["stages"] if st.get("count")]
    if len(rows) <= 1:
        return ("<p class=\"muted\">No stage timestamps came back (the results carry no "
                "<code>ts.*</code> headers).</p>")
    table = ("<table><tr><th>stage</th><th>answers</th><th>mean</th><th>p50</th><th>p90</th>"
             "<th>p99</th><th>max</th></tr>" + "".join(
                 f"<tr><td>{escape(st['name'])}</td><td>{st['count']}</td>"
                 + "".join(f"<td>{_ms(st.get(k))}</td>" for k in ("mean", "p50", "p90", "p99",
                                                                   "max"))
                 + "</tr>" for st in rows) + "</table>")
    chart = bars("Time per stage (ms)", [(st["name"], [st["p50"], st["p99"]]) for st in rows],
                 ["p50", "p99"], "ms")
    note = ("<div class=\"muted\">From the <code>ts.&lt;stage&gt;.in/out</code> headers each "
            "stage stamps (whole epoch milliseconds): a queue is the time between one stage's "
            "output and the next stage's input (Kafka, batching, waiting to be fetched); "
            "<i>client send lag</i> is how late this load generator sent a request; "
            "<i>queue to aggregator</i> includes waiting for a request's other chunks; "
            "<i>back to client</i> is from the aggregator's output to the client reading it. "
            "Scorer times are those of the request's first chunk.</div>")
    return table + chart + note


def _environment(doc: dict[str, Any]) -> str:
    parts = []
    for key, title in (("config", "Configuration"), ("machine", "Machine"),
                       ("software", "Software")):
        if doc.get(key):
            parts.append(f"<h2>{title}</h2>" + _kv(doc[key]))
    lag = doc.get("sender", {}).get("lag_ms", {})
    if lag.get("count"):
        parts.append(f"<p class=\"muted\">Sender punctuality: sent {_ms(lag['p50'])} ms after "
                     f"the intended time at p50, {_ms(lag['p99'])} ms at p99, "
                     f"{_ms(lag['max'])} ms at most.</p>")
    if doc.get("send_errors"):
        parts.append("<h2>Send errors</h2><pre>" + escape("\n".join(doc["send_errors"]))
                     + "</pre>")
    if doc.get("histogram"):
        parts.append("<details><summary class=\"muted\">HdrHistogram (compressed, base64; "
                     "decode with any HdrHistogram library)</summary><code>"
                     f"{escape(doc['histogram'])}</code></details>")
    return "\n".join(parts)


# ---- sweep -----------------------------------------------------------------------------------


def _sweep_chart(doc: dict[str, Any]) -> str:
    steps = sorted(doc["steps"], key=lambda st: st["rate"])
    rates = [st["rate"] for st in steps]
    chart = Chart("Latency against offered rate", "offered rate (requests / s)",
                  "latency (ms)", log_y=False)
    for key, color in (("p50", PALETTE["blue"]), ("p99", PALETTE["orange"])):
        values = [st[f"{key}_ms"] for st in steps]
        chart.lines.append(Line(key, rates, values, color, markers=True))
    chart.hlines.append((doc["slo_p99_ms"], f"p99 bound {doc['slo_p99_ms']:g} ms",
                         PALETTE["red"]))
    return chart.svg()


def _sweep_body(doc: dict[str, Any]) -> str:
    best = doc.get("best")
    if best is not None:
        verdict = (f'<div class="verdict ok">Highest rate meeting p99 ≤ {doc["slo_p99_ms"]:g} '
                   f'ms with no growing backlog: {best["rate"]:,.0f} requests/s '
                   f'(p99 {best["p99_ms"]:.1f} ms)</div>')
    else:
        verdict = (f'<div class="verdict bad">No rate met p99 ≤ {doc["slo_p99_ms"]:g} ms '
                   f"(lowest tried: {min(st['rate'] for st in doc['steps']):g}/s)</div>"
                   if doc["steps"] else '<div class="verdict bad">No step ran</div>')
    head = ("<tr>" + "".join(f"<th>{h}</th>" for h in (
        "step", "phase", "offered /s", "achieved /s", "p50 ms", "p99 ms", "p99.9 ms", "lost",
        "partial+expired", "backlog growth /s", "verdict")) + "</tr>")
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{escape(st['phase'])}</td><td>{_num(st['rate'])}</td>"
        f"<td>{_num(st['achieved'])}</td><td>{_ms(st['p50_ms'])}</td>"
        f"<td>{_ms(st['p99_ms'])}</td><td>{_ms(st['p99.9_ms'])}</td><td>{st['lost']}</td>"
        f"<td>{st['degraded']}</td><td>{st['backlog_growth_per_s']:+.1f}</td>"
        f"<td>{'pass' if st['passed'] else escape('fail: ' + '; '.join(st['reasons']))}</td>"
        "</tr>" for i, st in enumerate(doc["steps"]))
    plan = doc["plan"]
    what = (f"<p>Each step replays <code>{escape(doc['traffic']['file'])}</code> for "
            f"{plan['step_s']:g} s ({escape(plan['arrival'])} arrivals; the first "
            f"{doc['options']['warmup_s']:g} s left out), starting at {plan['start_rate']:g}/s "
            f"and multiplying by {plan['factor']:g} until a step fails, then bisecting to "
            f"{plan['precision'] * 100:g} %. A step passes when p99 ≤ {doc['slo_p99_ms']:g} ms, "
            "nothing is lost, at most 1 % of answers are partial or expired, and the number "
            "of requests in flight does not grow (backlog slope ≤ 2 % of the rate per s).</p>")
    parts = [verdict, what, f'<table class="steps">{head}{rows}</table>', _sweep_chart(doc)]
    if best is not None and doc["steps"][best["step"]].get("run"):
        run = doc["steps"][best["step"]]["run"]
        parts.append(f"<h2>The best step in detail ({best['rate']:,.0f}/s)</h2>")
        parts.append(_run_details(run))
    parts.append(_environment({k: doc.get(k) for k in ("config", "machine", "software")}))
    return "\n".join(parts)


