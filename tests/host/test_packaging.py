"""lib/ packages: a manifest.py and a package.json (mip) that lists every module."""
import os
import subprocess
import sys

from mphelp import ROOT


def test_package_json_is_up_to_date():
    r = subprocess.run([sys.executable, "-m", "ictl", "package", "--check"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools")))
    assert r.returncode == 0, r.stderr


def test_manifest_freezes_the_package():
    text = open(os.path.join(ROOT, "lib", "ironclad", "manifest.py")).read()
    assert 'package("ironclad")' in text and "metadata(" in text
