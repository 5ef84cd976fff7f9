"""Verified boot on simulated boards, booted through the firmware start-up as a
board boots: the verified app runs from /app, nothing from the writable
filesystem runs, every bad image is rejected with an event and changes nothing
on flash but the boot state and the log, trial boots confirm or roll back,
anti-rollback, key rotation, recovery mode and its install path."""
import os
import struct

import pytest

from ictl.sim import bootlab
from ictl.sim import factory
from ictl.sim import device as sim_device
from ictl import image

HDR = image.HEADER_SIZE


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("bootlab")
    keys = {name: image.keygen(str(d / (name + ".pem"))) for name in ("k1", "k2", "rogue")}

    def build(version, counter, key="k1", confirm=False, hwid="esp32-sim", kid=None):
        src = bootlab.make_app(str(d / ("app-%s-%s" % (version, confirm))), version, confirm)
        data = image.build(src, keys[key], kid or key, version, counter, hwid)
        path = d / ("%s-%d-%s-%s-%s.img" % (version, counter, key, confirm, hwid))
        path.write_bytes(data)
        return data, str(path)

    class Lab:
        pass

    lab = Lab()
    lab.dir, lab.keys, lab.build = d, keys, build
    lab.v1 = build("1.0.0", 1)
    lab.v2 = build("2.0.0", 2)
    lab.v2c = build("2.0.0", 2, confirm=True)
    return lab


def device(lab, tmp_path, keys=("k1", "k2"), retired=()):
    return bootlab.new_device(tmp_path / "dev", [(k, lab.keys[k]) for k in keys], retired)


def events_on_flash(dev):
    """The security events stored in the board's littlefs (what the agent sends)."""
    r = bootlab.run(dev, "import esp32, vfs\nfrom ironclad import events\n"
                         "vfs.mount(vfs.VfsLfs2(esp32.Partition.find(1, label='vfs')[0]), '/mnt')\n"
                         "events.PATH = '/mnt/ironclad/events.bin'\n"
                         "for e in events.since(0): print('EV', e['kind'], e['outcome'], e['reason'], e['detail'])\n")
    assert r.returncode == 0, r.stderr
    return [tuple(l.split()[1:4]) for l in r.stdout.splitlines() if l.startswith("EV ")]


def test_boot_runs_the_verified_app_from_romfs(lab, tmp_path):
    dev = device(lab, tmp_path)
    factory.flash_image(dev, lab.v1[0])
    r = bootlab.boot(dev)
    assert r.returncode == 0, r.stdout + r.stderr
    assert bootlab.ran(r) == "1.0.0"
    assert "ironclad: boot app_a v1.0.0 ctr=1 key=k1" in r.stdout
    # The app ran from the read-only ROMFS mount, first on the module path,
    # and nothing on the writable filesystem is on it.
    r = bootlab.boot(dev, raw_repl=True)
    assert bootlab.ran(r) is None  # raw-REPL soft reset: boot.py only, no app
    assert "ironclad: boot app_a" in r.stdout


def test_dropped_code_on_the_filesystem_never_runs(lab, tmp_path):
    dev = device(lab, tmp_path)
    bootlab.boot(dev)  # formats the filesystem
    drop = ("import esp32, vfs, os\nvfs.mount(vfs.VfsLfs2(esp32.Partition.find(1, label='vfs')[0]), '/mnt')\n"
            "for d in ('/mnt/lib', '/mnt/app', '/mnt/ironclad'):\n"
            "    try: os.mkdir(d)\n    except OSError: pass\n"
            "for p in ('/mnt/main.py', '/mnt/boot.py', '/mnt/lib/main.py', '/mnt/app/main.py', '/mnt/ironclad/bootstate.py',"
            " '/mnt/ironclad_trust.py', '/mnt/lib/ironclad_trust.py'):\n"
            "    open(p, 'w').write('print(\"PWNED\")\\nKEYS={}\\nRETIRED=()\\nHWID=\"esp32-sim\"\\n')\n")
    assert bootlab.run(dev, drop).returncode == 0
    r = bootlab.boot(dev)  # recovery: nothing verified, and nothing dropped runs
    assert "PWNED" not in r.stdout and "recovery mode" in r.stdout
    factory.flash_image(dev, lab.v1[0])
    r = bootlab.boot(dev)
    assert "PWNED" not in r.stdout and bootlab.ran(r) == "1.0.0"


