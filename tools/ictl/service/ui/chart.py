"""Readings over time as a server-rendered SVG: no script, no style
attributes (the console's Content-Security-Policy blocks both inline), only
SVG presentation attributes, which CSP does not govern.

Everything a device sent is hostile: field names go through xml escaping
(the only text in the picture that comes from a device), values are used
only as numbers (a non-finite or non-numeric value is skipped, never
printed), and the picture is served as image/svg+xml and shown through
<img>, where a browser runs no script even if escaping were ever missed.

    svg = chart.render({"temp_c": [(t, v), ...]}, since, until)   # a panel per field

Many points per field are reduced to at most `width` buckets (the mean
of each), so a year of readings costs the same picture as an hour."""
import math
import time
from xml.sax.saxutils import escape as _xml_escape

WIDTH = 800
PANEL_HEIGHT = 120  # one field's panel, its label included
MAX_PANELS = 16  # a device chooses its field names: a bound on the picture's size
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 64, 16, 8, 40
_LABEL_H, _PANEL_GAP = 18, 8
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


def render(series, since, until, width=WIDTH, panel_height=PANEL_HEIGHT, title=""):
    """SVG text of the fields in `series` ({name: [(unix time, value)]})
    between since and until (unix seconds, UTC on the axis): one panel per
    field, each with its own value axis (an uptime in milliseconds beside a
    temperature would flatten the temperature), sharing the time axis."""
    if until <= since:
        raise ValueError("chart range is empty: until must be after since")
    plot_w = width - _PAD_L - _PAD_R
    # Fields with nothing to draw in the range get no panel.
    lines = {}
    for n in sorted(series, key=str):
        pts = reduce(series[n], since, until, max(1, plot_w))
        if pts and len(lines) < MAX_PANELS:
            lines[str(n)] = pts
    names = list(lines)
    n_panels = max(1, len(names))
    h_total = _PAD_T + n_panels * panel_height + _PAD_B
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'role="img" font-family="sans-serif" font-size="11">' % (width, h_total, width, h_total)]
    out.append('<title>%s</title>' % escape(title or "readings"))
    out.append('<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>' % (width, h_total))
    span = until - since

    def x(t):
        return _PAD_L + (t - since) / span * plot_w

    bottom = _PAD_T + n_panels * panel_height
    for t in _ticks(since, until, 6):
        xx = x(t)
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e0e0e0"/>' % (xx, _PAD_T, xx, bottom))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (xx, bottom + 14, escape(_fmt_time(t, span))))
    out.append('<text x="%d" y="%d" text-anchor="end">UTC</text>' % (_PAD_L + plot_w, bottom + 30))
    if not names:
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#888888"/>'
                   % (_PAD_L, _PAD_T, plot_w, panel_height - _PANEL_GAP))
        out.append('<text x="%.1f" y="%.1f" text-anchor="middle" fill="#666666">no readings in this range</text>'
                   % (_PAD_L + plot_w / 2, _PAD_T + panel_height / 2))
    for i, name in enumerate(names):
        colour = COLOURS[i % len(COLOURS)]
        pts = lines[name]
        top = _PAD_T + i * panel_height + _LABEL_H
        ph = panel_height - _LABEL_H - _PANEL_GAP
        values = [v for _, v in pts]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        if hi == lo:
            lo, hi = lo - 1, hi + 1
        pad = (hi - lo) * 0.05
        lo, hi = lo - pad, hi + pad

        def y(v):
            return top + (1 - (v - lo) / (hi - lo)) * ph

        label = name if len(name) <= MAX_FIELD_NAME else name[:MAX_FIELD_NAME - 1] + "\u2026"
        out.append('<text x="%d" y="%d" font-weight="bold" fill="%s">%s (%d point%s)</text>'
                   % (_PAD_L, top - 4, colour, escape(label), len(pts), "" if len(pts) == 1 else "s"))
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#888888"/>' % (_PAD_L, top, plot_w, ph))
        for v in _ticks(lo, hi, 3):
            yy = y(v)
            out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eeeeee"/>' % (_PAD_L, yy, _PAD_L + plot_w, yy))
            out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (_PAD_L - 4, yy + 4, escape(_fmt_value(v))))
        if len(pts) == 1:
            out.append('<circle cx="%.1f" cy="%.1f" r="2" fill="%s"/>' % (x(pts[0][0]), y(pts[0][1]), colour))
        else:
            out.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>'
                       % (colour, " ".join("%.1f,%.1f" % (x(t), y(v)) for t, v in pts)))
    out.append("</svg>")
    return "\n".join(out)
