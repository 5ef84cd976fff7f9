# The ESP32 stand-ins on the unix port behave like the chip: NOR flash,
# partition bounds, the esp32.Partition and esp32.NVS surfaces.
import esp32
import machine

P = esp32.Partition
# The stand-ins compiled from source (they now hold to the port profile and
# model flash encryption): 96 KiB leaves no 4 KiB block for a sector buffer.
HEAP_KIB = 160  # passed at 112 KiB (2026-12-06, 8 KiB steps); the rest is margin: how fragmented compiling from source leaves the heap varies between checkouts
# A development board (flash encryption off): these tests are about the NOR
# flash model under it (erase to 0xFF, writes AND, any alignment), which an
# encrypted partition hides behind XTS-AES. The encrypted partitions' model
# is tested in tests/host/test_standins_faults.py and test_port_profile.py.
FLASH_ENCRYPTION = False


def _app_a():
    return P.find(P.TYPE_DATA, label="app_a")[0]


def test_write_over_unerased_data_ands():
    p = _app_a()
    p.writeblocks(0, b"\x0f\xf0\xff\x00")  # 3-arg form: erase, then write
    p.writeblocks(0, b"\xff\xff\x3c\xff", 0)  # with offset: no erase
    b = bytearray(4)
    p.readblocks(0, b)
    assert b == b"\x0f\xf0\x3c\x00", b


def test_erase_sets_sector_to_ff():
    p = _app_a()
    p.writeblocks(1, b"\x00" * 4096)
    p.ioctl(6, 1)
    b = bytearray(4096)
    p.readblocks(1, b)
    assert b == b"\xff" * 4096
    # the neighbouring sector is untouched
    p.writeblocks(2, b"\x00" * 16)
    p.ioctl(6, 1)
    p.readblocks(2, b)
    assert b[:16] == b"\x00" * 16


def test_three_arg_writeblocks_erases_first():
    p = _app_a()
    p.writeblocks(3, b"\x00" * 8)
    p.writeblocks(3, b"\xa5" * 8)
    b = bytearray(8)
    p.readblocks(3, b)
    assert b == b"\xa5" * 8


def test_read_and_write_with_offset():
    p = _app_a()
    p.writeblocks(4, b"\xff" * 4096)
    p.writeblocks(4, b"hello", 100)
    b = bytearray(5)
    p.readblocks(4, b, 100)
    assert b == b"hello"


def _expect_invalid_size(fn):
    try:
        fn()
    except OSError as e:
        assert e.args[0] == -260, e
        return
    raise AssertionError("no error past the end of the partition")


def test_bounds():
    p = _app_a()
    n = p.ioctl(4, 0)
    assert n * p.ioctl(5, 0) == p.info()[3]
    _expect_invalid_size(lambda: p.readblocks(n, bytearray(1)))
    _expect_invalid_size(lambda: p.readblocks(n - 1, bytearray(2), 4095))
    _expect_invalid_size(lambda: p.writeblocks(n - 1, b"xx", 4095))
    _expect_invalid_size(lambda: p.writeblocks(n, b"x"))
    _expect_invalid_size(lambda: p.ioctl(6, n))
    # the last byte is still reachable
    p.writeblocks(n - 1, b"z", 4095)


def test_find_and_info():
    apps = P.find(P.TYPE_APP)
    assert [a.info()[4] for a in apps] == ["ota_0", "ota_1"]
    vfs = P.find(P.TYPE_DATA, label="vfs")[0]
    t, st, addr, size, label, enc = vfs.info()
    assert (t, st, label, enc) == (1, 0x81, "vfs", False)
    assert P.find(P.TYPE_DATA, label="nope") == []


def test_running_and_next_update():
    run = P(P.RUNNING)
    assert run.info()[4] == "ota_0"
    assert run.get_next_update().info()[4] == "ota_1"
    assert P(P.BOOT).info()[4] == "ota_0"


def test_set_boot_rejects_an_empty_slot():
    nxt = P(P.RUNNING).get_next_update()
    try:
        nxt.set_boot()
    except OSError as e:
        assert e.args[0] == -5379
    else:
        raise AssertionError("set_boot accepted a slot with no app image")
    assert P(P.BOOT).info()[4] == "ota_0"


def test_set_boot_on_valid_image():
    nxt = P(P.RUNNING).get_next_update()
    nxt.writeblocks(0, b"\xe9" + b"\x00" * 31)
    nxt.set_boot()
    assert P(P.BOOT).info()[4] == "ota_1"
    assert P(P.RUNNING).info()[4] == "ota_0"  # until the next boot


def test_nvs_api():
    n = esp32.NVS("ironclad")
    n.set_i32("count", -7)
    n.set_blob("blob", b"\x00\x01secret")
    n.commit()
    assert n.get_i32("count") == -7
    buf = bytearray(32)
    assert n.get_blob("blob", buf) == 8 and buf[:8] == b"\x00\x01secret"
    try:
        n.get_blob("blob", bytearray(4))
    except OSError as e:
        assert e.args[0] == -4364
    else:
        raise AssertionError("short buffer accepted")
    n.erase_key("count")
    n.commit()
    try:
        n.get_i32("count")
    except OSError as e:
        assert e.args[0] == -4354
    else:
        raise AssertionError("erased key still there")
    # namespaces are separate
    try:
        esp32.NVS("other").get_blob("blob", buf)
    except OSError as e:
        assert e.args[0] == -4354
    else:
        raise AssertionError("namespace leak")


def test_nvs_survives_many_commits():
    # More commits than one half holds: compaction must keep every live key.
    n = esp32.NVS("ironclad")
    for i in range(400):
        n.set_i32("k%d" % (i % 5), i)
        n.set_blob("b", b"x" * 40)
        n.commit()
    assert [n.get_i32("k%d" % j) for j in range(5)] == [395, 396, 397, 398, 399]


def test_machine():
    uid = machine.unique_id()
    assert isinstance(uid, bytes) and len(uid) == 6
    assert machine.reset_cause() == machine.PWRON_RESET


def test_the_chip_has_what_its_profile_says():
    # firmware/profile/esp32.surface (the default chip): the original ESP32
    # has raw_temperature only (ports/esp32/modesp32.c), and no stand-in
    # helper the board lacks shows through.
    assert hasattr(esp32, "raw_temperature") and not hasattr(esp32, "mcu_temperature")
    assert isinstance(esp32.raw_temperature(), int)
    for name in ("set_i32", "get_i32", "set_blob", "get_blob", "erase_key", "commit"):
        assert hasattr(esp32.NVS, name), name
    assert not hasattr(esp32.NVS, "close")  # upstream has none: handles are never given back


def test_nvs_handles_are_counted_and_never_given_back():
    from ironclad import nvs

    n0 = esp32._nvs_handles()
    for _ in range(10):
        esp32.NVS("ic_test")
    assert esp32._nvs_handles() == n0 + 10
    a = nvs.open("ic_once")
    for _ in range(100):
        assert nvs.open("ic_once") is a
    assert esp32._nvs_handles() == n0 + 11
    # Finite, as the IDF heap is: past the stand-in's limit nvs_open fails.
    try:
        while True:
            esp32.NVS("ic_test")
    except OSError as e:
        assert e.args[0] == 0x101, e  # ESP_ERR_NO_MEM
    assert esp32._nvs_handles() == esp32._MAX_HANDLES
    assert nvs.open("ic_once") is a  # the one already open still works
    a.set_i32("k", 5)
    a.commit()
    assert a.get_i32("k") == 5
