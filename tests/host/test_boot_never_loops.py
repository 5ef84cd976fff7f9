"""Boot never loops (issue 13, findings 1, 5, 8): whatever goes wrong while
choosing, verifying or mounting a slot, the board runs the other verified
slot or stays in recovery mode with an event, boot after boot; the trial
attempt is spent before the image is read; an image the boot path could not
map is refused at install, at update time and by the host tools; a failed
set_boot leaves nothing pending; the device library has no import circle."""
import ast
import contextlib
import glob
import io
import os
import subprocess

import pytest

from ictl.sim import board, bootlab
from ictl.sim import factory
from ictl.cli import main as cli
from ictl import image
from ictl.update import Update
from ictl.sim.updatelab import Fleet
from mphelp import ROOT

BIG = 120 * 1024  # finding 5: a valid signed image with a 120 KiB payload


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("neverloop")
    key = image.keygen(str(d / "k1.pem"))

    class Lab:
        pass

    lab = Lab()
    lab.dir, lab.key = d, key
    lab.v1 = image.build(bootlab.make_app(str(d / "v1"), "1.0.0"), key, "k1", "1.0.0", 1)
    lab.v2 = image.build(bootlab.make_app(str(d / "v2"), "2.0.0"), key, "k1", "2.0.0", 1)
    lab.big = image.build(bootlab.make_app(str(d / "big"), "2.0.0", pad=BIG), key, "k1", "2.0.0", 1)
    return lab


def trial_device(lab, tmp_path, new, map_max=image.MAP_MAX):
    """v1 confirmed in app_a, `new` installed in app_b on trial (3 attempts)."""
    dev = bootlab.new_device(tmp_path / "dev", [("k1", lab.key)])
    if map_max != image.MAP_MAX:
        factory.trust_device(dev, [("k1", lab.key.public_key())], map_max=map_max)
    factory.flash_image(dev, lab.v1, "app_a", active=False)
    factory.flash_image(dev, new, "app_b", active=False)
    bootlab.set_bootstate(dev, "app_b", trial=True, attempts=3, fallback="app_a", floor=1)
    return dev


def test_firmware_without_vfsrom_stays_in_recovery_boot_after_boot(lab, tmp_path):
    # Finding 1: a stock ESP32 build has no vfs.VfsRom (MICROPY_VFS_ROM is 0
    # in upstream py/mpconfig.h). Neither slot can be mounted: recovery mode,
    # with the reason, at every boot; never an exception out of boot.py.
    dev = bootlab.new_device(tmp_path / "dev", [("k1", lab.key)])
    factory.flash_image(dev, lab.v1, "app_a")
    factory.flash_image(dev, lab.v2, "app_b", active=False)
    missing = [("VfsRom", -1, s, "AttributeError") for s in ("app_a", "app_b")]
    for _ in range(3):
        b = bootlab.fault_boot(dev, missing)
        assert b.ok(set()) and b.recovery, (b, b.result.stdout, b.result.stderr)
        assert ["boot", "failed", "no_feature"] in b.events, b.events
        assert "no_feature app_a VfsRom" in b.result.stdout
    # The firmware that has it boots the active image again: nothing was lost.
    assert bootlab.fault_boot(dev).ran == "1.0.0"


def test_payload_over_the_map_limit_falls_back_at_the_boards_heap(lab, tmp_path):
    # Finding 5 on the virtual board's configuration (the port heap of
    # ictl.board, the app's 64 KiB): the 120 KiB payload is over the board's
    # map limit, so it is never copied; v1 runs, boot after boot.
    dev = trial_device(lab, tmp_path, lab.big)
    heap = {"heap_kib": board.PORT_HEAP_KIB, "extra_env": board.app_heap_env()}
    boots = [bootlab.fault_boot(dev, **heap) for _ in range(3)]
    assert [b.ran for b in boots] == ["1.0.0"] * 3, [(b, b.result.stderr[-300:]) for b in boots]
    assert ["boot", "rejected", "map_too_large"] in boots[0].events
    st = factory.read_bootstate(dev)
    assert st["active"] == "app_a" and not st["trial"]


