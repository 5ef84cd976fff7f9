"""ictl broker: run the fleet MQTT broker (mosquitto, TLS with client certificates)."""
import os

from ictl import ROOT, ToolError, broker, pki

DEFAULT_DIR = os.path.join(ROOT, "build", "broker")


def _port(text):
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 1 <= n <= 65535:
        import argparse
        raise argparse.ArgumentTypeError("port must be a number from 1 to 65535")
    return n


def _common(p, port_help):
    p.add_argument("--dir", default=DEFAULT_DIR, help="broker state directory (default: build/broker)")
    p.add_argument("--port", type=_port, default=None, help=port_help)
    p.add_argument("--host", default=broker.HOST,
                   help="address to listen on (default %s; 0.0.0.0 for every interface)" % broker.HOST)
    p.add_argument("--prefix", default=broker.DEFAULT_PREFIX,
                   help="topic prefix: devices use PREFIX/<device-id>/... (default: %s)" % broker.DEFAULT_PREFIX)
    p.add_argument("--pki", default=None, help="fleet CA directory (default: DIR/pki; a development CA is made if missing)")
    p.add_argument("--server-name", action="append", metavar="NAME",
                   help="host name or address devices connect to, in the broker certificate the fleet CA issues "
                        "(repeatable; default: localhost and 127.0.0.1)")
    p.add_argument("--server-cert", metavar="PEM", help="use this broker certificate instead (with --server-key)")
    p.add_argument("--server-key", metavar="PEM", help="the key of --server-cert")
    p.add_argument("--service-workers", type=int, default=0, metavar="N",
                   help="also admit the fleet service (`ictl serve`) with N ingest workers, its rollout engine "
                        "and its commands (operator identities in the ACL; default 0: not admitted)")


def _broker(args):
    ops = broker.DEFAULT_OPERATORS
    if args.service_workers:
        from ictl.service import runner
        ops = tuple(dict.fromkeys(ops + runner.operators(args.service_workers)))
    return broker.Broker(args.dir, port=args.port, prefix=args.prefix, pki_dir=args.pki, host=args.host,
                         server_cert=args.server_cert, server_key=args.server_key,
                         server_names=args.server_name or pki.DEFAULT_SERVER_HOSTS, operators=ops)


def register(sub):
    p = sub.add_parser("broker", help="run the fleet MQTT broker (mosquitto, mutual TLS, per-device ACL)",
                       description="mosquitto on 127.0.0.1 with TLS; clients need a certificate from the "
                                   "fleet CA and are confined to PREFIX/<their CN>/...")
    s = p.add_subparsers(dest="broker_cmd", metavar="ACTION")
    s.required = True
    st = s.add_parser("start", help="run the broker in the foreground until Ctrl-C",
                      description="Creates a development CA and the server/console certificates if "
                                  "missing, writes the config into DIR and runs mosquitto.")
    _common(st, "TCP port on 127.0.0.1 (default: a free port)")
    st.set_defaults(func=do_start)
    c = s.add_parser("config", help="print the mosquitto config (and ACL) that start would write",
                     description="Prints mosquitto.conf; the ACL follows as comments.")
    _common(c, "TCP port (default: the last one used from DIR, else 8883)")
    c.set_defaults(func=do_config)
    ss = s.add_parser("status", help="print the last start's address and whether it still runs")
    ss.add_argument("--dir", default=DEFAULT_DIR, help="broker state directory (default: build/broker)")
    ss.set_defaults(func=do_status)


def do_start(args):
    b = _broker(args)
    b.start()
    try:
        ca = "%s%s" % (b.ca_path, " (development CA, created now)" if b.ca_created else "")
        print("broker listening on %s (TLS, client certificate required), pid %d" % (b.address, b.pid))
        print("  CA:      %s" % ca)
        print("  console: %s (key %s)" % (b.console_cert_path, b.console_key_path))
        print("  topics:  %s/<device-id>/..." % b.prefix)
        print("  log:     %s" % b.log_path)
        print("Ctrl-C to stop", flush=True)
        try:
            rc = b.wait()
        except KeyboardInterrupt:
            b.stop()
            print("broker stopped")
            return 0
        tail = b.log_tail(1)
        raise ToolError("mosquitto exited with status %s: %s" % (rc, tail[-1] if tail else "see " + b.log_path))
    finally:
        b.stop()


def do_config(args):
    port = args.port or broker.read_state(args.dir).get("port") or 8883
    if bool(args.server_cert) != bool(args.server_key):
        raise ToolError("give both --server-cert and --server-key, or neither")
    print(broker.render_config(args.dir, port, args.pki, args.host, args.server_cert, args.server_key), end="")
    print("# %s contains:" % os.path.join(os.path.abspath(args.dir), broker.ACL))
    for line in broker.render_acl(args.prefix, _broker(args).operators).splitlines():
        print("#   " + line if line else "#")


def do_status(args):
    st = broker.read_state(args.dir)
    if not st:
        raise ToolError("no broker has been started from %s: run `ictl broker start --dir %s`" % (args.dir, args.dir))
    pid = st.get("pid")
    if pid and broker._pid_is_mosquitto(pid, st.get("config")):
        mem = broker.proc_memory_kib(pid)
        print("running on %s:%s, pid %d, VmRSS %d KiB, CA %s" % (st["host"], st["port"], pid, mem.get("VmRSS", 0), st["ca"]))
    else:
        print("not running (last on %s:%s, CA %s)" % (st.get("host"), st.get("port"), st.get("ca")))
        return 1
