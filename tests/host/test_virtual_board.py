"""The real mpremote against the virtual board, as against an ESP32 on USB."""
import os
import select
import subprocess
import sys
import time

import pytest

from mphelp import MPREMOTE, ROOT
from ictl.sim import board as vboard
from ictl.sim import device as sim_device


def mpremote(port, *args, timeout=30):
    r = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


@pytest.fixture
def board(tmp_path):
    d = tmp_path / "dev"
    sim_device.create(str(d))
    with vboard.VirtualBoard(str(d)) as b:
        yield b


def test_copy_list_run_and_soft_reset(board, tmp_path):
    src = tmp_path / "hello.py"
    src.write_text("print('hello from', __name__)\n")
    mpremote(board.port, "cp", str(src), ":hello.py")
    assert "hello.py" in mpremote(board.port, "ls", "/")
    assert "hello from __main__" in mpremote(board.port, "run", str(src))
    out = mpremote(board.port, "exec", "import os; print(sorted(os.listdir('/')))")
    assert "'hello.py'" in out
    boots = board.boots
    mpremote(board.port, "soft-reset")
    assert board.boots > boots  # a new device process on the same state
    # with and without resume, the file is still there after the reset
    assert "hello.py" in mpremote(board.port, "resume", "ls", "/")
    assert "hello.py" in mpremote(board.port, "ls", "/")


def test_filesystem_is_littlefs_on_the_vfs_partition(board):
    out = mpremote(board.port, "exec",
                   "import os\nf=open('/big.bin','wb'); f.write(b'\\x5a'*5000); f.close()\nprint(os.statvfs('/')[0])")
    assert out.split()[-1] == "4096"
    # The bytes really live in the vfs partition of the simulated flash: as
    # the board reads it; on flash.bin itself they are ciphertext (the board
    # is flash-encrypted, as a production board).
    cfg = sim_device.load(board.devdir)
    vfs = next(p for p in cfg["partitions"] if p["label"] == "vfs")
    data = sim_device.read_flash(board.devdir, vfs["offset"], vfs["size"])
    assert b"\x5a" * 4096 in data and b"littlefs" in data
    with open(os.path.join(board.devdir, "flash.bin"), "rb") as f:
        f.seek(vfs["offset"])
        raw = f.read(vfs["size"])
    assert cfg["efuse"]["flash_encryption"] and b"\x5a" * 16 not in raw and b"littlefs" not in raw


def test_state_survives_reset_and_board_restart(tmp_path):
    d = tmp_path / "dev"
    sim_device.create(str(d))
    with vboard.VirtualBoard(str(d)) as b:
        mpremote(b.port, "exec", "with open('/keep.txt','w') as f: f.write('kept')")
        resets = b.resets
        # `mpremote reset` runs machine.reset() 100 ms after it returns
        # (exec --no-follow): the device process ends and the board boots
        # again. A command sent before that would interrupt the sleep.
        mpremote(b.port, "reset")
        b.wait_reset(resets)
        # esp_restart() reads back as HARD_RESET (ESP_RST_SW in upstream
        # ports/esp32/modmachine.c); `resume` keeps mpremote from soft-resetting first.
        out = mpremote(b.port, "resume", "exec", "import machine; print(open('/keep.txt').read(), machine.reset_cause())")
        assert out.split() == ["kept", str(2)]
        # after a soft reset (mpremote's default before a command) it reads SOFT_RESET
        out = mpremote(b.port, "exec", "import machine; print(machine.reset_cause())")
        assert out.split() == ["5"]
        assert b.resets == resets + 1
    with vboard.VirtualBoard(str(d)) as b:
        assert "kept" in mpremote(b.port, "exec", "print(open('/keep.txt').read())")


def test_ctrl_c_interrupts_a_running_app(board):
    # main.py runs the agent at boot; mpremote's Ctrl-C must still get a prompt.
    out = mpremote(board.port, "exec", "print('at the prompt')")
    assert "at the prompt" in out


def test_ctrl_c_reaches_a_program_that_takes_its_time_to_stop(board):
    # mpremote sends Ctrl-C and at once Ctrl-A for the raw REPL. A program that
    # needs a while to stop (here its `finally`; in the field, a slower build or
    # a loaded host) is still unwinding when the Ctrl-A arrives, and the unix
    # port's REPL flushes the input that came before it (TCSAFLUSH): the relay
    # holds it for the prompt, as a board's UART buffer keeps it. Without that,
    # mpremote never saw a raw REPL (the 32-bit build showed it, docs/unix32.md).
    mpremote(board.port, "exec", "--no-follow",
             "import time\ntry:\n    while True:\n        time.sleep_ms(10)\nfinally:\n    time.sleep_ms(1500)")
    out = mpremote(board.port, "exec", "print('after the finally')")
    assert "after the finally" in out
    # and a program that catches the interrupt and reads on gets the input
    # anyway, once the hold (HOLD_S) is over, as it would from a UART
    mpremote(board.port, "exec", "--no-follow",
             "import sys\nwhile True:\n    try:\n        c = sys.stdin.read(1)\n        print('got', repr(c))\n"
             "        if c == 'q':\n            break\n    except KeyboardInterrupt:\n        print('caught')\n")
    fd = os.open(board.port, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"\x03q")
        deadline = time.monotonic() + vboard.HOLD_S + 10
        seen = b""
        while b"got 'q'" not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                seen += os.read(fd, 256)
    finally:
        os.close(fd)
    assert b"caught" in seen and b"got 'q'" in seen, seen


