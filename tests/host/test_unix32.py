"""The optional 32-bit unix build (docs/unix32.md): `make unix32` says what it
needs when it cannot build, its variant agrees with the port profile, and a
32-bit binary given by IRONCLAD_MICROPYTHON has the ESP32's number formats."""
import json
import os
import re
import subprocess

import pytest

from mphelp import ROOT
from ictl import sim

BUILD = os.path.join(ROOT, "firmware", "unix32", "build.sh")
VARIANT = os.path.join(ROOT, "firmware", "unix32", "ironclad32")


def _build(*args, **env):
    e = {k: v for k, v in os.environ.items() if k != "MICROPY_DIR"}
    e.update(env)
    return subprocess.run([BUILD, *args], capture_output=True, text=True, timeout=60, env=e)


def test_without_the_source_it_says_what_to_install_and_fails(tmp_path):
    r = _build()
    assert r.returncode == 2 and "MICROPY_DIR is not set" in r.stderr, r.stderr
    assert "apt-get install gcc-multilib" in r.stderr and "submodule update --init lib/mbedtls" in r.stderr
    r = _build(str(tmp_path))
    assert r.returncode == 2 and "no MicroPython source at MICROPY_DIR=%s" % tmp_path in r.stderr, r.stderr
    # a tree without its submodules: named, nothing built
    (tmp_path / "ports" / "unix").mkdir(parents=True)
    (tmp_path / "ports" / "unix" / "Makefile").write_text("")
    r = _build(MICROPY_DIR=str(tmp_path))
    assert r.returncode == 2 and "lib/mbedtls is empty" in r.stderr, r.stderr
    assert os.listdir(tmp_path / "ports" / "unix") == ["Makefile"]


def test_make_test_does_not_need_it():
    with open(os.path.join(ROOT, "Makefile")) as f:
        rules = f.read()
    test_rule = re.search(r"^test:(.*)$", rules, re.M).group(1)
    assert "unix32" not in test_rule and "MICROPY_DIR" not in test_rule


def test_variant_sets_what_the_profile_records():
    with open(os.path.join(VARIANT, "mpconfigvariant.h")) as f:
        header = f.read()
    defs = dict(re.findall(r"^#define (MICROPY_\w+|MPZ_DIG_SIZE)\s+\((\w+)\)", header, re.M))
    with open(os.path.join(ROOT, "firmware", "profile", "esp32.json")) as f:
        config = json.load(f)["config"]
    # py/mpconfig.h: MICROPY_FLOAT_IMPL_FLOAT 1, MICROPY_LONGINT_IMPL_MPZ 2
    assert config["MICROPY_FLOAT_IMPL"] == 1 and defs["MICROPY_FLOAT_IMPL"] == "MICROPY_FLOAT_IMPL_FLOAT"
    assert config["MICROPY_LONGINT_IMPL"] == 2 and defs["MICROPY_LONGINT_IMPL"] == "MICROPY_LONGINT_IMPL_MPZ"
    assert defs["MPZ_DIG_SIZE"] == "16" and defs["MICROPY_OBJ_REPR"] == "MICROPY_OBJ_REPR_A"
    with open(os.path.join(VARIANT, "mpconfigvariant.mk")) as f:
        mk = dict(re.findall(r"^(\w+) = (\S+)$", f.read(), re.M))
    assert mk["MICROPY_FORCE_32BIT"] == "1" and mk["MICROPY_PY_FFI"] == "0"
    assert mk["MICROPY_SSL_MBEDTLS"] == "1" and config["MICROPY_SSL_MBEDTLS"] == 1
    assert mk["MICROPY_VFS_LFS2"] == "1" and config["MICROPY_VFS_LFS2"] == 1


@pytest.mark.skipif(sim.word_bits() != 32, reason="IRONCLAD_MICROPYTHON is not a 32-bit build (make unix32)")
def test_the_32bit_build_has_the_esp32_number_formats():
    code = ("import sys, vfs, time\n"
            "print(sys.maxsize == 2**31 - 1, 1.0 + 2.0**-30 == 1.0, time.ticks_add(0, -1) == 2**30 - 1,\n"
            "      hasattr(vfs, 'VfsRom'), sys.implementation._build)\n")
    out = subprocess.run([sim.MICROPYTHON, "-c", code], capture_output=True, text=True, timeout=30).stdout.split()
    assert out == ["True", "True", "True", "True", "ironclad32"], out
