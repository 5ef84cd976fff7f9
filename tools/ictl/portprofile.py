"""The port profile: what MicroPython v1.28.0 offers the device code on each
board we ship, read from upstream's C source with our board definition, and
the check that holds the device code to it.

`ictl firmware profile` regenerates firmware/profile/<chip>.json from a
MicroPython source tree (a checkout, or a bare git repository and a tag): it
runs a small C preprocessor over py/mpconfig.h -> ports/esp32/mpconfigport.h
-> OUR firmware/esp32/boards/<BOARD>/mpconfigboard.h (so MICROPY_VFS_ROM and
what we switch off count), with the sdkconfig fragments the firmware build
uses and the ESP-IDF v5.5 chip facts below, then reads every module globals
table and class locals table (MP_ROM_QSTR entries) that survives it. The
checked-in JSON is what tests and the simulation use: no network, no
MicroPython source at test time. Docs: docs/port-profile.md.

`violations(profile)` walks the device code (boot.py, main.py, app/,
lib/ironclad/, firmware/esp32/modules/) with `ast`: every import of a board
module and every attribute used on it (and on its classes) must be in the
profile, or it is a violation."""
import ast
import json
import os
import re
import subprocess

from ictl import ROOT, read_file


def _text(path):
    return read_file(path).decode()

TAG = "v1.28.0"
PROFILE_DIR = os.path.join(ROOT, "firmware", "profile")
BOARDS_DIR = os.path.join(ROOT, "firmware", "esp32", "boards")

# The boards we ship: chip -> our board directory.
BOARDS = {"esp32": "IRONCLAD_ESP32", "esp32s3": "IRONCLAD_ESP32_S3"}

# ESP-IDF v5.5 facts the tables depend on, per chip, from
# components/soc/<chip>/include/soc/soc_caps.h (SOC_*) and Kconfig defaults
# not set by any sdkconfig fragment (CONFIG_*). A name the preprocessor meets
# and finds nowhere counts as 0, as in C, and is listed in the profile's
# "unresolved" so a reviewer sees every such assumption.
_SOC = "components/soc/%s/include/soc/soc_caps.h (ESP-IDF v5.5)"
CHIP_FACTS = {
    "esp32": {
        "CONFIG_IDF_TARGET_ESP32": 1, "CONFIG_IDF_TARGET_ARCH_XTENSA": 1, "CONFIG_IDF_TARGET": "esp32",
        "SOC_TOUCH_SENSOR_SUPPORTED": 1, "SOC_TOUCH_SENSOR_VERSION": 1, "SOC_PM_SUPPORT_EXT0_WAKEUP": 1,
        "SOC_PM_SUPPORT_EXT1_WAKEUP": 1, "SOC_ULP_SUPPORTED": 1, "SOC_RMT_SUPPORTED": 1, "SOC_DAC_SUPPORTED": 1,
        "SOC_I2S_SUPPORTED": 1, "SOC_PCNT_SUPPORTED": 1, "SOC_SDMMC_HOST_SUPPORTED": 1, "SOC_I2C_SUPPORT_SLAVE": 1,
        "SOC_ADC_PERIPH_NUM": 2, "SOC_UART_HP_NUM": 3, "SOC_UART_NUM": 3,
    },
    "esp32s3": {
        "CONFIG_IDF_TARGET_ESP32S3": 1, "CONFIG_IDF_TARGET_ARCH_XTENSA": 1, "CONFIG_IDF_TARGET": "esp32s3",
        "SOC_TOUCH_SENSOR_SUPPORTED": 1, "SOC_TOUCH_SENSOR_VERSION": 2, "SOC_PM_SUPPORT_EXT0_WAKEUP": 1,
        "SOC_PM_SUPPORT_EXT1_WAKEUP": 1, "SOC_ULP_SUPPORTED": 1, "SOC_RMT_SUPPORTED": 1, "SOC_I2S_SUPPORTED": 1,
        "SOC_PCNT_SUPPORTED": 1, "SOC_SDMMC_HOST_SUPPORTED": 1, "SOC_I2C_SUPPORT_SLAVE": 1,
        "SOC_USB_OTG_SUPPORTED": 1, "SOC_USB_SERIAL_JTAG_SUPPORTED": 1,
        "SOC_ADC_PERIPH_NUM": 2, "SOC_UART_HP_NUM": 3, "SOC_UART_NUM": 3,
    },
}
IDF_VERSION = (5, 5, 0)

