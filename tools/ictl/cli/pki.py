"""ictl pki: the fleet certificate authority (create it, show what it holds)."""
import os

from ictl import ROOT, ToolError, pki

DEFAULT_DIR = os.path.join(ROOT, "build", "broker", "pki")


def register(sub):
    p = sub.add_parser("pki", help="create and inspect the fleet certificate authority",
                       description="The fleet CA signs the broker certificate and one client "
                                   "certificate per device. Private keys stay in 0600 files and are never printed.")
    s = p.add_subparsers(dest="pki_cmd", metavar="ACTION")
    s.required = True
    i = s.add_parser("init", help="create a new fleet CA (P-256) in a directory",
                     description="Create ca.key (0600) and ca.crt in DIR.")
    i.add_argument("--dir", default=DEFAULT_DIR, help="PKI directory (default: build/broker/pki)")
    i.add_argument("--dev", action="store_true",
                   help="mark the CA as development-only (O=Ironclad DEVELOPMENT ONLY)")
    i.add_argument("--force", action="store_true",
                   help="replace an existing CA (every certificate it issued stops working)")
    i.set_defaults(func=do_init)
    sh = s.add_parser("show", help="print the CA and the certificates issued into its directory",
                      description="Subjects, validity, usages and SHA-256 fingerprints; no keys.")
    sh.add_argument("--dir", default=DEFAULT_DIR, help="PKI directory (default: build/broker/pki)")
    sh.set_defaults(func=do_show)


def do_init(args):
    ca = pki.init_ca(args.dir, dev=args.dev, force=args.force)
    print("created fleet CA in %s%s" % (ca.dir, " (DEVELOPMENT ONLY)" if ca.development else ""))
    print("  certificate: %s" % ca.cert_path)
    print("  private key: %s (mode 0600: keep it off shared machines)" % ca.key_path)
    print("  sha256: %s" % pki.fingerprint(ca.cert))


def do_show(args):
    if not pki.ca_exists(args.dir):
        raise ToolError("no CA in %s: run `ictl pki init --dir %s --dev` first" % (args.dir, args.dir))
    ca = pki.load_ca(args.dir)
    print("CA      %s%s" % (pki.describe(ca.cert), "  [DEVELOPMENT ONLY]" if ca.development else ""))
    for label, name in (("server ", pki.SERVER_CERT), ("console", pki.CONSOLE_CERT)):
        path = os.path.join(ca.dir, name)
        if os.path.exists(path):
            cert = pki.load_cert(path)
            note = "" if ca.signed(cert) else "  [NOT signed by this CA]"
            print("%s %s%s" % (label, pki.describe(cert), note))
