# Minimal CBOR (RFC 8949) for COSE headers and messages.
#
# Supported: unsigned and negative integers (up to 64-bit arguments), byte and
# text strings, arrays, maps, tags, false/true/null; the encoder also writes
# floats (readings), the decoder refuses them: nothing the device receives
# has one. Rejected by the decoder: floats, other simple values, indefinite
# lengths.
#
# The decoder is for bytes that came off the wire, so it is bounded:
#   * no recursion: nesting is an explicit stack capped at max_depth;
#   * max_items caps the number of data items, so a few bytes claiming a huge
#     array cannot make us allocate much (containers grow by append, never
#     preallocated from a claimed count, and a claimed count larger than the
#     bytes left is rejected at once);
#   * a string length is checked against the bytes left before slicing;
#   * duplicate map keys are rejected (two readers of one header map must not
#     disagree on which value counts), and so are trailing bytes;
#   * map keys are integers or text only (every format here uses those): a
#     byte-string key could equal a text key's content, and comparing the
#     two prints "Warning: Comparison between bytes and str", which the
#     ESP32 port enables (MicroPython v1.28.0 ports/esp32/mpconfigport.h
#     MICROPY_PY_STR_BYTES_CMP_WARN): a line on the UART per hostile map.
# The encoder writes the shortest heads and sorts map keys bytewise (RFC 8949
# section 4.2.1 deterministic encoding).
import struct
from micropython import const

_MAX_DEPTH = const(8)
_MAX_ITEMS = const(256)

_UINT = const(0)
_NINT = const(1)
_BSTR = const(2)
_TSTR = const(3)
_ARRAY = const(4)
_MAP = const(5)
_TAG = const(6)
_SIMPLE = const(7)

_FALSE = const(0xF4)
_TRUE = const(0xF5)
_NULL = const(0xF6)

_NOKEY = object()  # a map frame waiting for its next key


class CBORError(ValueError):
    """Malformed, unsupported or over-limit CBOR."""


class Tag:
    """A tagged data item, e.g. Tag(16, [...]) for a COSE_Encrypt0."""

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value


def head(major, arg):
    """The shortest head for a major type and argument, as bytes."""
    mt = major << 5
    if arg < 24:
        return bytes((mt | arg,))
    if arg < 0x100:
        return bytes((mt | 24, arg))
    if arg < 0x10000:
        return bytes((mt | 25, arg >> 8, arg & 0xFF))
    if arg < 0x100000000:
        return bytes((mt | 26,)) + arg.to_bytes(4, "big")
    if arg < 0x10000000000000000:
        return bytes((mt | 27,)) + arg.to_bytes(8, "big")
    raise CBORError("integer too large")


def head_into(buf, pos, major, arg):
    """head(), written into buf at pos (no allocation); returns the end."""
    mt = major << 5
    if arg < 24:
        buf[pos] = mt | arg
        return pos + 1
    if arg < 0x100:
        n, ai = 1, 24
    elif arg < 0x10000:
        n, ai = 2, 25
    elif arg < 0x100000000:
        n, ai = 4, 26
    elif arg < 0x10000000000000000:
        n, ai = 8, 27
    else:
        raise CBORError("integer too large")
    buf[pos] = mt | ai
    end = pos + 1 + n
    i = end - 1
    while i > pos:
        buf[i] = arg & 0xFF
        arg >>= 8
        i -= 1
    return end


def number_into(buf, pos, v):
    """A bool, int or float written into buf at pos, encoded as encode()
    does; returns the end. For writers that fill a reused buffer: an int
    below 2**32, the common case, costs this one call and at most one
    struct call."""
    if type(v) is not int:
        if v is False or v is True:
            buf[pos] = _TRUE if v else _FALSE
            return pos + 1
        if isinstance(v, float):
            struct.pack_into(">f", buf, pos + 1, v)
            if struct.unpack_from(">f", buf, pos + 1)[0] == v or v != v:
                buf[pos] = 0xFA
                return pos + 5
            buf[pos] = 0xFB
            struct.pack_into(">d", buf, pos + 1, v)
            return pos + 9
    mt = 0
    if v < 0:
        mt = 0x20
        v = -1 - v
    if v < 24:
        buf[pos] = mt | v
        return pos + 1
    if v < 0x100:
        buf[pos] = mt | 24
        buf[pos + 1] = v
        return pos + 2
    if v < 0x10000:
        struct.pack_into(">BH", buf, pos, mt | 25, v)
        return pos + 3
    if v < 0x100000000:
        struct.pack_into(">BI", buf, pos, mt | 26, v)
        return pos + 5
    return head_into(buf, pos, mt >> 5, v)


def encode(obj, max_depth=_MAX_DEPTH):
    """obj -> CBOR bytes. Raises CBORError on an unsupported type."""
    out = bytearray()
    _enc(out, obj, max_depth)
    return bytes(out)


