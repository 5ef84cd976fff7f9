"""The stand-ins across processes: persistence, resets, the simulated
bootloader's rollback, and fault injection cutting and tearing exactly where asked."""
import json
import os

import pytest

from mphelp import SIGKILL_RC, boot, run_mp
from ictl.sim import device as sim_device
from ictl.sim import faults


@pytest.fixture
def dev(tmp_path):
    # A development board: flash.bin shows NOR semantics byte for byte
    # (test_torn_encrypted_block: the same under flash encryption).
    d = tmp_path / "dev"
    sim_device.create(str(d), flash_encryption=False)
    return d


def flash_at(dev, label, off, n):
    cfg = json.load(open(dev / "device.json"))
    p = next(p for p in cfg["partitions"] if p["label"] == label)
    with open(dev / "flash.bin", "rb") as f:
        f.seek(p["offset"] + off)
        return f.read(n)


WRITES = """
import esp32
p = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="app_a")[0]
p.ioctl(6, 0)                      # op 1: erase sector 0
p.writeblocks(0, b"A" * 64, 0)     # op 2
p.writeblocks(0, b"B" * 64, 64)    # op 3
p.writeblocks(0, b"C" * 64, 128)   # op 4
print("done")
"""


def test_no_fault_runs_all_ops(dev):
    r = run_mp(WRITES, dev)
    assert r.returncode == 0 and "done" in r.stdout, r.stderr
    assert flash_at(dev, "app_a", 0, 192) == b"A" * 64 + b"B" * 64 + b"C" * 64


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_cut_before_operation_n(dev, n):
    # Make the sector dirty first, so "erase did not happen" is visible.
    run_mp("import esp32\nesp32.Partition.find(1, label='app_a')[0].writeblocks(0, b'\\x00' * 192, 0)", dev)
    r = run_mp(WRITES, dev, fault="cut:%d" % n)
    assert r.returncode == SIGKILL_RC and "done" not in r.stdout
    got = flash_at(dev, "app_a", 0, 192)
    if n == 1:
        assert got == b"\x00" * 192  # nothing happened, not even the erase
    else:
        landed = n - 2  # writes that completed before the cut
        want = b"A" * 64 + b"B" * 64 + b"C" * 64
        assert got == want[:64 * landed] + b"\xff" * (192 - 64 * landed)


@pytest.mark.parametrize("k", [0, 1, 17, 63])
def test_tear_operation_n_at_byte_k(dev, k):
    r = run_mp(WRITES, dev, fault="tear:3:%d" % k)
    assert r.returncode == SIGKILL_RC and "done" not in r.stdout
    got = flash_at(dev, "app_a", 64, 64)
    assert got == b"B" * k + b"\xff" * (64 - k)
    assert flash_at(dev, "app_a", 0, 64) == b"A" * 64


READ_A = ("import esp32\np = esp32.Partition.find(1, label='app_a')[0]\nb = bytearray(192)\n"
          "p.readblocks(0, b)\nprint(bytes(b).hex())\n")


