"""Validation of the pages' query strings and form fields: every value a
browser sends is checked here before it reaches the store or an action, and
a bad one is refused with a message naming the field (the handler answers
400 and changes nothing). SQL never sees these strings except as bound
parameters (ictl.service.db)."""
import datetime
import re

from ictl import ToolError, pki


class FormError(ValueError):
    """A query or form value that cannot be used; str(e) is shown to the
    operator as it is (escaped), so it names the field, never echoes a
    secret."""


# Chart ranges offered on the device page: name -> seconds.
RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
DEFAULT_RANGE = "24h"
MAX_SPAN_S = 366 * 86400
STATUSES = ("", "online", "offline", "alarm")
MAX_QUERY = 64
PAGE_SIZES = (25, 50, 100, 200)


def text(value, field, max_len=MAX_QUERY, required=False):
    value = (value or "").strip()
    if required and not value:
        raise FormError("%s is required" % field)
    if len(value) > max_len:
        raise FormError("%s is longer than %d characters" % (field, max_len))
    if any(ord(c) < 32 for c in value):
        raise FormError("%s contains control characters" % field)
    return value


def choice(value, field, allowed, default=None):
    value = (value or "").strip()
    if not value and default is not None:
        return default
    if value not in allowed:
        raise FormError("%s must be one of: %s" % (field, ", ".join(a or "(any)" for a in allowed)))
    return value


def _numeric(value, field, lo, hi, default, pattern, convert, what):
    value = (value or "").strip()
    if not value and default is not None:
        return default
    if not re.fullmatch(pattern, value):
        raise FormError("%s must be %s" % (field, what))
    n = convert(value)
    if not lo <= n <= hi:
        raise FormError("%s must be between %g and %g" % (field, lo, hi))
    return n


def integer(value, field, lo, hi, default=None):
    return _numeric(value, field, lo, hi, default, r"-?[0-9]{1,12}", int, "a whole number")


def number(value, field, lo, hi, default=None):
    return _numeric(value, field, lo, hi, default, r"-?[0-9]{1,9}(\.[0-9]{1,6})?", float, "a number")


def device_id(value, field="device"):
    value = (value or "").strip()
    try:
        return pki.validate_device_id(value)
    except ToolError as e:
        raise FormError("%s: %s" % (field, e)) from None


def device_list(value, field="devices", max_n=10000):
    """Device ids separated by commas, spaces or lines; each checked."""
    ids = [v for v in re.split(r"[\s,]+", value or "") if v]
    if len(ids) > max_n:
        raise FormError("%s: at most %d devices" % (field, max_n))
    out = []
    for v in ids:
        v = device_id(v, field)
        if v not in out:
            out.append(v)
    return out


def _when(value, field):
    """An ISO date or date-time (from <input type=datetime-local>), UTC."""
    try:
        t = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise FormError("%s must be a date and time (YYYY-MM-DDTHH:MM)" % field) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return t.timestamp()


def chart_range(args, now):
    """(since, until, range name) from ?range= or ?from=&to= (UTC)."""
    frm, to = (args.get("from") or "").strip(), (args.get("to") or "").strip()
    if frm or to:
        if not (frm and to):
            raise FormError("give both from and to, or a range")
        since, until = _when(frm[:32], "from"), _when(to[:32], "to")
        if until <= since:
            raise FormError("to must be after from")
        if until - since > MAX_SPAN_S:
            raise FormError("at most 366 days at once")
        return since, until, ""
    name = choice(args.get("range"), "range", tuple(RANGES), DEFAULT_RANGE)
    return now - RANGES[name], now, name


def page(args):
    """(limit, offset) from ?n=&offset=."""
    limit = integer(args.get("n"), "n", 1, max(PAGE_SIZES), PAGE_SIZES[1])
    offset = integer(args.get("offset"), "offset", 0, 10 ** 9, 0)
    return limit, offset
