"""ictl package: regenerate lib/<pkg>/package.json (the mip index) from its files."""
import json
import os
import re

from ictl import ROOT, ToolError

LIB = os.path.join(ROOT, "lib")


def register(sub):
    p = sub.add_parser("package", help="regenerate lib/<pkg>/package.json for mip from the package's modules")
    p.add_argument("--check", action="store_true", help="only check that every package.json is up to date")
    p.set_defaults(func=do_package)


def package_json(pkgdir):
    """mip index: every module, with URLs relative to package.json; the version from manifest.py."""
    name = os.path.basename(pkgdir)
    m = re.search(r'version="([^"]+)"', open(os.path.join(pkgdir, "manifest.py")).read())
    files = sorted(os.path.relpath(os.path.join(d, n), pkgdir)
                   for d, _, ns in os.walk(os.path.join(pkgdir, name)) for n in ns if n.endswith(".py"))
    return {"urls": [[f, f] for f in files], "deps": [], "version": m.group(1) if m else "0.0.0"}


def do_package(args):
    stale = []
    for name in sorted(os.listdir(LIB)):
        pkgdir = os.path.join(LIB, name)
        if not os.path.exists(os.path.join(pkgdir, "manifest.py")):
            continue
        want = json.dumps(package_json(pkgdir), indent=1) + "\n"
        path = os.path.join(pkgdir, "package.json")
        have = open(path).read() if os.path.exists(path) else ""
        if have != want:
            if args.check:
                stale.append(path)
            else:
                with open(path, "w") as f:
                    f.write(want)
                print("package: wrote %s" % os.path.relpath(path, ROOT))
    if stale:
        raise ToolError("%s out of date: run `ictl package`" % ", ".join(stale))