@pytest.mark.parametrize("k", [0, 17, 63])
def test_torn_encrypted_block(tmp_path, k):
    # Under flash encryption a 16-byte block whose ciphertext is only partly
    # programmed decrypts to noise as a whole: blocks that landed read as
    # written, the torn one as noise (neither what was written nor 0xFF),
    # the untouched rest as erased. A rewrite without erase is noise too.
    d = tmp_path / "dev"
    sim_device.create(str(d), flash_encryption=True)
    r = run_mp(WRITES, d, fault="tear:3:%d" % k)
    assert r.returncode == SIGKILL_RC and "done" not in r.stdout
    got = bytes.fromhex(run_mp(READ_A, d).stdout.split()[0])
    whole = k // 16 * 16
    assert got[:64 + whole] == b"A" * 64 + b"B" * whole
    torn = got[64 + whole:64 + whole + 16]
    if k % 16:
        assert torn != b"B" * 16 and torn != b"\xff" * 16 and b"\xff" * 4 not in torn, torn
    erased = got[64 + (k + 15) // 16 * 16:]
    assert b"\xff" * 4 not in erased, erased  # erased blocks read as noise, not 0xFF
    # The same block rewritten with other data without an erase: noise.
    r = run_mp("import esp32\np = esp32.Partition.find(1, label='app_a')[0]\np.writeblocks(0, b'A' * 16, 0)\n"
               "p.writeblocks(0, b'Z' * 16, 16)\n" + READ_A, d)
    got = bytes.fromhex(r.stdout.split()[0])
    assert got[:16] == b"A" * 16 and got[16:32] not in (b"Z" * 16, b"A" * 16), got[:32]


def test_torn_erase(dev):
    run_mp("import esp32\nesp32.Partition.find(1, label='app_a')[0].writeblocks(0, b'\\x00' * 4096, 0)", dev)
    r = run_mp(WRITES, dev, fault="tear:1:100")
    assert r.returncode == SIGKILL_RC
    assert flash_at(dev, "app_a", 0, 4096) == b"\xff" * 100 + b"\x00" * 3996


def test_state_persists_across_reboot(dev):
    r = run_mp("import esp32\nn=esp32.NVS('t'); n.set_i32('x', 42); n.commit()\n"
               "esp32.Partition.find(1, label='app_b')[0].writeblocks(2, b'persist')", dev)
    assert r.returncode == 0, r.stderr
    r = run_mp("import esp32\nprint(esp32.NVS('t').get_i32('x'))\n"
               "b=bytearray(7); esp32.Partition.find(1, label='app_b')[0].readblocks(2, b); print(bytes(b))", dev)
    assert r.stdout.split() == ["42", "b'persist'"], r.stderr


def test_uncommitted_nvs_is_lost_on_reset(dev):
    r = run_mp("import esp32, machine\nn=esp32.NVS('t'); n.set_i32('a', 1); n.commit(); n.set_i32('a', 2)\n"
               "machine.reset()\nprint('after reset')", dev)
    assert r.returncode == SIGKILL_RC and "after reset" not in r.stdout
    r = run_mp("import esp32, machine\nprint(esp32.NVS('t').get_i32('a'), machine.reset_cause() == machine.HARD_RESET)", dev)
    assert r.stdout.split() == ["1", "True"], r.stderr
    r = run_mp("import machine\nprint(machine.reset_cause() == machine.PWRON_RESET)", dev)
    assert r.stdout.split() == ["True"]


def test_nvs_power_cut_sweep():
    """Cut power before every flash operation of 40 commits (compaction
    included), and tear each one: the two keys always come from the same
    committed batch. `make soak` runs the same sweep at full size."""
    points, failures = faults.nvs_sweep(40)
    assert points > 80
    assert not failures, failures[:3]


def test_bootloader_trial_and_rollback(dev):
    arm = ("import esp32\nP=esp32.Partition\nn=P(P.RUNNING).get_next_update()\n"
           "n.writeblocks(0, b'\\xe9' + b'\\x00'*31)\nn.set_boot()")
    running = "import esp32\nprint(esp32.Partition(esp32.Partition.RUNNING).info()[4])"
    assert run_mp(arm, dev).returncode == 0
    assert run_mp(running, dev).stdout.strip() == "ota_1"  # trial boot
    assert run_mp(running, dev).stdout.strip() == "ota_0"  # not confirmed: rolled back
    assert run_mp(arm, dev).returncode == 0
    r = run_mp(running + "\nesp32.Partition.mark_app_valid_cancel_rollback()", dev)
    assert r.stdout.strip() == "ota_1"
    assert run_mp(running, dev).stdout.strip() == "ota_1"  # confirmed: stays


def _one_line_error(r):
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode != 0 and len(out) == 1, out
    assert "Traceback" not in out[0]
    return out[0]


def test_missing_device_dir_is_one_line(tmp_path):
    line = _one_line_error(boot(tmp_path / "nothing"))
    assert "missing or corrupt" in line and "ictl device create" in line


def test_corrupt_device_dir_is_one_line(dev):
    (dev / "device.json").write_text("{not json")
    assert "missing or corrupt" in _one_line_error(boot(dev))


def test_truncated_flash_is_one_line(dev):
    with open(dev / "flash.bin", "r+b") as f:
        f.truncate(1000)
    assert "flash.bin is not" in _one_line_error(boot(dev))


HEAP_COST = """
import gc
import espsim, esp32
gc.collect()
a0 = gc.mem_alloc()
fl = espsim.flash()
gc.collect()
print('STATE', gc.mem_alloc() - a0)
p = esp32.Partition.find(1, label='app_b')[0]
buf = bytearray(4096)
mv = memoryview(buf)
data = bytes(range(256)) * 16
def garbage(f):
    gc.collect()
    gc.disable()
    b = gc.mem_alloc()
    for i in range(8):
        f(i)
    g = gc.mem_alloc() - b
    gc.enable()
    return g // 8
def write(i):
    p.ioctl(6, i)
    p.writeblocks(i, data, 0)
print('WRITE', garbage(write))
print('READ', garbage(lambda i: p.readblocks(i, buf)))
print('READMV', garbage(lambda i: p.readblocks(i, mv, 16)))
print('OK', buf[:16] == data[16:32])
print('SMALL', garbage(lambda i: p.readblocks(i, memoryview(buf)[:32], 7)))
"""


def test_flash_encryption_costs_the_heap_little(tmp_path):
    # On a chip the flash cache decrypts and costs the app's heap nothing; the
    # stand-in shares the heap on the unix port, so it is held to little: its
    # state made once at start-up (before start.py sets the app's heap
    # apart), no allocation on a read (littlefs reads every block) and next
    # to none on a write (docs/partitions.md has the figures).
    out = {}
    for enc in (False, True):
        d = tmp_path / ("enc" if enc else "dev")
        sim_device.create(str(d), flash_encryption=enc)
        r = run_mp(HEAP_COST, d, heap_kib=256)
        assert r.returncode == 0 and "OK True" in r.stdout, r.stdout + r.stderr
        out[enc] = dict(l.split() for l in r.stdout.splitlines())
    on, off = out[True], out[False]
    assert int(on["STATE"]) - int(off["STATE"]) <= 2048, (on, off)
    assert on["READ"] == on["READMV"] == "0" and int(on["SMALL"]) <= int(off["SMALL"]), on
    assert int(on["WRITE"]) <= 64, on  # per erase and 4 KiB write; the development board's: off["WRITE"]
