"""ictl console: the fleet console in a terminal.

    ictl console watch --broker build/run/broker      # live view, Ctrl-C stops
    ictl console send  --broker build/run/broker dev-0001 interval s=10
    ictl console fleet-key --dir build/run/broker/pki  # the public key devices get

The broker directory is the one `ictl broker start` (or `ictl run`) uses: its
broker.json gives the address, CA and the console's certificate. The fleet
data key defaults to fleet-data.key in the broker's PKI directory."""
import os
import sys
import threading

from ictl import ROOT, ToolError, broker as fleet_broker, fleetkeys, pki
from ictl.console import Console

DEFAULT_BROKER = os.path.join(ROOT, "build", "broker")


def register(sub):
    p = sub.add_parser("console", help="fleet console: decrypt telemetry, check event chains, send commands")
    cs = p.add_subparsers(dest="console_cmd", metavar="ACTION")
    cs.required = True

    def common(q):
        q.add_argument("--broker", default=DEFAULT_BROKER, help="broker state directory (default build/broker)")
        q.add_argument("--fleet-key", help="fleet data private key (default <broker pki>/fleet-data.key)")
        q.add_argument("--state", help="console state file (default <broker dir>/console.json)")

    w = cs.add_parser("watch", help="show decrypted telemetry, events, replies and alarms as they arrive")
    common(w)
    w.add_argument("--count", type=int, default=0, metavar="N", help="stop after N messages (default: until Ctrl-C)")
    w.add_argument("--timeout", type=float, default=0, help="fail if nothing arrives for this many seconds")
    w.set_defaults(func=do_watch)

    s = cs.add_parser("send", help="send an authenticated command to a device")
    common(s)
    s.add_argument("device", help="device id")
    s.add_argument("op", help="read, interval, reboot, update or wipe")
    s.add_argument("args", nargs="*", metavar="NAME=INT", help="arguments, e.g. s=10 for interval")
    s.set_defaults(func=do_send)

    k = cs.add_parser("fleet-key", help="print the fleet data public key (created if missing)")
    k.add_argument("--dir", default=os.path.join(DEFAULT_BROKER, "pki"), help="directory of fleet-data.key")
    k.set_defaults(func=do_key)


def _console(args):
    st = fleet_broker.read_state(args.broker)
    if not st.get("port"):
        raise ToolError("no broker state in %s: start one with `ictl broker start --dir %s`" % (args.broker, args.broker))
    pki_dir = os.path.dirname(st["ca"])
    key = fleetkeys.load(args.fleet_key) if args.fleet_key else fleetkeys.ensure(pki_dir)
    kp, cp = pki.ensure_console_cert(pki.load_ca(pki_dir))
    return Console(st["host"], st["port"], st["ca"], cp, kp, key, st.get("prefix", fleet_broker.DEFAULT_PREFIX),
                   args.state or os.path.join(args.broker, "console.json"))


def do_watch(args):
    con = _console(args)
    stop = threading.Event()
    n = [0]
    alarms = [0]

    def show(m):
        print(m, flush=True)
        n[0] += 1
        alarms[0] += m.alarm
        if args.count and n[0] >= args.count:
            stop.set()

    with con:
        print("console: watching %s/+/{telemetry,events,state,reply} on %s:%d (Ctrl-C stops)"
              % (con.prefix, con.host, con.port), flush=True)
        con.run(show, stop, args.timeout or None)
    return 1 if alarms[0] else 0


def do_send(args):
    kw = {}
    for a in args.args:
        name, eq, val = a.partition("=")
        if not eq or not name:
            raise ToolError("argument %r: use NAME=INT, e.g. s=10" % a)
        try:
            kw[name] = int(val, 0)  # 0x... too: wipe confirm=0x57495045
        except ValueError:
            raise ToolError("argument %r: the value must be an integer" % a) from None
    with _console(args) as con:
        con.wait_device(args.device)
        ctr = con.send_command(args.device, args.op, **kw)
    print("console: sent %s to %s (counter %d); the reply arrives on its reply topic" % (args.op, args.device, ctr))


def do_key(args):
    key = fleetkeys.ensure(args.dir)
    sys.stdout.write(fleetkeys.public_point(key).hex() + "\n")