def _enc(out, obj, depth):
    # Recursive, but over the caller's own objects and capped by depth.
    if depth < 0:
        raise CBORError("nesting too deep")
    # bool before int: True is an int in Python.
    if obj is False:
        out.append(_FALSE)
    elif obj is True:
        out.append(_TRUE)
    elif obj is None:
        out.append(_NULL)
    elif isinstance(obj, int):
        if obj >= 0:
            out.extend(head(_UINT, obj))
        else:
            out.extend(head(_NINT, -1 - obj))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        out.extend(head(_BSTR, len(obj)))
        out.extend(obj)
    elif isinstance(obj, float):
        # Single precision when it holds the value exactly (always on an
        # ESP32, whose floats are single), else double: the shortest of the
        # two, as RFC 8949 section 4.2.2 prefers. NaN and infinities pass as
        # they are (the reader decides).
        b = bytearray(9)
        out.extend(memoryview(b)[:number_into(b, 0, obj)])
    elif isinstance(obj, str):
        b = obj.encode()
        out.extend(head(_TSTR, len(b)))
        out.extend(b)
    elif isinstance(obj, (list, tuple)):
        out.extend(head(_ARRAY, len(obj)))
        for x in obj:
            _enc(out, x, depth - 1)
    elif isinstance(obj, dict):
        out.extend(head(_MAP, len(obj)))
        items = []
        for k, v in obj.items():
            kb = bytearray()
            _enc(kb, k, depth - 1)
            items.append((bytes(kb), v))
        items.sort(key=lambda kv: kv[0])
        for kb, v in items:
            out.extend(kb)
            _enc(out, v, depth - 1)
    elif isinstance(obj, Tag):
        out.extend(head(_TAG, obj.tag))
        _enc(out, obj.value, depth - 1)
    else:
        raise CBORError("cannot encode type")


def decode(data, max_depth=_MAX_DEPTH, max_items=_MAX_ITEMS, views=False):
    """CBOR bytes -> object (exactly one item, no trailing bytes).

    views=True returns byte strings as memoryview slices of `data` instead of
    copies (map keys are always copied: they must be hashable).
    """
    mv = memoryview(data)
    end = len(mv)
    pos = 0
    items = 0
    stack = []  # frames: [container, items still expected, pending map key]
    while True:
        if pos >= end:
            raise CBORError("truncated")
        ib = mv[pos]
        pos += 1
        major = ib >> 5
        ai = ib & 31
        if ai < 24:
            arg = ai
        elif ai < 28:
            nb = 1 << (ai - 24)
            if nb > end - pos:
                raise CBORError("truncated")
            arg = int.from_bytes(mv[pos:pos + nb], "big")
            pos += nb
        else:
            # 28..30 are reserved, 31 is an indefinite length: not accepted.
            raise CBORError("indefinite or reserved length")
        items += 1
        if items > max_items:
            raise CBORError("too many items")

        if major == _UINT:
            val = arg
        elif major == _NINT:
            val = -1 - arg
        elif major == _BSTR or major == _TSTR:
            if arg > end - pos:
                raise CBORError("truncated")
            s = mv[pos:pos + arg]
            pos += arg
            if major == _TSTR:
                try:
                    val = str(s, "utf-8")
                except UnicodeError:
                    raise CBORError("bad utf-8")
            else:
                val = s if views else bytes(s)
        elif major == _ARRAY or major == _MAP:
            n = arg << 1 if major == _MAP else arg
            if n > end - pos:
                # Every item takes at least one byte: the claim is a lie.
                raise CBORError("truncated")
            c = [] if major == _ARRAY else {}
            if n:
                if len(stack) >= max_depth:
                    raise CBORError("nesting too deep")
                stack.append([c, n, _NOKEY])
                continue
            val = c
        elif major == _TAG:
            if len(stack) >= max_depth:
                raise CBORError("nesting too deep")
            stack.append([Tag(arg, None), 1, _NOKEY])
            continue
        else:
            if ib == _FALSE:
                val = False
            elif ib == _TRUE:
                val = True
            elif ib == _NULL:
                val = None
            else:
                raise CBORError("unsupported simple value or float")

        # Hand the finished item to its container; a container that is now
        # complete is itself a finished item for the one above it.
        while True:
            if not stack:
                if pos != end:
                    raise CBORError("trailing bytes")
                return val
            f = stack[-1]
            c = f[0]
            if isinstance(c, list):
                c.append(val)
            elif isinstance(c, dict):
                if f[2] is _NOKEY:
                    if not isinstance(val, (int, str)):
                        raise CBORError("unsupported map key")
                    f[2] = val
                else:
                    if f[2] in c:
                        raise CBORError("duplicate map key")
                    c[f[2]] = val
                    f[2] = _NOKEY
            else:
                c.value = val
            f[1] -= 1
            if f[1]:
                break
            stack.pop()
            val = c