# The board modules the profile describes: name -> (source of the module
# table, for the reader). The device code may import only these (and its
# own modules); a module not listed here is not in the profile.
MODULES = ("array", "binascii", "collections", "cryptolib", "deflate", "errno", "esp", "esp32", "gc",
           "hashlib", "heapq", "io", "json", "machine", "math", "micropython", "network", "os", "random",
           "re", "select", "socket", "struct", "sys", "time", "tls", "vfs")

# Frozen Python modules our firmware/manifest.py freezes from micropython-lib
# (require("ssl")): python-stdlib/ssl/ssl.py, a thin layer over `tls`.
FROZEN = {
    "ssl": {
        "source": "micropython-lib python-stdlib/ssl/ssl.py (frozen by firmware/manifest.py require('ssl'))",
        "attrs": {
            "CERT_NONE": "int", "CERT_OPTIONAL": "int", "CERT_REQUIRED": "int", "MBEDTLS_VERSION": "str",
            "PROTOCOL_TLS_CLIENT": "int", "PROTOCOL_TLS_SERVER": "int", "tls": "module", "wrap_socket": "function",
            "SSLContext": {"kind": "class", "members": {
                "verify_mode": "property", "load_cert_chain": "function",
                "load_verify_locations": "function", "wrap_socket": "function"}},
        },
    },
}

# Upstream files the preprocessor reads for the tables (module and class tables
# live in these; the INCLUDEFILE macros and quoted includes pull in the rest).
_SCAN_DIRS = ("ports/esp32", "extmod")
_SCAN_PY = ("py/modarray.c", "py/objarray.c", "py/modcollections.c", "py/objdeque.c", "py/objnamedtuple.c",
            "py/moderrno.c", "py/modgc.c", "py/modio.c", "py/objstringio.c", "py/modmath.c",
            "py/modmicropython.c", "py/modstruct.c", "py/modsys.c")


class ProfileError(Exception):
    """A source tree or board definition the generator cannot read."""


# --- reading upstream ---------------------------------------------------------


class Source:
    """Files of a MicroPython tree at TAG: a checkout, or a bare git repository."""

    def __init__(self, path, tag=TAG):
        self.path, self.tag = path, tag
        self.git = not os.path.isdir(os.path.join(path, "py"))
        self._cache = {}
        if self.git:
            try:
                r = subprocess.run(["git", "-C", path, "ls-tree", "-r", "--name-only", tag],
                                   capture_output=True, text=True)
            except OSError as e:
                raise ProfileError("cannot run git: %s" % e.strerror)
            if r.returncode:
                raise ProfileError("%s: not a MicroPython source tree nor a git repository with tag %s"
                                   % (path, tag))
            self.names = set(r.stdout.split())
        else:
            self.names = None

    def exists(self, name):
        if self.names is not None:
            return name in self.names
        return os.path.isfile(os.path.join(self.path, name))

    def listdir(self, d):
        if self.names is not None:
            return sorted(n for n in self.names if os.path.dirname(n) == d)
        return sorted(os.path.join(d, n) for n in os.listdir(os.path.join(self.path, d)))

    def read(self, name):
        if name not in self._cache:
            if self.git:
                r = subprocess.run(["git", "-C", self.path, "show", "%s:%s" % (self.tag, name)],
                                   capture_output=True, text=True)
                if r.returncode:
                    raise ProfileError("%s: no %s at %s" % (self.path, name, self.tag))
                self._cache[name] = r.stdout
            else:
                self._cache[name] = _text(os.path.join(self.path, name))
        return self._cache[name]


# --- a small C preprocessor ---------------------------------------------------

_IDENT = re.compile(r"\b[A-Za-z_]\w*\b")
_DIRECTIVE = re.compile(r"^\s*#\s*(\w+)\s*(.*)$")


def _logical_lines(text):
    text = re.sub(r"/\*.*?\*/", lambda m: " " * 0 + "\n" * m.group(0).count("\n"), text, flags=re.S)
    out = []
    buf = ""
    for line in text.split("\n"):
        line = re.sub(r"//.*$", "", line) if '"' not in line.split("//")[0] else line
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    if buf:
        out.append(buf)
    return out


