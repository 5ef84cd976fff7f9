"""A virtual board: a simulated device (its state directory) running on the
MicroPython unix port behind a pseudo-terminal, so that the real `mpremote`
talks to it as to an ESP32 on USB.

Two ptys: the device process owns one (its console); we expose the other as
the board's serial port and relay bytes between them. The relay does what the
board's hardware would:
- Ctrl-C while a program runs interrupts it (SIGINT -> KeyboardInterrupt),
  since the unix port reads its console only at a prompt;
- a soft reset (Ctrl-D at a prompt) ends the unix process; we start a new one
  on the same state, print "MPY: soft reboot" as the firmware does and, if the
  soft reset came from the raw REPL, bring the new process back into the raw
  REPL without running main.py (as the ESP32 port does), hiding its banner;
- machine.reset() or a power cut ends the process; the board boots again;
- the hardware watchdog: machine.WDT's stand-in writes its timeout to
  <device dir>/wdt at each feed; once that file is older than the timeout
  the relay kills the device process and records WDT as the reset cause, as
  the task watchdog's panic resets an ESP32 (the next boot reads WDT_RESET).
"""
import os
import pty
import select
import signal
import subprocess
import termios
import threading
import time
import tty

from ictl import ROOT, ToolError
from ictl.sim import device as sim_device
from ictl import broker as fleet_broker
from ictl.sim import unixfw
from ictl.sim import MICROPYTHON  # IRONCLAD_MICROPYTHON picks another build

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
CRASH_AFTER_SIGINT_S = 2  # a process that exits this soon after the relay's SIGINT crashed on it (_device_ended)
HOLD_S = 3  # input at boot or after an interrupt waits this long at most for the prompt (_hold)
_IDLE_TAILS = (b">>> ", RAW_BANNER + b">", b"\x04>")


# The unix port keeps the code it loads in its GC heap; an ESP32 runs frozen
# code and the app image from flash and gives the app the heap. A board that
# models an ESP32 gets a port heap with room for all the code (PORT_HEAP_KIB),
# and firmware/unix/start.py loads the code first and holds it apart, leaving
# the app a heap of APP_HEAP_KIB in one piece (ESPSIM_DATA_HEAP_KIB): the
# budget of an ESP32 without PSRAM.
PORT_HEAP_KIB = 1024
APP_HEAP_KIB = 64


def app_heap_env(kib=APP_HEAP_KIB):
    return {"ESPSIM_DATA_HEAP_KIB": str(kib)}


