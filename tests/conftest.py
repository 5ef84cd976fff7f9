"""pytest is the one runner. Host tests are ordinary pytest files. Device tests
are MicroPython files, tests/device/test_*.py: each top-level `def test_*()`
becomes its own pytest item, run in its own unix-port process under
`-X heapsize` (mphelp.DEFAULT_HEAP_KIB unless the file sets HEAP_KIB, with a comment saying why),
on a fresh simulated device, with the MicroPython traceback shown on failure.
The device is a production board (flash encryption on, as
`ictl.sim.device.create` makes one) unless the file sets FLASH_ENCRYPTION =
False, with a comment saying why it is about a development board.
Lines the device prints as `REPORT: ...` appear in the pytest summary."""
import ast
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mphelp  # noqa: E402
from ictl.sim import device as sim_device  # noqa: E402

DEVICE_DIR = os.path.join(mphelp.ROOT, "tests", "device")
RUNNER = os.path.join(DEVICE_DIR, "_runner.py")
DEVICE_TIMEOUT = 300


def pytest_configure(config):
    mphelp.prepare_vectors()


def pytest_pycollect_makemodule(module_path, parent):
    # Device test files are MicroPython, not host modules: collect them our way.
    if str(module_path.parent) == DEVICE_DIR:
        return DeviceFile.from_parent(parent, path=module_path)
    return None


class DeviceFile(pytest.File):
    def collect(self):
        tree = ast.parse(self.path.read_text(), filename=str(self.path))
        heap = mphelp.DEFAULT_HEAP_KIB
        timeout = DEVICE_TIMEOUT
        lab_net = True  # the link up from the start (firmware/unix/network.py), unless the file says LAB_NET = False
        crypt = True  # a production board, unless the file says FLASH_ENCRYPTION = False
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if node.targets[0].id == "HEAP_KIB":
                    heap = ast.literal_eval(node.value)
                elif node.targets[0].id == "TIMEOUT_S":
                    timeout = ast.literal_eval(node.value)
                elif node.targets[0].id == "LAB_NET":
                    lab_net = ast.literal_eval(node.value)
                elif node.targets[0].id == "FLASH_ENCRYPTION":
                    crypt = ast.literal_eval(node.value)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                yield DeviceItem.from_parent(self, name=node.name, heap=heap, timeout=timeout, lab_net=lab_net,
                                          crypt=crypt)


class DeviceFailure(Exception):
    pass


class DeviceItem(pytest.Item):
    def __init__(self, *, heap, timeout, lab_net=True, crypt=True, **kw):
        super().__init__(**kw)
        self.crypt = crypt
        self.heap = heap
        self.timeout = timeout
        self.lab_net = lab_net

    def runtest(self):
        tmp = self.config._tmp_path_factory.mktemp(self.name[:30])
        devdir = os.path.join(tmp, "dev")
        sim_device.create(devdir, flash_encryption=self.crypt)
        cmd = [mphelp.MICROPYTHON, "-X", "heapsize=%dK" % self.heap, RUNNER, self.path.stem, self.name]
        env = mphelp.mp_env(devdir, lab_net=self.lab_net)
        env["IC_TMP"] = str(tmp)
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=self.timeout, cwd=str(tmp))
        except subprocess.TimeoutExpired:
            raise DeviceFailure("timed out after %ds" % self.timeout)
        for line in p.stdout.splitlines():
            if line.startswith("REPORT:"):
                self.user_properties.append(("report", line[7:].strip()))
        if p.returncode != 0 or not p.stdout.rstrip().endswith("PASS"):
            raise DeviceFailure("exit status %d\n--- device stdout ---\n%s--- device stderr ---\n%s"
                                % (p.returncode, p.stdout, p.stderr))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, DeviceFailure):
            return "%s::%s (heap %d KiB) failed on the unix port:\n%s" % (self.path.name, self.name, self.heap, excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, "%s::%s" % (self.path.name, self.name)


def pytest_terminal_summary(terminalreporter):
    lines = []
    for rep in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        for key, val in getattr(rep, "user_properties", ()):
            if key == "report":
                lines.append("%s: %s" % (rep.nodeid.split("::")[-1], val))
    if lines:
        terminalreporter.section("device reports")
        for line in lines:
            terminalreporter.write_line(line)


BOARD_LOGS = ("console.log", "relay.log")  # a virtual board's output and its relay's trace (ictl.sim.board)
BOARD_LOG_LINES = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # A failed test that ran virtual boards shows the end of each board's
    # console and relay trace: CI keeps nothing else of a board that hung.
    outcome = yield
    rep = outcome.get_result()
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if not rep.failed or tmp is None:
        return
    found = []
    for dirpath, _, files in os.walk(str(tmp)):
        found += [os.path.join(dirpath, f) for f in files if f in BOARD_LOGS]
    for path in sorted(found)[:6]:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()[-BOARD_LOG_LINES:]
        rep.sections.append(("board " + os.path.relpath(path, str(tmp)), "\n".join(lines)))
