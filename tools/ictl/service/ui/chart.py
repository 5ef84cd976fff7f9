"""Readings over time as a server-rendered SVG: no script, no style
attributes (the console's Content-Security-Policy blocks both inline), only
SVG presentation attributes, which CSP does not govern.

Everything a device sent is hostile: field names go through xml escaping
(the only text in the picture that comes from a device), values are used
only as numbers (a non-finite or non-numeric value is skipped, never
printed), and the picture is served as image/svg+xml and shown through
<img>, where a browser runs no script even if escaping were ever missed.

    svg = chart.render({"temp_c": [(t, v), ...]}, since, until)

Many points per field are reduced to at most `width` buckets (the mean
of each), so a year of readings costs the same picture as an hour."""
import math
import time
from xml.sax.saxutils import escape as _xml_escape

WIDTH = 800
HEIGHT = 300
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 64, 16, 16, 40
_LEGEND_ROW = 16
# Colour-blind-safe palette (Okabe and Ito); fields beyond it cycle.
COLOURS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442")
MAX_FIELD_NAME = 40  # longer names are cut in the legend (a device chooses them)


def escape(text):
    """Text for an SVG text node or a double-quoted attribute."""
    return _xml_escape(str(text), {'"': "&quot;", "'": "&#39;"})


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def reduce(points, since, until, buckets):
    """[(t, v)] -> at most `buckets` (t, mean v) pairs, in time order,
    points outside [since, until] and non-numeric values dropped."""
    if until <= since:
        return []
    sums = {}
    span = until - since
    for t, v in points:
        v = _number(v)
        t = _number(t)
        if v is None or t is None or not since <= t <= until:
            continue
        b = min(buckets - 1, int((t - since) / span * buckets))
        s = sums.get(b)
        if s is None:
            sums[b] = [t, v, 1]
        else:
            s[0] += t
            s[1] += v
            s[2] += 1
    return [(s[0] / s[2], s[1] / s[2]) for _, s in sorted(sums.items())]


def _ticks(lo, hi, n=5):
    """About n round values spanning [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _fmt_value(v):
    if v == 0:
        return "0"
    if abs(v) >= 1e6 or abs(v) < 1e-3:
        return "%.2e" % v
    return ("%.3f" % v).rstrip("0").rstrip(".")


def _fmt_time(t, span):
    fmt = "%H:%M:%S" if span <= 600 else "%H:%M" if span <= 2 * 86400 else "%m-%d %H:%M"
    return time.strftime(fmt, time.gmtime(t))


def render(series, since, until, width=WIDTH, height=HEIGHT, title=""):
    """SVG text of the fields in `series` ({name: [(unix time, value)]})
    between since and until (unix seconds, UTC on the axis)."""
    if until <= since:
        raise ValueError("chart range is empty: until must be after since")
    names = sorted(series, key=str)
    legend_h = _LEGEND_ROW * len(names)
    h_total = height + legend_h
    plot_w = width - _PAD_L - _PAD_R
    plot_h = height - _PAD_T - _PAD_B
    lines = {str(n): reduce(series[n], since, until, max(1, plot_w)) for n in names}
    values = [v for pts in lines.values() for _, v in pts]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad

    def x(t):
        return _PAD_L + (t - since) / (until - since) * plot_w

    def y(v):
        return _PAD_T + (1 - (v - lo) / (hi - lo)) * plot_h

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'role="img" font-family="sans-serif" font-size="11">' % (width, h_total, width, h_total)]
    out.append('<title>%s</title>' % escape(title or "readings"))
    out.append('<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>' % (width, h_total))
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#888888"/>'
               % (_PAD_L, _PAD_T, plot_w, plot_h))
    for v in _ticks(lo, hi):
        yy = y(v)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e0e0e0"/>' % (_PAD_L, yy, _PAD_L + plot_w, yy))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (_PAD_L - 4, yy + 4, escape(_fmt_value(v))))
    span = until - since
    for t in _ticks(since, until, 6):
        xx = x(t)
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e0e0e0"/>' % (xx, _PAD_T, xx, _PAD_T + plot_h))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                   % (xx, _PAD_T + plot_h + 14, escape(_fmt_time(t, span))))
    out.append('<text x="%d" y="%d" text-anchor="end">UTC</text>' % (_PAD_L + plot_w, _PAD_T + plot_h + 30))
    if not values:
        out.append('<text x="%.1f" y="%.1f" text-anchor="middle" fill="#666666">no readings in this range</text>'
                   % (_PAD_L + plot_w / 2, _PAD_T + plot_h / 2))
    for i, name in enumerate(str(n) for n in names):
        colour = COLOURS[i % len(COLOURS)]
        pts = lines[name]
        if len(pts) == 1:
            out.append('<circle cx="%.1f" cy="%.1f" r="2" fill="%s"/>' % (x(pts[0][0]), y(pts[0][1]), colour))
        elif pts:
            out.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>'
                       % (colour, " ".join("%.1f,%.1f" % (x(t), y(v)) for t, v in pts)))
        ly = height + i * _LEGEND_ROW + 4
        label = name if len(name) <= MAX_FIELD_NAME else name[:MAX_FIELD_NAME - 1] + "\u2026"
        out.append('<rect x="%d" y="%d" width="12" height="4" fill="%s"/>' % (_PAD_L, ly + 4, colour))
        out.append('<text x="%d" y="%d">%s (%d points)</text>' % (_PAD_L + 18, ly + 10, escape(label), len(pts)))
    out.append("</svg>")
    return "\n".join(out)
