"""The port profile (firmware/profile/<chip>.json, `ictl firmware profile`) and
the device code held to it (issue 13): the check, the board definition it is
derived from, the stand-ins that honour it, the temperature reading on each
chip, and NVS handles over a simulated day of agent life (the full month is
`ictl soak --only board`)."""
import os
import re

import pytest

import mphelp
from ictl.sim import device as sim_device
from ictl import portprofile
from ictl.measure import soak_board

CHIPS = sorted(portprofile.BOARDS)
UPSTREAM = os.environ.get("MICROPY_DIR") or "/work/.mirror/micropython+micropython/repo"


@pytest.mark.parametrize("chip", CHIPS)
def test_device_code_holds_to_the_profile(chip):
    assert portprofile.violations(portprofile.load(chip)) == []


def test_the_check_catches_what_a_chip_lacks(tmp_path):
    f = tmp_path / "seeded.py"
    f.write_text("import esp32\nimport espnow\nfrom vfs import VfsRom, VfsPosix\n"
                 "p = esp32.Partition(esp32.Partition.RUNNING)\np.readblocks(0, bytearray(4))\np.frobnicate()\n"
                 "t = esp32.mcu_temperature()\n"
                 "if hasattr(esp32, 'raw_temperature'):\n    t = esp32.raw_temperature()\n"
                 "else:\n    t = esp32.mcu_temperature()\n")
    got = {c: portprofile.violations(portprofile.load(c), files=[str(f)]) for c in CHIPS}
    text = "\n".join(got["esp32"])
    assert "import espnow" in text and "VfsPosix" in text and "frobnicate" in text
    assert [v for v in got["esp32"] if "mcu_temperature" in v] == [v for v in got["esp32"] if ":7:" in v]
    assert not any("VfsRom" in v or "readblocks" in v or "raw_temperature" in v for v in got["esp32"])
    # The S3 has mcu_temperature (line 7 is fine there) and no raw_temperature,
    # but the hasattr() test keeps line 9 out of its live code.
    assert not any("temperature" in v for v in got["esp32s3"]), got["esp32s3"]
    assert len(got["esp32"]) == 4 and len(got["esp32s3"]) == 3


@pytest.mark.parametrize("chip", CHIPS)
def test_profile_is_derived_from_our_board_definition(chip):
    prof = portprofile.load(chip)
    # Regenerate (`ictl firmware profile`) when a board header or sdkconfig
    # fragment changes: the checked-in profile records what it was made from.
    assert prof["inputs"] == portprofile.board_inputs(chip)
    assert prof["micropython"] == "v1.28.0"
    assert prof["config"]["MICROPY_VFS_ROM"] == 1 and "VfsRom" in prof["modules"]["vfs"]["attrs"]
    assert prof["config"]["MICROPY_PY_ESPNOW"] == 0 and prof["config"]["MICROPY_PY_BLUETOOTH"] == 0
    b = prof["behaviour"]
    assert b["epoch_year"]["value"] == 2000 and b["ticks_period"]["value"] == 1 << 30
    assert b["nvs_handle_closed"]["value"] is False
    esp32 = prof["modules"]["esp32"]["attrs"]
    assert ("raw_temperature" in esp32) == (chip == "esp32") and ("mcu_temperature" in esp32) == (chip != "esp32")
    # The simulation's copy is the same profile.
    with open(os.path.join(portprofile.PROFILE_DIR, chip + ".surface")) as f:
        assert [l for l in f.read().splitlines() if not l.startswith("#")] == portprofile.surface_lines(prof)


