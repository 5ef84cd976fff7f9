"""What `ictl run` and the fleet simulation both make: development keys
(clearly marked, never for the field) and app images built from app/, with
an edit for the demo update."""
import os
import shutil
import tempfile

from ictl import ROOT, ToolError, fleetkeys
from ictl import image as app_image

APP = os.path.join(ROOT, "app")


class Keys:
    """Development keys for this run, clearly marked: never use them in the field."""

    def __init__(self, root):
        self.dir = os.path.join(root, "dev-keys-DEVELOPMENT-ONLY")
        os.makedirs(self.dir, exist_ok=True)
        self.image_key = os.path.join(self.dir, "image-signing.pem")
        if not os.path.exists(self.image_key):
            app_image.keygen(self.image_key)
        self.signing = app_image.load_private(self.image_key)
        self.key_id = app_image.key_id_for(self.signing.public_key())
        self.fleet = fleetkeys.ensure(self.dir)


def build_app(version, counter, keys, out, hwid, change=None):
    """Build and sign app/ as `version`; change(dir) edits a copy first."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "app")
        shutil.copytree(APP, src)
        if change:
            change(src)
        img = app_image.build(src, keys.signing, keys.key_id, version, counter, hwid)
    with open(out, "wb") as f:
        f.write(img)
    return img


def bump_version(ver):
    def change(src):
        p = os.path.join(src, "agent.py")
        with open(p) as f:
            text = f.read()
        if 'VERSION = "1"' not in text:
            raise ToolError("app/agent.py has no VERSION line to change for the demo update")
        with open(p, "w") as f:
            f.write(text.replace('VERSION = "1"', 'VERSION = "%s"' % ver))
    return change