def test_ctrl_c_at_a_prompt_the_relay_has_not_seen_yet_keeps_the_board(board):
    # The unix port sets SIGINT back to SIG_DFL outside running code, at its
    # REPL prompt too; a board's REPL reads Ctrl-C as a character. Under
    # load the relay may not have read the prompt yet when mpremote's
    # Ctrl-C comes (its tail still shows the boot's last line, as set here):
    # a SIGINT then ended the board, and `ictl provision` hung on its first
    # step. Now the byte goes to the REPL and the same board answers.
    import time

    mpremote(board.port, "exec", "print('up')")  # at its prompt again (raw REPL left)
    time.sleep(0.5)
    boots, resets = board.boots, board.resets
    board.tail = b"ironclad: recovery mode ..."  # the prompt not read yet
    fd = os.open(board.port, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"\x03")
        time.sleep(1)
    finally:
        os.close(fd)
    assert board.proc.poll() is None and (board.boots, board.resets) == (boots, resets)
    assert "still" in mpremote(board.port, "exec", "print('still here')")


def test_ctrl_c_as_the_program_turns_interrupts_off_never_ends_the_board(board, monkeypatch):
    # The unix port sets SIGINT back to SIG_DFL whenever Ctrl-C stops being
    # an interrupt (a script ending, its REPL starting, kbd_intr(-1)); a
    # board's REPL then reads Ctrl-C as a character. The relay decides
    # between a signal and a byte from the process's handler: checked and
    # then sent, the handler could change in between, the SIGINT ended the
    # process, the relay booted a new one and the input held for the old
    # one was lost (CI: `ictl provision` hung on its first step). Here the
    # program turns interrupts off and on without pause and a loaded host's
    # delay is put after every check: the board must never end, and one of
    # the Ctrl-Cs (a user presses again) stops the program.
    checked = vboard.VirtualBoard._running_code

    def slow_check(self):
        r = checked(self)
        time.sleep(0.02)
        return r

    monkeypatch.setattr(vboard.VirtualBoard, "_running_code", slow_check)
    mpremote(board.port, "exec", "print('up')")
    resets = board.resets
    for _ in range(5):
        mpremote(board.port, "exec", "--no-follow",
                 "import micropython\nwhile True:\n    micropython.kbd_intr(-1)\n    micropython.kbd_intr(3)\n")
        fd = os.open(board.port, os.O_RDWR | os.O_NOCTTY)
        seen = b""
        try:
            deadline = time.monotonic() + 30
            while b"KeyboardInterrupt" not in seen and time.monotonic() < deadline:
                os.write(fd, b"\x03")
                if select.select([fd], [], [], 0.1)[0]:
                    seen += os.read(fd, 256)
        finally:
            os.close(fd)
        assert b"KeyboardInterrupt" in seen, seen
        assert board.proc.poll() is None and board.resets == resets, seen  # (each exec soft-resets it)
    assert "still" in mpremote(board.port, "exec", "print('still here')")


def test_ctrl_c_inside_gc_collect_leaves_the_board_at_its_prompt(tmp_path):
    # The unix port raises KeyboardInterrupt from its signal handler; inside
    # gc.collect() that ends the process ("FATAL: uncaught NLR", exit 1),
    # where a board takes the interrupt between bytecodes and shows its
    # prompt. The relay continues that boot at the REPL with the input it
    # held (mpremote's Ctrl-A): the board answers and never reset. Before,
    # it booted again, the held input was lost and mpremote waited for ever.
    d = tmp_path / "dev"
    sim_device.create(str(d))
    with vboard.VirtualBoard(str(d), heap_kib=vboard.PORT_HEAP_KIB) as b:
        for _ in range(3):
            mpremote(b.port, "exec", "--no-follow",
                     "import gc\nkeep = [[i] * 4 for i in range(5000)]\nwhile True:\n    gc.collect()\n")
            time.sleep(0.3)
            assert "here" in mpremote(b.port, "exec", "print('here')")
            assert b.resets == 0
        with open(b.trace_path) as f:
            continued = f.read().count("continued at the REPL")
        with open(b.log_path, "rb") as f:
            fatal = f.read().count(b"FATAL: uncaught NLR")
    assert continued == fatal, (continued, fatal)


def test_ctrl_c_while_the_app_heap_is_set_apart(tmp_path):
    # mpremote's Ctrl-C as a board starts can come while start.py sets the
    # app's heap apart (after boot.py, before main.py): a step no board has.
    # Interrupted there the unix port could end with "FATAL: uncaught NLR",
    # the relay booted a new process and mpremote waited for ever. Now that
    # step is not interruptible: the board answers, its heap capped.
    import time

    d = tmp_path / "dev"
    sim_device.create(str(d))
    with vboard.VirtualBoard(str(d), heap_kib=vboard.PORT_HEAP_KIB, app_heap_kib=vboard.APP_HEAP_KIB) as b:
        end = time.monotonic() + 60
        while b"recovery mode" not in open(b.log_path, "rb").read() and time.monotonic() < end:
            time.sleep(0.002)
        fd = os.open(b.port, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"\x03")  # boot.py is done: start.py is loading the code and capping the heap
        finally:
            os.close(fd)
        out = mpremote(b.port, "exec", "import gc; gc.collect(); print('free', gc.mem_free())", timeout=60)
        log = open(b.log_path, "rb").read().decode(errors="replace")
        # Never interrupted while setting the heap apart. (Landing in boot.py's
        # last gc.collect() just before, the interrupt can crash the unix
        # port: the relay continues that boot at the REPL, never a reset.)
        assert "_cap_heap" not in log and "_load_code" not in log, log
        with open(b.trace_path) as f:
            assert log.count("FATAL") == f.read().count("continued at the REPL"), log
        assert b.resets == 0 and "device: 64 KiB heap for the app" in log, log
        assert int(out.split()[-1]) < 70 * 1024, out


def test_missing_device_dir_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ictl", "board", "run", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools")))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "ictl device create" in lines[0]