def test_fresh_board_is_in_recovery_and_says_so(lab, tmp_path):
    dev = device(lab, tmp_path)
    r = bootlab.boot(dev)
    assert r.returncode == 0 and bootlab.ran(r) is None
    assert "recovery mode" in r.stdout
    ev = events_on_flash(dev)
    assert ("boot", "failed", "recovery") in ev
    # The board is flash-encrypted: its erased slots read as noise, not 0xFF,
    # and are still empty slots, not attacks (no "rejected bad_magic").
    assert sim_device.load(dev)["efuse"]["flash_encryption"]
    assert not [e for e in ev if e[1] == "rejected"], ev


def test_plaintext_board_tells_a_wrong_magic_from_an_erased_slot(lab, tmp_path):
    # Without flash encryption an erased slot reads 0xFF: a header without
    # the magic that is not erased is an attack, and says so.
    dev = str(tmp_path / "dev")
    sim_device.create(dev, flash_encryption=False)
    factory.trust_device(dev, [("k1", lab.keys["k1"].public_key())])
    r = bootlab.boot(dev)
    assert "recovery mode" in r.stdout and "rejected" not in r.stdout, r.stdout
    factory.flash_image(dev, b"XCIM" + lab.v1[0][4:])
    r = bootlab.boot(dev)
    assert "ironclad: event boot rejected bad_magic app_a" in r.stdout, r.stdout