class Preprocessor:
    """#if/#ifdef/#ifndef/#elif/#else/#endif, #define (object- and function-like,
    with # and ##), #undef and the #includes that matter for the tables."""

    def __init__(self, src, macros):
        self.src = src
        self.macros = dict(macros)  # name -> (params or None, body)
        self.unresolved = set()
        self.track = False

    def define(self, name, value):
        self.macros[name] = (None, str(value))

    def run(self, name, follow=lambda n: True):
        """Preprocess file `name`; return its active lines (directives removed)."""
        out = []
        self._file(name, follow, out)
        return out

    def _file(self, name, follow, out, depth=0):
        if depth > 12:
            raise ProfileError("include depth exceeded at %s" % name)
        stack = []  # per open #if: (active before it, a branch already taken)
        active = True
        for line in _logical_lines(self.src.read(name)):
            m = _DIRECTIVE.match(line)
            if not m:
                if active:
                    # Expanded where it stands: a table's X(...) entries use a
                    # macro the file #undefs right after (py/moderrno.c).
                    out.append(self.expand(line) if _IDENT.search(line) else line)
                continue
            d, rest = m.group(1), m.group(2).strip()
            if d in ("if", "ifdef", "ifndef"):
                if not active:
                    v = False
                elif d == "if":
                    v = self.eval(rest)
                else:
                    v = (rest.split()[0] in self.macros) == (d == "ifdef")
                stack.append((active, v))
                active = v
            elif d == "elif":
                parent, taken = stack[-1]
                active = parent and not taken and self.eval(rest)
                stack[-1] = (parent, taken or active)
            elif d == "else":
                parent, taken = stack[-1]
                active = parent and not taken
                stack[-1] = (parent, True)
            elif d == "endif":
                active = stack.pop()[0]
            elif not active:
                continue
            elif d == "define":
                m2 = re.match(r"(\w+)(\(([^)]*)\))?\s*(.*)$", rest)
                params = [p.strip() for p in m2.group(3).split(",")] if m2.group(2) else None
                self.macros[m2.group(1)] = (params, m2.group(4).strip())
            elif d == "undef":
                self.macros.pop(rest.split()[0], None)
            elif d == "include":
                inc = self._include_name(rest, name)
                if inc and follow(inc):
                    self._file(inc, follow, out, depth + 1)
        if stack:
            raise ProfileError("%s: unbalanced #if" % name)

    def _include_name(self, rest, cur):
        if rest.startswith("<"):
            inc = rest[1:rest.index(">")]
            # py/mpconfig.h: #include <mpconfigport.h>, the port's.
            return "ports/esp32/mpconfigport.h" if inc == "mpconfigport.h" else None
        if not rest.startswith('"'):
            rest = self.expand(rest).strip()
            if not rest.startswith('"'):
                return None
        inc = rest[1:rest.index('"', 1)]
        if inc == "mpconfigboard.h":
            return "@board"
        for cand in (inc, os.path.join(os.path.dirname(cur), inc)):
            if self.src.exists(cand):
                return cand
        return None

    # expressions

    def expand(self, text, depth=0):
        if depth > 30:
            return text
        out = []
        pos = 0
        changed = False
        for m in _IDENT.finditer(text):
            name = m.group(0)
            if m.start() < pos or name not in self.macros:
                continue
            params, body = self.macros[name]
            if params is None:
                out.append(text[pos:m.start()])
                out.append(" " + body + " ")
                pos = m.end()
                changed = True
                continue
            rest = text[m.end():]
            mm = re.match(r"\s*\(", rest)
            if not mm:
                continue
            i, level, args, cur = m.end() + mm.end(), 1, [], ""
            while i < len(text) and level:
                c = text[i]
                if c == "(":
                    level += 1
                elif c == ")":
                    level -= 1
                    if not level:
                        break
                if c == "," and level == 1:
                    args.append(cur)
                    cur = ""
                else:
                    cur += c
                i += 1
            args.append(cur)
            args = [a.strip() for a in args]
            b = body
            for p, a in zip(params, args):
                b = re.sub(r"(?<!#)#(?!#)\s*\b%s\b" % re.escape(p), '"%s"' % a.replace("\\", "\\\\"), b)
                b = re.sub(r"\b%s\b" % re.escape(p), a.replace("\\", "\\\\"), b)
            b = re.sub(r"\s*##\s*", "", b)
            out.append(text[pos:m.start()])
            out.append(" " + b + " ")
            pos = i + 1
            changed = True
        out.append(text[pos:])
        res = "".join(out)
        return self.expand(res, depth + 1) if changed else res

    def eval(self, expr):
        expr = re.sub(r"\bdefined\s*\(\s*(\w+)\s*\)", lambda m: "1" if m.group(1) in self.macros else "0", expr)
        expr = re.sub(r"\bdefined\s+(\w+)", lambda m: "1" if m.group(1) in self.macros else "0", expr)
        expr = self.expand(expr)
        expr = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", expr)
        expr = re.sub(r"\(\s*(u?int\d*_t|unsigned|int|long|size_t)\s*\)", "", expr)
        expr = expr.replace("&&", " and ").replace("||", " or ")
        expr = re.sub(r"!(?!=)", " not ", expr)
        expr = re.sub(r"(?<![/])/(?![/])", "//", expr)

        def ident(m):
            n = m.group(0)
            if n in ("and", "or", "not"):
                return n
            if self.track:
                self.unresolved.add(n)
            return "0"

        expr = _IDENT.sub(ident, expr)
        if "?" in expr:
            # a ? b : c -> (b if a else c), one level, as mpconfig.h uses it
            m = re.match(r"(.*?)\?(.*?):(.*)", expr)
            expr = "((%s) if (%s) else (%s))" % (m.group(2), m.group(1), m.group(3))
        try:
            return bool(eval(expr, {"__builtins__": {}}))
        except Exception as e:
            raise ProfileError("cannot evaluate #if %r: %s" % (expr, e))