def test_payload_that_runs_out_of_memory_falls_back(lab, tmp_path):
    # Finding 5 with a board whose limit would allow the copy: the heap
    # cannot hold it (MemoryError while mapping), the other slot runs.
    dev = trial_device(lab, tmp_path, lab.big, map_max=256 * 1024)
    boots = [bootlab.Boot(bootlab.boot(dev, heap_kib=128)) for _ in range(3)]
    assert [b.ran for b in boots] == ["1.0.0"] * 3, [(b, b.result.stderr[-300:]) for b in boots]
    assert ["boot", "failed", "no_memory"] in boots[0].events
    assert not any(b.escaped for b in boots)


def test_trial_attempt_is_spent_before_the_image_is_mapped(lab, tmp_path):
    # The board resets while mapping the trial image (a panic, the watchdog),
    # at every boot. Each boot has spent an attempt first, so after three
    # the trial ends and v1 runs: no reset loop.
    dev = trial_device(lab, tmp_path, lab.v2)
    attempts = []
    for _ in range(3):
        b = bootlab.fault_boot(dev, [("map", -1, "app_b", "reset")])
        assert b.ran is None and b.result.returncode != 0  # the reset
        attempts.append(factory.read_bootstate(dev)["attempts"])
    assert attempts == [2, 1, 0]
    b = bootlab.fault_boot(dev, [("map", -1, "app_b", "reset")])
    assert b.ran == "1.0.0" and ["boot", "rejected", "trial_expired"] in b.events, b


def test_signed_image_without_a_main_falls_back(lab, tmp_path):
    # A signed ROMFS with nothing to run: on a locked board an app that ends
    # resets the chip, so the slot is ruled out at boot.
    src = tmp_path / "nomain"
    src.mkdir()
    (src / "lib.py").write_text("X = 1\n")
    out = tmp_path / "nomain.romfs"
    subprocess.run([image.MPREMOTE, "romfs", "-o", str(out), "build", str(src)], check=True, capture_output=True)
    payload = out.read_bytes()
    img = image.sign(image.pack_header(image.parse_version("3.0.0"), 1, "esp32-sim", payload) + payload,
                     lab.key, "k1")
    dev = bootlab.new_device(tmp_path / "dev", [("k1", lab.key)])
    factory.flash_image(dev, lab.v1, "app_a", active=False)
    factory.flash_image(dev, img, "app_b")
    for _ in range(2):
        b = bootlab.fault_boot(dev)
        assert b.ran == "1.0.0" and not b.escaped, (b, b.result.stdout, b.result.stderr)
    assert factory.read_bootstate(dev)["active"] == "app_a"


def test_install_refuses_an_image_the_boot_path_cannot_map(lab, tmp_path):
    dev = bootlab.new_device(tmp_path / "dev", [("k1", lab.key)])
    factory.flash_image(dev, lab.v1, "app_a")
    path = tmp_path / "big.img"
    path.write_bytes(lab.big)
    state = factory.read_bootstate(dev)
    r = bootlab.install(dev, str(path), "app_b")
    assert "REFUSED" in r.stdout and "map_too_large" in r.stdout, r.stdout + r.stderr
    assert factory.read_bootstate(dev) == state
    assert "event install rejected map_too_large app_b" in r.stdout


def ictl(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(args))
    return rc, out.getvalue(), err.getvalue()


