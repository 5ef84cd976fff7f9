"""Where the partition table sits (CONFIG_PARTITION_TABLE_OFFSET) and what that
means for the flash: no partition below the table's sector, the table flashed
at the offset the sdkconfig gives the bootloader, room before it for a Secure
Boot V2 bootloader (ESP-IDF "Bootloader Size (with enabled secure features)":
48 KB on the ESP32 plus a 4 KB signature sector), and the simulated device's
bootloader reading the binary table from its flash at that offset. Each rule
is also shown failing on a broken copy of the configuration."""
import os
import re
import shutil

import pytest
from esp_idf_defs import partitions as gen

from mphelp import boot, run_mp
from ictl import ToolError, firmware
from ictl.sim import device as sim_device

BOARDS = sorted(firmware.BOARDS)
OFFSET_LINE = re.compile(r"^CONFIG_PARTITION_TABLE_OFFSET=(\S+)$", re.M)
LIST = ("import esp32\nfor t in (0, 1):\n for p in esp32.Partition.find(t):\n"
        "  i = p.info()\n  print(i[4], i[2], i[3])")


def _offset(board):
    return int(firmware.effective(board)["CONFIG_PARTITION_TABLE_OFFSET"], 16)


def _rows(table):
    return sorted((p.name, p.type, p.subtype, p.offset, p.size, p.get_flags_list()) for p in table)


def _with_offset(tmp_path, monkeypatch, offset):
    """A copy of firmware/ whose sdkconfig puts the table at `offset`, in use."""
    fw = tmp_path / "firmware"
    shutil.copytree(firmware.FW, fw, ignore=shutil.ignore_patterns("unix"))
    cfg = fw / "sdkconfig.ironclad"
    text = cfg.read_text()
    assert len(OFFSET_LINE.findall(text)) == 1
    cfg.write_text(OFFSET_LINE.sub("CONFIG_PARTITION_TABLE_OFFSET=0x%X" % offset, text))
    monkeypatch.setattr(firmware, "FW", str(fw))


def _build_output(tmp_path, monkeypatch, board, table_bin):
    """Firmware files as `ictl firmware build` leaves them, with this partition-table.bin."""
    monkeypatch.setattr(firmware, "BUILD", str(tmp_path / "build"))
    out = firmware.out_dir(board, "production")
    os.makedirs(out)
    for name in ("bootloader-signed.bin", "micropython-signed.bin"):
        open(os.path.join(out, name), "wb").close()
    with open(os.path.join(out, "partition-table.bin"), "wb") as f:
        f.write(table_bin)
    return out


@pytest.mark.parametrize("board", BOARDS)
def test_no_partition_below_the_table_sector(board, tmp_path, monkeypatch):
    t = firmware.partition_table(board=board)
    assert min(p.offset for p in t) >= _offset(board) + 0x1000
    # The table one sector higher would cover the first partition (nvs): refused.
    _with_offset(tmp_path, monkeypatch, _offset(board) + 0x1000)
    with pytest.raises(ToolError, match="partition table occupies the whole sector"):
        firmware.partition_table(board=board)


@pytest.mark.parametrize("board, offset", [(b, None) for b in BOARDS] + [("IRONCLAD_ESP32_S3", 0xD000)])
def test_table_is_flashed_at_the_sdkconfig_offset(board, offset, tmp_path, monkeypatch):
    if offset:  # another valid offset (the S3's bootloader starts at 0x0): the flash follows it
        _with_offset(tmp_path, monkeypatch, offset)
    out = _build_output(tmp_path, monkeypatch, board, firmware.partition_table(board=board).to_binary())
    _, write = firmware.flash_args(board, "production", "/dev/ttyUSB0")
    at = write.index("4MB") + 1
    where = {path: int(addr, 16) for addr, path in zip(write[at::2], write[at + 1::2])}
    assert where[os.path.join(out, "partition-table.bin")] == _offset(board) == (offset or 0xE000)
    assert where[os.path.join(out, "bootloader-signed.bin")] == firmware.BOARDS[board]["bootloader"]