# --- tables -------------------------------------------------------------------

_TABLE = re.compile(r"mp_rom_map_elem_t\s+(\w+)\s*\[\s*\]\s*=\s*\{(.*?)\n\s*\}\s*;", re.S)
_ENTRY = re.compile(r"MP_ROM_QSTR\s*\(\s*MP_QSTR_(\w+)\s*\)\s*,\s*")
_DICT = re.compile(r"MP_DEFINE_CONST_DICT\s*\(\s*(\w+)\s*,\s*(\w+)\s*\)")
_TYPE = re.compile(r"MP_DEFINE_CONST_OBJ_TYPE\s*\(\s*(\w+)\s*,\s*MP_QSTR_(\w+)\s*,(.*?)\)\s*;", re.S)
_MODULE = re.compile(r"mp_obj_module_t\s+(\w+)\s*=\s*\{[^;]*?\.globals\s*=\s*\(mp_obj_dict_t\s*\*\)\s*&(\w+)", re.S)
_REGISTER = re.compile(r"MP_REGISTER_(?:EXTENSIBLE_)?MODULE\s*\(\s*MP_QSTR_(\w+)\s*,\s*(\w+)\s*\)")


def _value(text, start):
    """The entry value starting at text[start]: up to the closing brace at depth 0."""
    level, i = 0, start
    while i < len(text):
        c = text[i]
        if c in "({[":
            level += 1
        elif c in ")]":
            level -= 1
        elif c == "}":
            if level == 0:
                break
            level -= 1
        i += 1
    return text[start:i].strip()


def _kind(value, types, functions):
    v = value.replace(" ", "")
    if v.startswith(("MP_ROM_INT(", "MP_OBJ_NEW_SMALL_INT(")):
        return "int"
    if v.startswith("MP_ROM_QSTR("):
        return "str"
    if v in ("MP_ROM_TRUE", "MP_ROM_FALSE"):
        return "bool"
    if v == "MP_ROM_NONE":
        return "none"
    m = re.match(r"MP_ROM_PTR\(\(?(?:mp_obj_t)?\)?&(\w+)", v)
    if m:
        sym = m.group(1)
        if sym in types:
            return ("class", sym)
        if sym.startswith(("mp_module_", "mp_module")) or sym.endswith("_module"):
            return "module"
        if sym in functions or sym.endswith("_obj"):
            return "function"
        if sym.startswith("mp_type_") or sym.endswith("_type"):
            return ("class", sym)
        return "object"
    if "mp_const_float" in v or "MP_ROM_FLOAT" in v or "mp_const_" in v:
        return "float" if "float" in v else "object"
    return "object"