def test_host_tools_refuse_to_build_an_image_that_cannot_be_mapped(lab, tmp_path):
    src = bootlab.make_app(str(tmp_path / "app"), "2.0.0", pad=BIG)
    out = tmp_path / "big.img"
    rc, _, err = ictl("image", "build", src, "-o", str(out), "--key", str(lab.dir / "k1.pem"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "map" in err and not out.exists(), err
    # A board that can map it: --map-max-kib.
    rc, _, err = ictl("image", "build", src, "-o", str(out), "--key", str(lab.dir / "k1.pem"), "--map-max-kib", "160")
    assert rc == 0 and out.exists(), err
    # `ictl update create` refuses such an image too.
    rc, _, err = ictl("update", "create", "--image", str(out), "--key", str(lab.dir / "k1.pem"),
                      "--device", "dev1=%s" % (tmp_path / "dev.pem"), "-o", str(tmp_path / "upd"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "map" in err, err
    assert not (tmp_path / "upd").exists()


def test_update_too_big_to_map_is_refused_before_a_byte_is_written(lab, tmp_path):
    f = Fleet(tmp_path)
    factory.flash_image(f.devdir, image.build(bootlab.make_app(str(tmp_path / "v1"), "1.0.0"), f.sign_key,
                                            f.key_id, "1.0.0", 1), "app_a")
    big = image.build(bootlab.make_app(str(tmp_path / "big"), "2.0.0", pad=BIG), f.sign_key, f.key_id, "2.0.0", 1)
    a, b = bootlab.slot_range(f.devdir, "app_b")
    before = bootlab.read_flash(f.devdir, a, b)
    u = Update.create(big)
    m = f.save(u, u.metadata(f.dev_id, f.dev_pub, f.sign_key, f.key_id), "big")
    rc, lines, reps = f.run(send=[m], updates=[u])
    assert [r["state"] + "/" + r.get("reason", "") for r in reps if r["state"] != "idle"] == \
        ["rejected/map_too_large"], f.last.stdout
    assert ("update", "map_too_large", "rejected") in f.events
    assert bootlab.read_flash(f.devdir, a, b) == before


def test_set_boot_failure_leaves_nothing_pending(tmp_path):
    # Finding 8: esp_ota_set_boot_partition verifies the new firmware and
    # fails (ESPSIM_SET_BOOT_FAIL, as check_esp_err raises it): the update is
    # refused with an event and no 'pending' is left to block the next one.
    import random

    rng = random.Random(13)
    f = Fleet(tmp_path)
    factory.flash_image(f.devdir, image.build(bootlab.make_app(str(tmp_path / "v1"), "1.0.0"), f.sign_key,
                                            f.key_id, "1.0.0", 1), "app_a")
    fw2 = b"\xe9" + rng.randbytes(20000)
    u = Update.create(fw2, target="fw", version=2, counter=1, hwid="esp32-sim")
    m = f.save(u, u.metadata(f.dev_id, f.dev_pub, f.sign_key, f.key_id), "fw2")
    rc, lines, reps = f.run(send=[m], updates=[u], env={"ESPSIM_SET_BOOT_FAIL": "1"})
    assert reps[-1]["state"] == "rejected" and reps[-1]["reason"] == "switch_failed", f.last.stdout
    assert ("update", "switch_failed", "rejected") in f.events
    state = [l for l in lines if l.startswith("STATE ")]
    assert state and '"pending": null' in state[-1], lines[-5:]
    # The same update, set_boot working again: applied at once (not "busy").
    rc, lines, reps = f.run(send=[m], updates=[u])
    assert [r["state"] for r in reps if r["state"] not in ("idle", "downloading")] == ["applied"], reps


def _imports(path):
    """The ironclad modules a device module imports (anywhere in it)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module == "ironclad":
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ironclad."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ironclad.")}
    return out


def test_device_library_has_no_import_circle():
    # Issue 15: bootstate -> bootflow -> bootstate was one. Function-level
    # imports count: they are the ones that hid it.
    mods = {os.path.basename(p)[:-3]: p for p in glob.glob(os.path.join(ROOT, "lib", "ironclad", "ironclad", "*.py"))}
    graph = {m: _imports(p) & set(mods) for m, p in mods.items()}
    assert graph["bootstate"] == set()  # the lowest boot module
    state = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, "import circle: %s" % " -> ".join(path + [n])
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