def test_board_definitions_match_upstream_layout():
    # Every sdkconfig fragment a board lists from the port's boards/ exists in
    # MicroPython v1.28.0 (boards/sdkconfig.usb is gone: an S3 build failed),
    # and every MICROPY_ option a board header sets is one the port reads.
    for chip, board in portprofile.BOARDS.items():
        prof = portprofile.load(chip)
        d = os.path.join(portprofile.BOARDS_DIR, board)
        cmake = open(os.path.join(d, "mpconfigboard.cmake")).read()
        for frag in re.findall(r"\bboards/(sdkconfig\.\w+)", cmake):
            assert "ports/esp32/boards/" + frag in prof["upstream_sdkconfig_fragments"], (board, frag)
        header = open(os.path.join(d, "mpconfigboard.h")).read()
        assert "MICROPY_ESPNOW" not in header.replace("MICROPY_PY_ESPNOW", "")


@pytest.mark.skipif(not os.path.isdir(UPSTREAM), reason="no MicroPython source (MICROPY_DIR)")
@pytest.mark.parametrize("chip", CHIPS)
def test_regenerating_gives_the_checked_in_profile(chip):
    assert portprofile.generate(portprofile.Source(UPSTREAM), chip) == portprofile.load(chip)


@pytest.mark.parametrize("chip", CHIPS)
def test_agent_reading_works_on_each_chip(chip, tmp_path):
    # The agent's own reading code, with the stand-in esp32 module as the chip
    # has it (the ESP32 has raw_temperature in Fahrenheit only).
    code = ("import sys\nsys.path.append(%r)\nimport agent, esp32\n"
            "print('T', agent._temperature(), hasattr(esp32, 'mcu_temperature'), hasattr(esp32, 'raw_temperature'))"
            % os.path.join(mphelp.ROOT, "app"))
    r, line = _run_on_chip(tmp_path, chip, code, "T", heap_kib=1024)
    line = line.split()
    assert 30 <= float(line[1]) <= 50  # the simulated die: about 40 C on either chip
    assert line[2:] == (["False", "True"] if chip == "esp32" else ["True", "False"])