class _Symbols:
    def __init__(self):
        self.tables = {}  # table name -> (file, [(name, value)])
        self.dicts = {}  # dict name -> table name
        self.types = {}  # type symbol -> (qstr, locals dict or None, file)
        self.modules = {}  # module object -> globals dict
        self.registered = {}  # module name -> (module object, file)
        self.functions = set()
        self.mutable = {}  # module -> attributes kept outside its ROM table

    def add(self, name, text):
        for m in _TABLE.finditer(text):
            body = m.group(2)
            entries = []
            for e in _ENTRY.finditer(body):
                entries.append((e.group(1), _value(body, e.end())))
            self.tables.setdefault(m.group(1), (name, entries))
        for m in _DICT.finditer(text):
            self.dicts.setdefault(m.group(1), m.group(2))
        for m in _TYPE.finditer(text):
            ld = re.search(r"locals_dict\s*,\s*&?\s*(\w+)", m.group(3))
            self.types.setdefault(m.group(1), (m.group(2), ld.group(1) if ld else None, name))
        for m in _MODULE.finditer(text):
            self.modules.setdefault(m.group(1), m.group(2))
        for m in _REGISTER.finditer(text):
            self.registered.setdefault(m.group(1), (m.group(2), name))
        # sys.path (and ps1/ps2, tracebacklimit) are sys's mutable attributes,
        # delegated outside its ROM table (py/modsys.c sys_mutable_keys).
        m = re.search(r"sys_mutable_keys\[\]\s*=\s*\{(.*?)\};", text, re.S)
        if m:
            self.mutable["sys"] = re.findall(r"MP_QSTR_(\w+)", m.group(1))
        self.functions.update(re.findall(r"MP_DEFINE_CONST_(?:FUN|STATICMETHOD|CLASSMETHOD)_OBJ\w*\s*\(\s*(\w+)", text))

    def members(self, table, seen=()):
        if table not in self.tables:
            return None, {}
        src, entries = self.tables[table]
        out = {}
        for name, value in entries:
            if name.startswith("__") and name not in ("__init__", "__enter__", "__exit__", "__iter__", "__next__", "__call__"):
                continue
            k = _kind(value, self.types, self.functions)
            if isinstance(k, tuple):
                out[name] = self.cls(k[1], seen)
            else:
                out[name] = k
        return src, out

    def cls(self, sym, seen=()):
        if sym not in self.types or sym in seen:
            return {"kind": "class"}
        qstr, ld, src = self.types[sym]
        res = {"kind": "class", "source": src}
        table = self.dicts.get(ld, ld) if ld else None
        if table in self.tables:
            res["members"] = self.members(table, seen + (sym,))[1]
        elif not ld:
            res["members"] = {}  # no locals dict: the type has no methods
        # else a dict this reader cannot resolve (py/objstr.c slices one
        # table for str, bytes and array): members unknown, not checked
        return res


# --- generation ---------------------------------------------------------------


def _sdkconfig(paths, text_of):
    out = {}
    for p in paths:
        for line in text_of(p).splitlines():
            line = line.strip()
            m = re.match(r"#\s*(CONFIG_\w+) is not set", line)
            if m:
                out[m.group(1)] = 0
                continue
            if line.startswith("#") or "=" not in line:
                continue
            k, v = line.split("=", 1)
            if v == "y":
                out[k] = 1
            elif v == "n":
                out[k] = 0
            elif re.fullmatch(r"-?\d+|0x[0-9a-fA-F]+", v):
                out[k] = int(v, 0)
            else:
                out[k] = v
    return out


def _board_files(chip):
    board = os.path.join(BOARDS_DIR, BOARDS[chip])
    # In the order firmware/esp32/ironclad.cmake applies the sdkconfig fragments.
    return [os.path.join(board, "mpconfigboard.h"), os.path.join(ROOT, "firmware", "sdkconfig.ironclad"),
            os.path.join(board, "sdkconfig.board"), os.path.join(ROOT, "firmware", "sdkconfig.production")]


def board_inputs(chip):
    """SHA-256 of each of our files the profile is derived from: a test compares
    them with the checked-in profile, so a changed board header cannot go
    unnoticed without regenerating it."""
    import hashlib

    return {os.path.relpath(p, ROOT): hashlib.sha256(read_file(p)).hexdigest() for p in _board_files(chip)}


def _config(src, chip):
    """The preprocessor after py/mpconfig.h, with our board's header and sdkconfig."""
    board_h, ours = _board_files(chip)[0], _board_files(chip)[1:]
    sdk = _sdkconfig(["ports/esp32/boards/sdkconfig.base"], src.read)
    sdk.update(_sdkconfig(ours, _text))
    # Set on the compiler's command line by ports/esp32/esp32_common.cmake.
    macros = {"MICROPY_VFS_FAT": (None, "1"), "MICROPY_VFS_LFS2": (None, "1")}
    for k, v in list(CHIP_FACTS[chip].items()) + list(sdk.items()):
        macros[k] = (None, '"%s"' % v if isinstance(v, str) else str(v))
    macros["ESP_IDF_VERSION_VAL"] = (["major", "minor", "patch"], "(((major) << 16) | ((minor) << 8) | (patch))")
    macros["ESP_IDF_VERSION"] = (None, str((IDF_VERSION[0] << 16) | (IDF_VERSION[1] << 8) | IDF_VERSION[2]))
    macros["ESP_IDF_VERSION_MAJOR"] = (None, str(IDF_VERSION[0]))
    macros["ESP_IDF_VERSION_MINOR"] = (None, str(IDF_VERSION[1]))
    pp = Preprocessor(src, macros)
    board_text = _text(board_h)
    real_read = src.read

    def read(name):
        return board_text if name == "@board" else real_read(name)

    src.read = read
    pp.run("py/mpconfig.h", follow=lambda n: n in ("ports/esp32/mpconfigport.h", "@board"))
    return pp