def _mutants(data):
    """(name, bytes, expected reason) for the bad inputs of the issue."""
    h = image.parse_header(data)
    n = h["length"]

    def flip(off, bit=0):
        b = bytearray(data)
        b[off] ^= 1 << bit
        return bytes(b)

    def field(off, fmt, value):
        b = bytearray(data)
        struct.pack_into(fmt, b, off, value)
        return bytes(b)

    return [
        ("truncated", data[:HDR + n // 2], "bad_hash"),
        # Under flash encryption (the simulated production board) a header
        # without the magic is no image: erased flash there reads as noise.
        ("wrong magic", b"XCIM" + data[4:], None),
        ("format version", field(4, "<H", 2), "bad_format"),
        ("length beyond slot", field(16, "<I", 0x7FFFFFF0), "too_large"),
        ("header bit (counter)", flip(12, 3), "bad_signature"),
        ("header bit (sha256)", flip(40, 1), "bad_hash"),
        ("payload bit", flip(HDR + n // 3, 5), "bad_hash"),
        ("signature bit", flip(HDR + n + 100, 7), "bad_signature"),
        ("no signature", field(20, "<H", 0)[:HDR + n], "unsigned"),
        ("signature zeroed", data[:HDR + n] + bytes(384), "bad_signature"),
    ]


def test_bad_images_rejected_and_flash_unchanged(lab, tmp_path):
    dev = device(lab, tmp_path)
    bootlab.boot(dev)  # format littlefs first: later boots only append events
    for name, bad, reason in _mutants(lab.v1[0]):
        factory.flash_image(dev, bad)
        before = bootlab.flash_outside(dev)
        r = bootlab.boot(dev)
        assert bootlab.ran(r) is None, name
        if reason:
            assert "ironclad: event boot rejected %s app_a" % reason in r.stdout, (name, r.stdout)
        else:
            assert "rejected" not in r.stdout, (name, r.stdout)
        assert "recovery mode" in r.stdout, name
        assert bootlab.flash_outside(dev) == before, name  # only boot state and log changed
    assert ("boot", "rejected", "bad_signature") in events_on_flash(dev)


def test_wrong_key_hwid_retired_and_rollback(lab, tmp_path):
    keys = [("k1", lab.keys["k1"]), ("k2", lab.keys["k2"])]
    dev = bootlab.new_device(tmp_path / "dev", keys, retired=("k2",))
    cases = [
        (lab.build("1.0.0", 1, key="rogue")[0], "unknown_key"),  # a key the firmware does not trust
        (lab.build("1.0.0", 1, key="rogue", kid="k1")[0], "bad_signature"),  # naming a trusted key id
        (lab.build("1.0.0", 1, hwid="esp32-other")[0], "wrong_hwid"),
        (lab.build("1.0.0", 1, key="k2")[0], "key_retired"),
    ]
    for bad, reason in cases:
        factory.flash_image(dev, bad)
        r = bootlab.boot(dev)
        assert "event boot rejected %s app_a" % reason in r.stdout, (reason, r.stdout)
        assert bootlab.ran(r) is None
    # Lower security counter: a correctly signed image below the floor.
    factory.flash_image(dev, lab.v1[0], floor=2)
    r = bootlab.boot(dev)
    assert "event boot rejected rollback app_a" in r.stdout and bootlab.ran(r) is None
    # ... or below the firmware's MIN_COUNTER, even with the boot state erased.
    factory.trust_device(dev, [(k, key.public_key()) for k, key in keys], min_counter=2)
    factory.flash_image(dev, lab.v1[0], floor=0)
    r = bootlab.boot(dev)
    assert "event boot rejected rollback app_a" in r.stdout and bootlab.ran(r) is None
    factory.flash_image(dev, lab.v2[0], floor=0)
    assert bootlab.ran(bootlab.boot(dev)) == "2.0.0"


def test_trial_without_confirm_rolls_back(lab, tmp_path):
    dev = device(lab, tmp_path)
    factory.flash_image(dev, lab.v1[0])
    r = bootlab.install(dev, lab.v2[1])
    assert "INSTALLED v2.0.0 ctr=2" in r.stdout, r.stdout + r.stderr
    st = factory.read_bootstate(dev)
    assert st["active"] == "app_b" and st["trial"] and st["attempts"] == 3 and st["fallback"] == "app_a"
    runs = [bootlab.ran(bootlab.boot(dev)) for _ in range(4)]
    assert runs == ["2.0.0", "2.0.0", "2.0.0", "1.0.0"]  # three attempts, then the previous image
    st = factory.read_bootstate(dev)
    assert st["active"] == "app_a" and not st["trial"] and st["floor"] == 0
    assert ("boot", "rejected", "trial_expired") in events_on_flash(dev)


def test_confirm_raises_the_floor_and_blocks_rollback(lab, tmp_path):
    dev = device(lab, tmp_path)
    factory.flash_image(dev, lab.v1[0])
    assert "INSTALLED" in bootlab.install(dev, lab.v2c[1]).stdout
    r = bootlab.boot(dev)
    assert bootlab.ran(r) == "2.0.0" and "(trial)" in r.stdout and "APP-CONFIRM" in r.stdout
    st = factory.read_bootstate(dev)
    assert st["active"] == "app_b" and not st["trial"] and st["floor"] == 2
    assert [bootlab.ran(bootlab.boot(dev)) for _ in range(4)] == ["2.0.0"] * 4  # confirmed: stays
    # The old image, correctly signed, is now below the floor.
    r = bootlab.install(dev, lab.v1[1])
    assert "REFUSED" in r.stdout and "rollback" in r.stdout
    assert factory.read_bootstate(dev)["active"] == "app_b"


def test_running_app_installs_an_update_from_its_filesystem(lab, tmp_path):
    # What an updater does: the new image is on the board's filesystem (as
    # `mpremote cp` or a download puts it), the running app installs it.
    dev = device(lab, tmp_path)
    src = bootlab.make_app(str(tmp_path / "updater"), "1.5.0")
    with open(os.path.join(src, "main.py"), "a") as f:
        f.write("from ironclad import slots\n"
                "print('INSTALL', slots.install_file('/new.img').describe(), bootstate.state())\n")
    factory.flash_image(dev, image.build(src, lab.keys["k1"], "k1", "1.5.0", 1))
    bootlab.boot(dev)  # formats littlefs
    r = bootlab.run(dev, "import esp32, vfs\nvfs.mount(vfs.VfsLfs2(esp32.Partition.find(1, label='vfs')[0]), '/mnt')\n"
                         "with open('/mnt/new.img', 'wb') as f:\n    f.write(open(%r, 'rb').read())\n" % lab.v2c[1])
    assert r.returncode == 0, r.stderr
    r = bootlab.boot(dev, heap_kib=128)  # the app's install verifies with 4 KiB buffers beside the source-compiled library
    assert bootlab.ran(r) == "1.5.0" and "INSTALL v2.0.0 ctr=2" in r.stdout, r.stdout + r.stderr
    st = factory.read_bootstate(dev)
    assert st["active"] == "app_b" and st["trial"] and st["fallback"] == "app_a"
    r = bootlab.boot(dev)
    assert bootlab.ran(r) == "2.0.0" and "APP-CONFIRM" in r.stdout
    assert factory.read_bootstate(dev)["floor"] == 2


def test_corrupted_active_slot_falls_back(lab, tmp_path):
    dev = device(lab, tmp_path)
    factory.flash_image(dev, lab.v1[0], slot="app_a", active=False)
    factory.flash_image(dev, lab.v2[0], slot="app_b")
    bad = bytearray(lab.v2[0])
    bad[HDR + 10] ^= 0x10
    factory.flash_image(dev, bytes(bad), slot="app_b")
    r = bootlab.boot(dev)
    assert "event boot rejected bad_hash app_b" in r.stdout and "event boot info fallback app_a" in r.stdout
    assert bootlab.ran(r) == "1.0.0"
    assert factory.read_bootstate(dev)["active"] == "app_a"


def test_signed_payload_that_is_not_romfs_falls_back(lab, tmp_path):
    dev = device(lab, tmp_path)
    payload = b"this is not a ROMFS image" * 10
    junk = image.sign(image.pack_header(image.parse_version("3.0.0"), 3, "esp32-sim", payload) + payload,
                      lab.keys["k1"], "k1")
    factory.flash_image(dev, lab.v1[0], slot="app_a", active=False)
    factory.flash_image(dev, junk, slot="app_b")
    r = bootlab.boot(dev)
    assert "event boot rejected bad_payload app_b" in r.stdout and bootlab.ran(r) == "1.0.0"


def test_key_rotation(lab, tmp_path):
    # Firmware trusts k1 and k2: images by either boot.
    dev = device(lab, tmp_path)
    for key in ("k1", "k2"):
        factory.flash_image(dev, lab.build("1.0.0", 1, key=key)[0])
        assert bootlab.ran(bootlab.boot(dev)) == "1.0.0", key
    # A firmware that retires k1 (`ictl image trust --key k2=... --retire k1`).
    factory.trust_device(dev, [("k2", lab.keys["k2"].public_key())], retired=("k1",))
    r = bootlab.boot(dev)
    assert bootlab.ran(r) == "1.0.0"  # the image signed by k2 still boots
    factory.flash_image(dev, lab.build("1.0.0", 1, key="k1")[0])
    r = bootlab.boot(dev)
    assert "event boot rejected key_retired app_a" in r.stdout and bootlab.ran(r) is None


def test_recovery_installs_only_a_signed_full_image(lab, tmp_path):
    dev = device(lab, tmp_path)
    assert bootlab.ran(bootlab.boot(dev)) is None
    bad = bytearray(lab.v1[0])
    bad[-1] ^= 1
    (tmp_path / "bad.img").write_bytes(bytes(bad))
    state = factory.read_bootstate(dev)
    before = bootlab.flash_outside(dev)
    r = bootlab.install(dev, str(tmp_path / "bad.img"))
    assert "REFUSED" in r.stdout and "bad_signature" in r.stdout
    assert factory.read_bootstate(dev) == state  # a rejection changes no boot state
    assert bootlab.flash_outside(dev) == before  # nor any slot: the file is checked first
    r = bootlab.install(dev, lab.v1[1])
    assert "INSTALLED v1.0.0" in r.stdout
    st = factory.read_bootstate(dev)
    assert not st["trial"] and st["fallback"] is None  # nothing to fall back to: no trial
    assert bootlab.ran(bootlab.boot(dev)) == "1.0.0"


def test_install_refuses_an_image_larger_than_the_slot(lab, tmp_path):
    dev = device(lab, tmp_path)
    big = tmp_path / "big.img"
    big.write_bytes(lab.v1[0] + b"\0" * 0x48000)
    before = bootlab.flash_outside(dev, labels=("bootstate",))
    r = bootlab.install(dev, str(big))
    assert "REFUSED" in r.stdout and "too_large" in r.stdout
    assert bootlab.flash_outside(dev, labels=("bootstate",)) == before


def test_espsecure_key_signs_images_the_device_accepts(lab, tmp_path):
    import subprocess
    import sys

    pem = tmp_path / "sbv2.pem"
    espsecure = os.path.join(os.path.dirname(sys.executable), "espsecure")
    r = subprocess.run([espsecure, "generate_signing_key", "--version", "2", "--scheme", "rsa3072", str(pem)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    key = image.load_private(str(pem))
    assert key.key_size == 3072
    dev = bootlab.new_device(tmp_path / "dev", [("sbv2", key)])
    src = bootlab.make_app(str(tmp_path / "app"), "3.1.4")
    factory.flash_image(dev, image.build(src, key, "sbv2", "3.1.4", 5))
    assert bootlab.ran(bootlab.boot(dev)) == "3.1.4"


def test_slot_writer_streams_odd_pieces_into_an_encrypted_slot(lab, tmp_path):
    # An encrypted partition takes only 16-byte blocks at 16-byte offsets
    # (ESP-IDF esp_flash_write_encrypted); a download arrives in pieces of
    # any size. The writer holds the partial block until the next piece or
    # close(), and the slot then verifies.
    dev = device(lab, tmp_path)
    r = bootlab.run(dev, "from ironclad import image\nw = image.SlotWriter('app_b')\ndata = open(%r, 'rb').read()\n"
                         "pos, i = 0, 0\nwhile pos < len(data):\n    n = (7, 13, 1, 1000, 16, 33)[i %% 6]\n"
                         "    w.write(data[pos:pos + n])\n    pos += n\n    i += 1\nw.close()\n"
                         "print('OK', image.verify('app_b', floor=0, event=None).describe())\n" % lab.v2[1])
    assert "OK v2.0.0 ctr=2 key=k1" in r.stdout, r.stdout + r.stderr


def test_board_after_the_first_boot_encryption(lab, tmp_path):
    # On its first boot in release mode the ESP-IDF bootloader encrypts every
    # flagged partition in place, whole (ESP-IDF v5.5 bootloader_support
    # flash_encrypt.c, encrypt_partition): its untouched 0xFF then reads back
    # as 0xFF, not noise, until erased, and a write over it without an erase
    # would be garbage. The boot path, the installer and littlefs work on a
    # board in that state too (the simulation starts after a later erase).
    dev = device(lab, tmp_path)
    for p in sim_device.load(dev)["partitions"]:
        if p["label"] in ("app_a", "app_b", "bootstate", "vfs"):
            # Erased before (0xFF on flash): the bootloader encrypts that 0xFF.
            assert bootlab.read_flash(dev, p["offset"], p["offset"] + p["size"]) == b"\xff" * p["size"]
            sim_device.write_flash(dev, p["offset"], b"\xff" * p["size"])
    r = bootlab.boot(dev)  # formats littlefs on the programmed-0xFF vfs
    assert "recovery mode" in r.stdout and "rejected" not in r.stdout, r.stdout + r.stderr
    assert ("boot", "failed", "recovery") in events_on_flash(dev)
    assert "INSTALLED v1.0.0" in bootlab.install(dev, lab.v1[1], "app_a").stdout
    r = bootlab.boot(dev)
    assert bootlab.ran(r) == "1.0.0", r.stdout + r.stderr