def _run_on_chip(tmp_path, chip, code, tag, heap_kib, env=None):
    """Run code on a fresh simulated `chip`; (result, its last line starting with tag)."""
    dev = tmp_path / "dev"
    sim_device.create(str(dev))
    r = mphelp.run_mp(code, devdir=dev, heap_kib=heap_kib, env=dict(env or {}, ESPSIM_CHIP=chip), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r, [l for l in r.stdout.splitlines() if l.startswith(tag + " ")][-1]


def test_nvs_handles_do_not_leak_over_a_day():
    n, ns, err = soak_board.nvs_handles(1, timeout=300)
    assert err is None and n == ns, (n, ns, err)


@pytest.mark.parametrize("chip", CHIPS)
def test_virtual_board_offers_only_the_boards_surface(chip, tmp_path):
    # After start-up the device code sees the board's modules: what the unix
    # port has beyond them (os.getenv, vfs.VfsPosix) is absent, as is what the
    # chip lacks; what the board has works.
    code = ("exec(open(%r).read())\nimport os, vfs, esp32, machine, time\n"
            "print('S', hasattr(os, 'getenv'), hasattr(os, 'system'), hasattr(vfs, 'VfsPosix'),"
            " hasattr(esp32, 'mcu_temperature'), hasattr(esp32, 'raw_temperature'), len(os.urandom(4)),"
            " hasattr(vfs, 'VfsLfs2'), time.gmtime(0)[0], hasattr(machine.RTC(), 'offset_s'))\n"
            "try:\n    os.getenv('HOME')\nexcept AttributeError as e:\n    print('E', e)\n" % mphelp.START)
    r, s = _run_on_chip(tmp_path, chip, code, "S", 512, {"ESPSIM_RAW_REPL": "1", "ESPSIM_FIRMWARE": mphelp.ROOT})
    s = s.split()[1:]
    s3 = chip == "esp32s3"
    assert s == ["False", "False", "False", str(s3), str(not s3), "4", "True", "2000", "False"], s
    assert "E the board's os has no getenv" in r.stdout


@pytest.mark.parametrize("fail", [False, True])
def test_set_boot_works_behind_the_boards_surface(tmp_path, fail):
    # A firmware update's esp32.Partition.set_boot() on a started virtual board,
    # whose os (the board's) has no getenv: it switches, or with
    # ESPSIM_SET_BOOT_FAIL refuses as esp_ota_set_boot_partition would
    # (OSError), never AttributeError from the stand-in itself.
    code = ("exec(open(%r).read())\nimport esp32\n"
            "p = esp32.Partition(esp32.Partition.RUNNING).get_next_update()\n"
            "p.writeblocks(0, b'\\xe9' + bytes(4095))\n"  # an image's magic byte: worth verifying
            "try:\n    p.set_boot()\n    print('B set', p.info()[4])\nexcept OSError as e:\n    print('B', e)\n"
            % mphelp.START)
    env = {"ESPSIM_RAW_REPL": "1", "ESPSIM_FIRMWARE": mphelp.ROOT}
    if fail:
        env["ESPSIM_SET_BOOT_FAIL"] = "1"
    r, b = _run_on_chip(tmp_path, "esp32", code, "B", 512, env)
    assert b == ("B (-5379, 'ESP_ERR_OTA_VALIDATE_FAILED')" if fail else "B set ota_1"), r.stdout

def test_partitions_holding_images_state_and_files_are_encrypted(tmp_path):
    from ictl import ToolError, firmware

    t = firmware.partition_table()
    assert {p.name for p in t if p.encrypted} >= {"app_a", "app_b", "bootstate", "vfs"}
    assert not t.find_by_name("nvs").encrypted  # NVS encryption protects it; flash encryption must not
    bad = tmp_path / "table.csv"
    with open(firmware.TABLE) as f:
        bad.write_text(f.read().replace("0x2000,   encrypted", "0x2000"))
    with pytest.raises(ToolError, match="bootstate must carry the `encrypted` flag"):
        firmware.partition_table(str(bad))


def test_encrypted_partition_reads_erased_flash_as_noise(tmp_path):
    # With flash encryption on, software reads an encrypted partition through
    # the decryption: erased flash is not 0xFF there, and writes go in aligned
    # 16-byte blocks. Unencrypted partitions (nvs) read 0xFF as before.
    dev = tmp_path / "dev"
    sim_device.create(str(dev), flash_encryption=False)
    code = ("import esp32\nP = esp32.Partition\nfor l in ('app_a', 'bootstate', 'vfs', 'nvs'):\n"
            "    p = P.find(1, label=l)[0]\n    b = bytearray(64)\n    p.readblocks(1, b)\n"
            "    print('R', l, p.info()[5], b == b'\\xff' * 64)\n"
            "p = P.find(1, label='app_b')[0]\np.writeblocks(0, b'x' * 16, 0)\nb = bytearray(32)\np.readblocks(0, b)\n"
            "print('W', b[:16] == b'x' * 16, b[16:] == b'\\xff' * 16)\n"
            "p.writeblocks(0, b'\\xff' * 16, 32)\nb = bytearray(16)\np.readblocks(0, b, 32)\n"
            "print('F', b == b'\\xff' * 16)\n"
            "for off, n in ((8, 16), (16, 5)):\n    try:\n        p.writeblocks(0, b'y' * n, off)\n        print('A ok')\n"
            "    except OSError as e:\n        print('A', e.args[0])\n")
    plain = mphelp.run_mp(code, devdir=dev)
    assert plain.returncode == 0, plain.stderr
    assert "R app_a False True" in plain.stdout and "W True True" in plain.stdout
    # The same on a production board (a fresh one: flash.bin holds ciphertext
    # there, and the development board's plaintext would read as noise).
    dev = tmp_path / "prod"
    sim_device.create(str(dev), flash_encryption=True)
    enc = mphelp.run_mp(code, devdir=dev)
    assert enc.returncode == 0, enc.stderr
    out = enc.stdout.splitlines()
    for l in ("app_a", "bootstate", "vfs"):
        assert "R %s True False" % l in out, out
    # A block written with 0xFF is programmed: it reads back as written.
    assert "R nvs False True" in out and "W True False" in out and "F True" in out
    assert out[-2:] == ["A -258", "A -260"], out


def test_littlefs_on_the_encrypted_filesystem_partition(tmp_path):
    # MicroPython's VfsLfs2 on the flash-encrypted vfs partition: littlefs
    # programs 32-byte aligned blocks and assumes nothing of erased flash, so
    # files (0xFF runs included) survive a remount in a new process.
    dev = tmp_path / "dev"
    sim_device.create(str(dev), flash_encryption=True)
    mount = ("import esp32, vfs\nb = esp32.Partition.find(1, label='vfs')[0]\nprint('ENC', b.info()[5])\n"
             "try:\n    fs = vfs.VfsLfs2(b)\nexcept OSError:\n    vfs.VfsLfs2.mkfs(b)\n    fs = vfs.VfsLfs2(b)\n"
             "vfs.mount(fs, '/mnt')\n")
    data = "(b'\\xff' * 4096 + bytes(range(256)) * 3 + b'\\xff' * 77)"
    r = mphelp.run_mp(mount + "with open('/mnt/f', 'wb') as f:\n    f.write(%s)\nprint('W')\n" % data, devdir=dev)
    assert "ENC True" in r.stdout and "W" in r.stdout, r.stdout + r.stderr
    r = mphelp.run_mp(mount + "print('R', open('/mnt/f', 'rb').read() == %s)\n" % data, devdir=dev)
    assert "R True" in r.stdout, r.stdout + r.stderr


def test_decommission_erases_every_sector_of_the_nvs_partition(tmp_path):
    # Real NVS keeps marked-erased entries on flash until their page is
    # reused: decommissioning erases the partition's sectors themselves, then
    # resets (the IDF's NVS state in RAM is stale after that).
    import json

    dev = tmp_path / "dev"
    sim_device.create(str(dev))
    code = ("from ironclad.keystore import KeyStore\nimport esp32\nks = KeyStore()\n"
            "ks.put('device_key', b'k' * 100)\nks.put('provisioned', b'yes')\n"
            "o = esp32.NVS('other')\no.set_i32('keep', 7)\no.commit()\nks.decommission()\nprint('RETURNED')\n")
    r = mphelp.run_mp(code, devdir=dev, heap_kib=128)
    assert r.returncode == mphelp.SIGKILL_RC and "RETURNED" not in r.stdout, r.stdout + r.stderr
    nvs = [p for p in json.loads((dev / "device.json").read_text())["partitions"] if p["label"] == "nvs"][0]
    with open(dev / "flash.bin", "rb") as f:
        f.seek(nvs["offset"])
        assert f.read(nvs["size"]) == b"\xff" * nvs["size"]
    r = mphelp.run_mp("from ironclad.keystore import KeyStore\nprint('N', KeyStore().names())", devdir=dev,
                      heap_kib=128)
    assert "N []" in r.stdout, r.stdout + r.stderr


def test_virtual_board_can_start_near_the_tick_wrap(tmp_path):
    # ESPSIM_TICKS_MS=wrap-S: ticks_ms starts S seconds before its 2**30 wrap.
    code = "import time\nt0 = time.ticks_ms()\ntime.sleep_ms(1200)\nprint('W', t0, time.ticks_ms())"
    r, line = _run_on_chip(tmp_path, "esp32", code, "W", 112, {"ESPSIM_TICKS_MS": "wrap-1"})
    t0, t1 = (int(v) for v in line.split()[1:])
    assert (1 << 30) - 1000 <= t0 < 1 << 30 and t1 < 1000, (t0, t1)


def test_device_remembers_its_chip(tmp_path):
    dev = tmp_path / "s3"
    sim_device.create(str(dev), chip="esp32s3")
    r = mphelp.run_mp("import esp32\nprint('C', hasattr(esp32, 'mcu_temperature'), hasattr(esp32, 'raw_temperature'))",
                      devdir=dev)
    assert "C True False" in r.stdout, r.stdout + r.stderr