def _scan_files(src):
    files = []
    for d in _SCAN_DIRS:
        files += [n for n in src.listdir(d) if n.endswith(".c")]
    return files + [n for n in _SCAN_PY if src.exists(n)]


def _follow(n):
    return n.startswith(("ports/esp32/", "extmod/")) and not n.startswith("extmod/nimble")


def generate(src, chip):
    """The profile of one board as a dict."""
    base = _config(src, chip)
    syms = _Symbols()
    unresolved = set()
    for name in _scan_files(src):
        pp = Preprocessor(src, base.macros)
        pp.track = True
        try:
            lines = pp.run(name, follow=_follow)
        except ProfileError:
            continue  # a file our simple preprocessor cannot follow holds no table we read
        unresolved |= pp.unresolved
        syms.add(name, "\n".join(lines))
    modules = {}
    for mod in MODULES:
        reg = syms.registered.get(mod)
        if reg is None:
            continue  # not compiled into this board: absent from the profile
        gdict = syms.modules.get(reg[0])
        table = syms.dicts.get(gdict, gdict)
        tsrc, attrs = syms.members(table)
        for a in syms.mutable.get(mod, ()):
            attrs[a] = "object"
        modules[mod] = {"source": tsrc or reg[1], "attrs": dict(sorted(attrs.items()))}
    modules.update(FROZEN)
    m = base.macros

    def val(name):
        try:
            return base.eval(name)
        except ProfileError:
            return None

    def num(expr):
        e = base.expand(expr)
        e = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", e)
        e = _IDENT.sub("0", e)
        return eval(e, {"__builtins__": {}})

    flags = {}
    for f in ("MICROPY_VFS_ROM", "MICROPY_VFS_LFS2", "MICROPY_VFS_FAT", "MICROPY_PY_ESPNOW", "MICROPY_PY_BLUETOOTH",
              "MICROPY_PY_NETWORK_LAN", "MICROPY_PY_NETWORK_WLAN", "MICROPY_PY_SSL", "MICROPY_SSL_MBEDTLS",
              "MICROPY_PY_CRYPTOLIB", "MICROPY_PY_HASHLIB_SHA1", "MICROPY_PY_HASHLIB_MD5", "MICROPY_PY_DEFLATE",
              "MICROPY_EPOCH_IS_1970", "MICROPY_LONGINT_IMPL", "MICROPY_FLOAT_IMPL"):
        flags[f] = int(num(f)) if f in m else 0
    # MICROPY_OBJ_REPR_A on a 32-bit chip: small ints are 31-bit; the ticks
    # period is MP_SMALL_INT_POSITIVE_MASK + 1 = 2**30 (py/mpconfig.h, extmod/modtime.c).
    behaviour = {
        "epoch_year": {"value": 1970 if flags["MICROPY_EPOCH_IS_1970"] else 2000,
                       "source": "py/mpconfig.h MICROPY_EPOCH_IS_1970 (not set by ports/esp32/mpconfigport.h)"},
        "ticks_period": {"value": 1 << 30,
                         "source": "py/mpconfig.h MICROPY_PY_TIME_TICKS_PERIOD = MP_SMALL_INT_POSITIVE_MASK + 1; "
                                   "MICROPY_OBJ_REPR_A (ports/esp32/mpconfigport.h) on a 32-bit word: 2**30"},
        "time_follows_rtc": {"value": True,
                             "source": "ports/esp32/modtime.c (gettimeofday) and machine_rtc.c (settimeofday)"},
        "nvs_handle_closed": {"value": "nvs_close" in src.read("ports/esp32/esp32_nvs.c"),
                              "source": "ports/esp32/esp32_nvs.c: nvs_open in make_new, no nvs_close, no finaliser"},
        "raw_temperature_unit": {"value": "degF" if "raw_temperature" in modules["esp32"]["attrs"] else None,
                                 "source": "docs/esp32/quickref.rst: esp32.raw_temperature() in Fahrenheit"},
    }
    return {
        "inputs": board_inputs(chip),
        "upstream_sdkconfig_fragments": [n for n in src.listdir("ports/esp32/boards")
                                         if os.path.basename(n).startswith("sdkconfig.")],
        "about": "What MicroPython %s offers the device code on %s (our board %s). Generated by "
                 "`ictl firmware profile` from upstream source; do not edit by hand." % (src.tag, chip, BOARDS[chip]),
        "micropython": src.tag,
        "chip": chip,
        "board": BOARDS[chip],
        "config": flags,
        "behaviour": behaviour,
        "unresolved": sorted(n for n in unresolved if n.startswith(("SOC_", "CONFIG_"))),
        # Decorators the compiler consumes: native code needs an emitter for the
        # chip (ports/esp32/mpconfigport.h MICROPY_EMIT_XTENSAWIN / _RV32).
        "compiler": {"const": True,
                     "native": bool(val("MICROPY_EMIT_XTENSAWIN") or val("MICROPY_EMIT_RV32")),
                     "viper": bool(val("MICROPY_EMIT_XTENSAWIN") or val("MICROPY_EMIT_RV32"))},
        "modules": dict(sorted(modules.items())),
    }


