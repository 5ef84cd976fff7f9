"""ictl ca: certify a device CSR, list the inventory of device certificates."""
import getpass
import os

from ictl import ToolError, broker, ca as fleet_ca, pki, read_file
from ictl.cli.pki import DEFAULT_DIR


def register(sub):
    p = sub.add_parser("ca", help="issue device certificates from CSRs; list the device inventory",
                       description="The fleet CA's device operations (create the CA with `ictl pki init`). "
                                   "`ictl provision` does the same over USB in one step.")
    s = p.add_subparsers(dest="ca_cmd", metavar="ACTION")
    s.required = True
    i = s.add_parser("issue", help="certify a device's CSR (signature and CN checked)",
                     description="Check the CSR (its signature verifies with its own P-256 key; subject is "
                                 "exactly CN=DEVICE_ID), issue a clientAuth certificate and record it in the inventory.")
    i.add_argument("--dir", default=DEFAULT_DIR, help="fleet CA directory (default build/broker/pki)")
    i.add_argument("--csr", required=True, help="the CSR file (PEM or DER)")
    i.add_argument("--device-id", required=True, help="the device id the CSR must name")
    i.add_argument("--uid", required=True, help="the board's chip unique id (hex), for the inventory")
    i.add_argument("--out", required=True, help="where to write the certificate (DER; .pem for PEM)")
    i.add_argument("--operator", help="who issues (default: your login name)")
    i.add_argument("--days", type=int, default=pki.CLIENT_DAYS, help="validity in days (default %d)" % pki.CLIENT_DAYS)
    i.set_defaults(func=do_issue)
    r = s.add_parser("revoke", help="revoke a device's certificate (decommissioned, lost, compromised)",
                     description="Record the revocation in the inventory and rewrite the CA's CRL (crl.pem), which "
                                 "the broker checks every client certificate against. A running broker started "
                                 "with --broker-dir is told to reload it; connections made from then on are refused.")
    r.add_argument("--dir", default=DEFAULT_DIR, help="fleet CA directory (default build/broker/pki)")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--device-id", help="revoke every live certificate of this device")
    who.add_argument("--serial", help="revoke the certificate with this serial (hex)")
    r.add_argument("--reason", default="decommissioned", choices=sorted(fleet_ca.REASONS),
                   help="why (default decommissioned)")
    r.add_argument("--operator", help="who revokes (default: your login name)")
    r.add_argument("--broker-dir", help="the state directory of a broker started by `ictl broker start`: reload it")
    r.set_defaults(func=do_revoke)
    c = s.add_parser("crl", help="sign the CRL again (before its next update, every %d days)" % fleet_ca.CRL_DAYS)
    c.add_argument("--dir", default=DEFAULT_DIR, help="fleet CA directory (default build/broker/pki)")
    c.set_defaults(func=lambda a: print("CRL written to %s" % fleet_ca.write_crl(pki.load_ca(a.dir))))
    ls = s.add_parser("list", help="the device certificates issued, newest status of each")
    ls.add_argument("--dir", default=DEFAULT_DIR, help="fleet CA directory (default build/broker/pki)")
    ls.set_defaults(func=do_list)


def do_issue(args):
    ca = pki.load_ca(args.dir)
    csr = fleet_ca.load_csr(read_file(args.csr))
    inv = fleet_ca.Inventory.of(ca)
    uid = args.uid.lower()
    with inv.locked():
        inv.check_identity(args.device_id, uid)
        cert = fleet_ca.issue_from_csr(ca, csr, args.device_id, days=args.days)
        inv.record_issued(cert, args.device_id, uid, args.operator or getpass.getuser(), None)
    (pki.write_cert_pem if args.out.endswith(".pem") else pki.write_cert_der)(args.out, cert)
    print("issued %s" % pki.describe(cert))
    print("  written to %s; inventory %s" % (args.out, inv.path))


def do_list(args):
    ca = pki.load_ca(args.dir)
    rows = sorted(fleet_ca.Inventory.of(ca).devices().values(), key=lambda r: r.get("time", ""))
    if not rows:
        print("no device certificates issued by the CA in %s" % ca.dir)
        return
    for r in rows:
        print("%-24s uid %-14s %-11s serial %s  until %s  by %s  sha256 %s" % (
            r["device_id"], r.get("uid"), r["status"], r["serial"], r.get("not_after", "?")[:10],
            r.get("operator"), r.get("fingerprint")))


def do_revoke(args):
    ca = pki.load_ca(args.dir)
    rows = fleet_ca.revoke(ca, args.device_id, args.serial, args.reason, args.operator or getpass.getuser())
    for r in rows:
        print("revoked %s serial %s (%s)" % (r["device_id"], r["serial"], args.reason))
    print("CRL written to %s" % os.path.join(ca.dir, pki.CRL))
    if args.broker_dir:
        if not broker.signal_reload(args.broker_dir):
            raise ToolError("no broker from %s is running: the CRL holds from its next start" % args.broker_dir)
        print("broker from %s reloading: connections from now on are checked against the new CRL" % args.broker_dir)
    else:
        print("give the broker the new CRL: copy it to its pki directory if that is another machine, then SIGHUP "
              "mosquitto (or `--broker-dir` for a broker started by `ictl broker start`)")