@pytest.mark.parametrize("board", BOARDS)
def test_bootloader_room_holds_a_secure_boot_v2_bootloader(board, tmp_path, monkeypatch):
    start = firmware.BOARDS[board]["bootloader"]
    assert _offset(board) - start >= 0xC000 + 0x1000  # 48 KB bootloader + signature sector
    assert firmware.layout_problems(board) == []
    # A sector short: the check and everything built on the table refuse it.
    _with_offset(tmp_path, monkeypatch, start + 0xC000)
    probs = firmware.layout_problems(board)
    assert len(probs) == 1 and "needs 0xd000" in probs[0] and "raise it to 0x%x" % (start + 0xD000) in probs[0]
    with pytest.raises(ToolError, match="leaves 0xc000 bytes for the bootloader"):
        firmware.partition_table(board=board)


def test_table_offset_is_a_whole_sector(tmp_path, monkeypatch):
    _with_offset(tmp_path, monkeypatch, 0xE800)
    assert any("not a multiple of 0x1000" in p for p in firmware.layout_problems("IRONCLAD_ESP32"))


def test_flash_refuses_a_table_built_before_the_move(tmp_path, monkeypatch):
    # The table as it was with the default offset 0x8000: nvs at 0x9000, which
    # is now the bootloader's room. Flashing it at 0xE000 would brick the board.
    with open(firmware.TABLE) as f:
        text = f.read()
    for name, old in (("nvs", "0x9000"), ("otadata", "0xf000"), ("nvs_keys", "0x11000")):
        text = re.sub(r"^(%s,[^,]*,[^,]*,\s*)0x[0-9a-f]+" % name, r"\g<1>" + old, text, flags=re.M)
    old_bin = gen.PartitionTable.from_csv(text, partition_table_offset=0x8000).to_binary()
    assert gen.PartitionTable.from_binary(old_bin)["nvs"].offset == 0x9000
    _build_output(tmp_path, monkeypatch, "IRONCLAD_ESP32", old_bin)
    with pytest.raises(ToolError, match="built from another partition table"):
        firmware.flash_args("IRONCLAD_ESP32", "production", "/dev/ttyUSB0")
    with open(os.path.join(firmware.out_dir("IRONCLAD_ESP32", "production"), "partition-table.bin"), "wb") as f:
        f.write(b"\x00" * 64)
    with pytest.raises(ToolError, match="is not a partition table"):
        firmware.flash_args("IRONCLAD_ESP32", "production", "/dev/ttyUSB0")


def test_simulated_device_has_the_table_at_the_offset(tmp_path):
    d = tmp_path / "dev"
    cfg = sim_device.create(str(d))
    offset = _offset("IRONCLAD_ESP32")
    assert cfg["partition_table_offset"] == offset
    flash = (d / "flash.bin").read_bytes()
    assert _rows(gen.PartitionTable.from_binary(flash[offset:offset + gen.MAX_PARTITION_LENGTH])) == \
        _rows(firmware.partition_table())
    assert flash[:offset] == b"\xff" * offset  # the bootloader's room: nothing of ours lands there


def test_simulated_bootloader_reads_the_table_from_flash(tmp_path):
    d = tmp_path / "dev"
    offset = sim_device.create(str(d))["partition_table_offset"]
    seen = sorted(tuple(line.split()) for line in run_mp(LIST, d).stdout.splitlines())
    assert seen == sorted((p.name, str(p.offset), str(p.size)) for p in firmware.partition_table())
    # The device goes by the table in its flash, not by device.json (which the
    # host tools read): a table rewritten in flash is what it sees.
    with open(firmware.TABLE) as f:
        smaller = f.read().replace("0x3b2000, 0x4e000", "0x3b2000, 0x4d000")
    with open(d / "flash.bin", "r+b") as f:
        f.seek(offset)
        f.write(gen.PartitionTable.from_csv(smaller, partition_table_offset=offset).to_binary())
    assert "vfs 3874816 315392" in run_mp(LIST, d).stdout
    # A corrupt or erased table stops the boot with one line, as the bootloader halts.
    with open(d / "flash.bin", "r+b") as f:
        f.seek(offset + 32 + 12)  # the second entry's label
        f.write(b"X")
    r = boot(d)
    assert r.returncode != 0 and "no valid partition table at 0xe000 (incorrect MD5 checksum)" in r.stdout
    with open(d / "flash.bin", "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 0x1000)
    r = boot(d)
    assert r.returncode != 0 and "no valid partition table at 0xe000 (no partition table)" in r.stdout
    assert len((r.stdout + r.stderr).strip().splitlines()) == 1