def surface_lines(prof):
    """The profile as the simulation reads it (firmware/profile/<chip>.surface):
    one line per module and per class, its name then the names it has. A
    line at a time, so a stand-in reads it within a small heap."""
    out = []

    def walk(name, attrs):
        out.append(" ".join([name] + sorted(attrs)))
        for k, v in sorted(attrs.items()):
            if isinstance(v, dict) and v.get("kind") == "class" and "members" in v:
                walk(name + "." + k, v["members"])

    for mod, m in prof["modules"].items():
        walk(mod, m["attrs"])
    return out


def write(src, chips=None, out_dir=PROFILE_DIR):
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for chip in chips or sorted(BOARDS):
        prof = generate(src, chip)
        p = os.path.join(out_dir, chip + ".json")
        with open(p, "w") as f:
            json.dump(prof, f, indent=1, sort_keys=False)
            f.write("\n")
        with open(os.path.join(out_dir, chip + ".surface"), "w") as f:
            f.write("# generated from %s.json by `ictl firmware profile`: the simulation's copy\n" % chip)
            f.write("\n".join(surface_lines(prof)) + "\n")
        paths.append(p)
    return paths


# --- the checked-in profile and the check -----------------------------------------


def load(chip="esp32", profile_dir=PROFILE_DIR):
    try:
        with open(os.path.join(profile_dir, chip + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ProfileError("no port profile for %s (%s): run `ictl firmware profile`" % (chip, e))


# The device code: what runs on the board.
DEVICE_CODE = ("boot.py", "main.py", "app", "lib/ironclad/ironclad", "firmware/esp32/modules")


def _device_files(root):
    for p in DEVICE_CODE:
        full = os.path.join(root, p)
        if os.path.isfile(full):
            yield full
        elif os.path.isdir(full):
            for dp, _, names in os.walk(full):
                for n in sorted(names):
                    if n.endswith(".py"):
                        yield os.path.join(dp, n)


def _own_modules(root):
    """Modules the device code brings itself (not board modules)."""
    own = {"ironclad", "ironclad_trust", "ironclad_main", "ironclad_devmode", "boot", "main", "agent"}
    for f in _device_files(root):
        own.add(os.path.basename(f)[:-3])
    return own


class _Walker(ast.NodeVisitor):
    """Names bound to board modules (and their classes) -> attribute uses."""

    def __init__(self, prof, own, path, out):
        self.mods, self.own, self.path, self.out = prof["modules"], own, path, out
        self.compiler = prof.get("compiler", {})
        self.bound = {}  # local name -> ("mod", module) or ("cls", module, dotted class)

    def _bad(self, node, what):
        self.out.append("%s:%d: %s" % (self.path, node.lineno, what))

    def _lookup(self, mod, dotted):
        entry = {"attrs": self.mods[mod]["attrs"]}
        for part in dotted:
            attrs = entry.get("attrs") if "attrs" in entry else entry.get("members", {})
            if part not in attrs:
                return None
            entry = attrs[part] if isinstance(attrs[part], dict) else {"kind": attrs[part]}
        return entry

    def visit_Import(self, node):
        for a in node.names:
            top = a.name.split(".")[0]
            if top in self.own or top == "__future__":
                continue
            if top not in self.mods:
                self._bad(node, "import %s: no module %s on the board" % (a.name, top))
                continue
            self.bound[a.asname or top] = ("mod", top, ())

    def visit_ImportFrom(self, node):
        top = (node.module or "").split(".")[0]
        if node.level or top in self.own:
            return
        if top not in self.mods:
            self._bad(node, "from %s import: no module %s on the board" % (node.module, top))
            return
        for a in node.names:
            if top == "micropython" and a.name == "const":
                continue  # compile-time: mpy-cross and the compiler consume it
            if self._lookup(top, (a.name,)) is None:
                self._bad(node, "from %s import %s: the board's %s has no %s" % (top, a.name, top, a.name))
            else:
                self.bound[a.asname or a.name] = ("mod", top, (a.name,))

    def _probe(self, test):
        """True/False when `test` is hasattr(<board module>, "name") (or its
        `not`), decided by the profile; None for any other test."""
        neg = isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
        t = test.operand if neg else test
        if (isinstance(t, ast.Call) and isinstance(t.func, ast.Name) and t.func.id == "hasattr" and len(t.args) == 2
                and isinstance(t.args[0], ast.Name) and self.bound.get(t.args[0].id, ("",))[0] == "mod"
                and isinstance(t.args[1], ast.Constant) and isinstance(t.args[1].value, str)):
            _, mod, pre = self.bound[t.args[0].id]
            has = self._lookup(mod, tuple(pre) + (t.args[1].value,)) is not None
            return has != neg
        return None

    def visit_If(self, node):
        # Feature detection: only the branch that runs on this chip is checked
        # (if hasattr(esp32, "mcu_temperature"): ... else: ...).
        live = self._probe(node.test)
        if live is None:
            self.generic_visit(node)
            return
        for n in node.body if live else node.orelse:
            self.visit(n)

    def _target_key(self, t):
        if isinstance(t, ast.Name):
            return t.id
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
            return "self." + t.attr
        return None

    def _class_of(self, call):
        """(module, class path) when `call` makes an instance of a board class."""
        if not isinstance(call, ast.Call):
            return None
        chain, n = [], call.func
        while isinstance(n, ast.Attribute):
            chain.append(n.attr)
            n = n.value
        if not isinstance(n, ast.Name) or n.id not in self.bound:
            return None
        _, mod, pre = self.bound[n.id]
        path = list(pre) + chain[::-1]
        ent = self._lookup(mod, tuple(path))
        if ent and ent.get("kind") == "class" and "members" in ent:
            return mod, tuple(path)
        return None

    def visit_Assign(self, node):
        self.generic_visit(node)
        cls = self._class_of(node.value)
        for t in node.targets:
            k = self._target_key(t)
            if k and cls:
                self.bound[k] = ("inst",) + cls
            elif k and self.bound.get(k, ("mod",))[0] == "inst":
                del self.bound[k]  # rebound to something else

    def visit_Attribute(self, node):
        key = None
        if isinstance(node.value, ast.Name):
            key = node.value.id
        elif (isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name)
              and node.value.value.id == "self"):
            key = "self." + node.value.attr
        if key in self.bound and self.bound[key][0] == "inst":
            _, mod, cls = self.bound[key]
            if self._lookup(mod, cls + (node.attr,)) is None:
                self._bad(node, "%s.%s has no %s on the board (%s)" % (mod, ".".join(cls), node.attr,
                                                                       self.mods[mod]["source"]))
            return
        if (isinstance(node.value, ast.Name) and self.bound.get(node.value.id) == ("mod", "micropython", ())
                and self.compiler.get(node.attr)):
            return  # @micropython.native / .viper: the compiler's, when the chip has an emitter
        chain = []
        n = node
        while isinstance(n, ast.Attribute):
            chain.append(n.attr)
            n = n.value
        if isinstance(n, ast.Name) and n.id in self.bound:
            _, mod, pre = self.bound[n.id]
            chain.reverse()
            # Check the longest prefix the profile describes: module attrs, then class members.
            path = list(pre)
            for part in chain:
                ent = self._lookup(mod, tuple(path))
                if ent is None:
                    break
                kind = ent.get("kind")
                if path and kind not in ("class", "module", None):
                    break  # a value's own attributes (int, function, ...) are Python's, not the board's
                if kind == "class" and "members" not in ent:
                    break
                if self._lookup(mod, tuple(path + [part])) is None:
                    self._bad(node, "%s.%s: not on the board (%s)" % (".".join([mod] + path), part,
                                                                      self.mods[mod]["source"]))
                    break
                path.append(part)
            return  # the inner Attribute nodes are part of this chain
        self.generic_visit(node)


def violations(prof, root=ROOT, files=None):
    """Every use of a board module by the device code that the profile lacks."""
    own = _own_modules(root)
    out = []
    for f in files or _device_files(root):
        tree = ast.parse(_text(f), filename=f)
        _Walker(prof, own, os.path.relpath(f, root), out).visit(tree)
    return out