class VirtualBoard:
    def __init__(self, devdir, heap_kib=128, env=None, log=None, app_heap_kib=None):
        sim_device.load(devdir)  # a one-line error if the directory is missing or corrupt
        self.devdir = os.path.abspath(devdir)
        self.heap_kib = heap_kib
        self.extra_env = dict(env or {})
        if app_heap_kib:
            self.extra_env.update(app_heap_env(app_heap_kib))
        self.log_path = log or os.path.join(self.devdir, "console.log")
        # What the relay did, with times: what a failed mpremote step needs
        # to be understood (tests print it when they fail, tests/conftest.py).
        self.trace_path = os.path.join(self.devdir, "relay.log")
        self.proc = None
        self.boots = 0
        self.resets = 0  # boots after machine.reset() or a power cut (not a soft reboot)
        self.wdt_resets = 0
        self._stop = threading.Event()
        self._thread = None

    # --- the port mpremote opens ---------------------------------------------
    def start(self):
        self.cm, self.cs = pty.openpty()
        tty.setraw(self.cs)
        # We keep the port's far end open ourselves, so the relay never sees
        # EIO when mpremote disconnects, as a USB-serial adapter stays put.
        self.port = os.ttyname(self.cs)
        self.link = os.path.join(self.devdir, "tty")
        try:
            os.unlink(self.link)
        except FileNotFoundError:
            pass
        os.symlink(self.port, self.link)
        os.set_blocking(self.cm, False)
        self.log = open(self.log_path, "ab")
        self.trace_file = open(self.trace_path, "a")
        self.t0 = time.monotonic()
        self._spawn(raw=False)
        self._thread = threading.Thread(target=self._relay, name="virtual-board", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # What the process printed last and the relay had not read yet goes
        # to the console log too (a test reads it after the board stops).
        self.log.write(self._unread())
        self._kill()
        for fd in (self.cm, self.cs):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.unlink(self.link)
        except OSError:
            pass
        self.log.close()
        self.trace_file.close()

    def trace(self, what, data=b""):
        try:
            self.trace_file.write("%9.3f %s%s\n" % (time.monotonic() - self.t0, what,
                                                    " " + repr(bytes(data[-48:])) if data else ""))
            self.trace_file.flush()
        except (OSError, ValueError):
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- the device process ----------------------------------------------------
    def _spawn(self, raw, soft=False, same_boot=False):
        m, s = pty.openpty()
        tty.setraw(s)
        try:
            os.unlink(os.path.join(self.devdir, "wdt"))  # a new boot: the watchdog is off until the app starts it
        except FileNotFoundError:
            pass
        fw = unixfw.build()  # the frozen code precompiled, as an ESP32 firmware carries it
        env = dict(os.environ, MICROPYPATH=":".join(os.path.join(fw, p) for p in ("lib/ironclad", "firmware/unix")),
                   ESPSIM_DIR=self.devdir, **self.extra_env)
        for k in ("ESPSIM_RAW_REPL", "ESPSIM_SOFT_REBOOT", "ESPSIM_SAME_BOOT"):
            env.pop(k, None)
        if same_boot:
            env["ESPSIM_SAME_BOOT"] = "1"  # no main.py, the reset cause kept (_device_ended)
        if raw:
            env["ESPSIM_RAW_REPL"] = "1"
        if soft:
            env["ESPSIM_SOFT_REBOOT"] = "1"
        self.proc = subprocess.Popen(
            [MICROPYTHON, "-X", "heapsize=%dK" % self.heap_kib, "-i", os.path.join(fw, "firmware", "unix", "start.py")],
            stdin=s, stdout=s, stderr=s, env=env, cwd=self.devdir, close_fds=True, start_new_session=True,
            preexec_fn=fleet_broker.die_with_parent,  # a killed `ictl run` leaves no device behind
        )
        os.close(s)
        self.dm = m
        os.set_blocking(m, False)
        self.boots += 1
        self.tail = b""
        self.vm_up = False  # set by the process's first output
        self.raw = False
        self.syncing = raw  # hide the new process's banner until it is in the raw REPL
        self.sync_buf = b""
        self.eof_sent = False
        self.held = None  # input waiting for the prompt (_hold)
        self.interrupted = False  # a SIGINT sent since the last prompt
        self.sigint_at = None  # when the relay last sent this process a SIGINT
        self.after_sigint = bytearray()  # what it was given since (_device_ended)
        self.trace("boot %d pid %d%s%s%s" % (self.boots, self.proc.pid, " raw" if raw else "", " soft" if soft else "",
                                            " same-boot" if same_boot else ""))
        self._hold()

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            os.close(self.dm)
        except OSError:
            pass

    # --- the relay ---------------------------------------------------------------
    def _to_client(self, data):
        self.log.write(data)
        self.log.flush()
        deadline = time.monotonic() + 0.5
        while data:
            try:
                n = os.write(self.cm, data)
                data = data[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    # Nobody is reading the port: like a UART with no listener,
                    # the stale output is lost.
                    termios.tcflush(self.cs, termios.TCIFLUSH)
                    deadline = time.monotonic() + 0.5
                else:
                    select.select([], [self.cm], [], 0.05)

    def _from_device(self, data):
        self.trace("device", data)
        if not self.vm_up and self.held is not None:
            self.held_until = time.monotonic() + HOLD_S  # the wait for the prompt starts with the VM
        self.vm_up = True
        if self.syncing:
            self.sync_buf += data
            buf = self.sync_buf
            i = buf.find(b"MicroPython ")
            if i > 0:  # boot.py output before the banner shows, as on a board
                self._to_client(buf[:i])
                self.sync_buf = buf = buf[i:]
            if b">>> " in buf and not buf.startswith(b"\x01"):
                os.write(self.dm, b"\r\x01")
                self.sync_buf = b"\x01"  # marker: raw REPL requested
            elif RAW_BANNER in buf:
                self.syncing = False
                self.raw = True
                rest = buf[buf.index(RAW_BANNER):]
                self.tail = rest[-64:]
                self._to_client(rest)
                self._release()
            return
        if RAW_BANNER in self.tail[-32:] + data:
            self.raw = True
        self.tail = (self.tail + data)[-64:]
        self._to_client(data)
        self._release()

    def _idle(self):
        return self.tail.endswith(_IDLE_TAILS)

    def _running_code(self):
        """Whether the device process has its SIGINT handler in place: the
        unix port installs it only while it runs Python code and sets SIGINT
        back to SIG_DFL otherwise (mp_hal_set_interrupt_char in
        ports/unix/unix_mphal.c, v1.28.0), at its REPL prompt too, where a
        SIGINT ends the process. The prompt may be out before the relay has
        read it: under load, mpremote's Ctrl-C then killed the board, the
        relay booted a new one, and mpremote, blocked on the pty without a
        timeout, waited for ever for the raw REPL its Ctrl-A had asked the
        dead one for (`ictl provision`: "did not answer within 120 s")."""
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("SigCgt:"):
                        return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
        except (OSError, ValueError):
            pass
        return False

    def _from_client(self, data):
        out = bytearray()
        for b in data:
            if b == 3 and self.vm_up and self._ctrl_c_as_signal():
                # The program is running: the board's UART IRQ would raise
                # KeyboardInterrupt; the unix port needs a signal for that.
                # What follows waits for the prompt (_hold).
                self._write(out)
                out = bytearray()
                self._hold()
                continue
            if self.held is not None:
                # Also a Ctrl-C while the process starts (the unix port's
                # launcher is a CPython script, whose own SIGINT handler a
                # signal would reach): kept, as a UART keeps it, and handled
                # when the held input is released.
                self.held.append(b)
                continue
            if b == 4 and self._idle():
                self.eof_sent = True
            if b == 2:
                self.raw = False
            out.append(b)
        self._write(out)

    def _ctrl_c_as_signal(self):
        """Whether a Ctrl-C from the client is taken as an interrupt (a
        SIGINT to the device process) rather than a byte for its REPL.

        One until the prompt: the unix port raises it from the signal handler
        (MICROPY_ASYNC_KBD_INTR), and a second one while the first unwinds can
        land outside every handler ("FATAL: uncaught NLR", a crash and a
        reset), where a board only schedules it (mp_sched_keyboard_interrupt).
        Not running code (its REPL just started and its prompt is not out
        yet), it gets the byte, as a board's REPL does."""
        if self._idle():
            return False
        if self.interrupted:
            return self._running_code()  # still unwinding the first: dropped
        if self._signal_if_running():
            self.interrupted = True
            return True
        return False

    def _signal_if_running(self):
        """Send SIGINT if, and only if, the device process has its handler in
        place, checked and sent while the process is stopped (SIGSTOP). Checked
        and sent while it ran, it could set SIGINT back to SIG_DFL in between
        (its script ending, its REPL starting, micropython.kbd_intr(-1)), and
        the signal ended it: the relay booted a new process, the input held
        for the old one was gone, and mpremote, blocked on the pty without a
        timeout, waited for ever (CI: "the board on /dev/pts/0 did not answer
        within 120 s" at `ictl provision`'s first step). A stopped process
        cannot change its handlers; the SIGINT stays pending until SIGCONT and
        is then delivered to the handler that was checked."""
        pid = self.proc.pid
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return False
        try:
            deadline = time.monotonic() + 2
            while True:
                state = _proc_state(pid)
                if state in ("T", "t"):
                    break
                if state in (None, "Z", "X") or time.monotonic() > deadline:
                    self.trace("interrupt: process not stopped (%s)" % state)
                    return False
                time.sleep(0.001)
            if not self._running_code():
                self.trace("ctrl-c as a byte: no SIGINT handler")
                return False
            os.kill(pid, signal.SIGINT)
            self.sigint_at, self.after_sigint = time.monotonic(), bytearray()
            self.trace("SIGINT")
            return True
        except ProcessLookupError:
            return False
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def _hold(self):
        # Input that comes while the device starts, or after an interrupt
        # (mpremote sends Ctrl-C and at once Ctrl-A), waits for the prompt:
        # the unix port's REPL discards what came before it with
        # tcsetattr(TCSAFLUSH) (mp_hal_stdio_mode_raw, ports/unix/unix_mphal.c),
        # where an ESP32's REPL reads it from its UART receive buffer. Lost,
        # mpremote waits for a raw REPL that never comes (seen when the device
        # takes a while to get there: the 32-bit build, a loaded host,
        # docs/unix32.md). A program that runs on and reads gets it after
        # HOLD_S, as it would from the UART.
        if self.held is None:
            self.held = bytearray()
        self.held_until = time.monotonic() + HOLD_S

    def _release(self):
        if self.held is not None and self.vm_up and (self._idle() or time.monotonic() > self.held_until):
            held, self.held = self.held, None
            if held:
                self.trace("release%s" % ("" if self._idle() else " (timed out)"), held)
            self.interrupted = False
            self._from_client(bytes(held))

    def _write(self, out):
        if out:
            if self.sigint_at is not None and time.monotonic() - self.sigint_at < CRASH_AFTER_SIGINT_S:
                self.after_sigint += out
            try:
                os.write(self.dm, bytes(out))
            except OSError:
                pass

    def _watchdog(self):
        path = os.path.join(self.devdir, "wdt")
        try:
            age = time.time() - os.stat(path).st_mtime
            with open(path) as f:
                timeout_ms = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return
        if timeout_ms > 0 and age * 1000 > timeout_ms and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            with open(os.path.join(self.devdir, "reset"), "wb") as f:
                f.write(b"%-16s" % b"WDT")  # espsim's reset record: the next boot's reset_cause()
            self.wdt_resets += 1

    def _relay(self):
        while not self._stop.is_set():
            self._watchdog()
            self._release()
            try:
                r, _, _ = select.select([self.cm, self.dm], [], [], 0.1)
            except (OSError, ValueError):
                r = []
            if self.dm in r:
                try:
                    data = os.read(self.dm, 4096)
                except OSError:
                    data = b""
                if data:
                    self._from_device(data)
                    continue
                self._device_ended()
                continue
            if self.cm in r:
                try:
                    data = os.read(self.cm, 4096)
                except OSError:
                    data = b""
                if data:
                    self.trace("client", data)
                    self._from_client(data)
            if self.proc.poll() is not None:
                self._device_ended()

    def _unread(self):
        # What the device process printed that the relay has not read yet.
        out = bytearray()
        while True:
            try:
                data = os.read(self.dm, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
        return bytes(out)

    def _device_ended(self):
        # Pass on what the process printed last, then boot again on the same state.
        rest = self._unread()
        if rest:
            self._from_device(rest)
        rc = self.proc.wait()
        soft = self.eof_sent and rc == 0
        # Ended by the interrupt the relay sent (an exit status, not a kill):
        # the unix port raises KeyboardInterrupt from its signal handler
        # (MICROPY_ASYNC_KBD_INTR); landing inside C code (gc.collect(), seen
        # in CI at the end of boot.py) it leaves the unix port's exception
        # state broken and the process ends soon after, often right after its
        # next prompt, with "FATAL: uncaught NLR". A board takes the interrupt
        # between bytecodes (mp_sched_keyboard_interrupt) and stays at its
        # prompt. So does the new process: the same boot continued at the REPL
        # (no boot.py or main.py again, the reset cause kept), given again
        # what the dead one was given since the interrupt and what was held
        # for it (mpremote's Ctrl-A: lost, mpremote waited for ever), and no
        # reset counted.
        crashed = (not soft and rc > 0 and self.sigint_at is not None
                   and time.monotonic() - self.sigint_at < CRASH_AFTER_SIGINT_S)
        self.trace("process ended, rc %d%s" % (rc, " (soft reset)" if soft else
                                               " after the relay's SIGINT: continued at the REPL" if crashed else ""))
        replay = bytes(self.after_sigint) + bytes(self.held or b"") if crashed else b""
        was_raw = self.raw
        self._kill()
        if self._stop.is_set():
            return
        if soft:
            self._to_client(b"MPY: soft reboot\r\n")
        elif not crashed:
            self.resets += 1
        self._spawn(raw=soft and was_raw, soft=soft, same_boot=crashed)
        if replay:
            self.held.extend(replay)

    def wait_reset(self, after, timeout=20, prompt=True):
        """Wait until the board has reset more than `after` times (and, with
        prompt, has booted to its REPL prompt). `mpremote reset` returns
        before the board resets (it runs machine.reset() after 100 ms with
        --no-follow), so a next command sent at once would interrupt it; on a
        board, too, the next command must wait."""
        deadline = time.monotonic() + timeout
        while self.resets <= after or (prompt and not (self.vm_up and self._idle())):
            if time.monotonic() > deadline:
                raise ToolError("the board did not reset%s within %d s" % (" to its prompt" if prompt else "", timeout))
            time.sleep(0.02)


def _proc_state(pid):
    # The state letter of /proc/<pid>/stat (after the command name, which may
    # hold spaces and parentheses), or None when the process is gone.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def run_forever(devdir, heap_kib=128, app_heap_kib=None):
    board = VirtualBoard(devdir, heap_kib=heap_kib, app_heap_kib=app_heap_kib).start()
    print("board: %s is on %s (also %s); Ctrl-C stops it" % (devdir, board.port, board.link), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
