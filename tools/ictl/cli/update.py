"""ictl update: create signed, encrypted updates (full or detools delta) for
one device or a group, inspect them, and roll them out through the broker.

    ictl update create --image v2.img --base v1.img --key sign.pem \\
        --device d1=d1.crt --device d2=d2.crt --out build/upd
    ictl update publish build/upd --broker build/broker

`create` writes DIR/delta (when --base is given) and DIR/full, each with the
encrypted chunks (the same for every device) and one signed metadata message
per device; the content key is wrapped for each device and never written.
`publish` offers the delta, serves the devices' chunk requests, falls back to
the full update for a device whose running image is not the base, and shows
progress and each device's state."""
import json
import os
import sys

from ictl import ROOT, ToolError, read_file
from ictl import broker as fleet_broker
from ictl import image as app_image
from ictl import pki
from ictl import update

DEFAULT_BROKER = os.path.join(ROOT, "build", "broker")


def register(sub):
    p = sub.add_parser("update", help="signed, encrypted full/delta updates: create, inspect, publish")
    s = p.add_subparsers(dest="update_cmd", metavar="ACTION")
    s.required = True

    c = s.add_parser("create", help="make an update for one device or a group")
    c.add_argument("--image", required=True, help="the new image (a signed app image, or firmware with --target fw)")
    c.add_argument("--base", help="the image the devices run now: makes a detools delta (and a full fallback)")
    c.add_argument("--key", required=True, help="signing key (PEM): the app-image key the devices trust")
    c.add_argument("--key-id", help="key id (default: derived from the public key, as `ictl image`)")
    c.add_argument("--device", action="append", default=[], metavar="ID=CERT",
                   help="a device and its certificate (PEM or DER), repeatable")
    c.add_argument("--group", help="file of devices, one 'ID CERT' per line")
    c.add_argument("-o", "--out", required=True, help="directory to write")
    c.add_argument("--compression", default="heatshrink", choices=update.COMPRESSIONS,
                   help="patch compression (default heatshrink)")
    c.add_argument("--window", type=int, default=8, help="heatshrink window bits (default 8)")
    c.add_argument("--lookahead", type=int, default=7, help="heatshrink lookahead bits (default 7)")
    c.add_argument("--target", default="app", choices=("app", "fw"), help="app slots or firmware OTA (default app)")
    c.add_argument("--version", type=int, help="firmware version number (fw target)")
    c.add_argument("--counter", type=int, help="firmware security counter (fw target)")
    c.add_argument("--hwid", help="hardware id (fw target; app: from the image header)")
    c.add_argument("--ttl-days", type=float, default=30, help="metadata expiry in days (default 30)")
    c.add_argument("--map-max-kib", type=int, default=app_image.MAP_MAX // 1024,
                   help="largest app payload the boards' boot path can map, KiB (default %d; docs/verified-boot.md)"
                   % (app_image.MAP_MAX // 1024))
    c.set_defaults(func=do_create)

    c = s.add_parser("inspect", help="print what an update directory holds")
    c.add_argument("dir", help="directory made by `ictl update create`")
    c.set_defaults(func=do_inspect)

    c = s.add_parser("publish", help="roll an update out through the broker, with progress")
    c.add_argument("dir", help="directory made by `ictl update create`")
    c.add_argument("--broker", default=DEFAULT_BROKER, help="broker state directory (default build/broker)")
    c.add_argument("--device", action="append", default=[], metavar="ID", help="only these devices (repeatable)")
    c.add_argument("--until", default="applied", choices=("applied", "trial", "confirmed"),
                   help="device state that counts as done (default applied)")
    c.add_argument("--timeout", type=float, default=600, help="seconds to wait for the devices (default 600)")
    c.set_defaults(func=do_publish)


def _devices(args):
    out = []
    specs = list(args.device)
    if args.group:
        try:
            with open(args.group) as f:
                for line in f:
                    parts = line.split("#", 1)[0].split()
                    if parts:
                        if len(parts) != 2:
                            raise ToolError("%s: expected 'ID CERT' per line, got %r" % (args.group, line.strip()))
                        specs.append("%s=%s" % tuple(parts))
        except OSError as e:
            raise ToolError("cannot read %s: %s" % (args.group, e.strerror))
    if not specs:
        raise ToolError("no devices: give --device ID=CERT (repeatable) or --group FILE")
    for spec in specs:
        dev, sep, cert = spec.partition("=")
        if not sep:
            raise ToolError("--device %r: expected ID=CERT" % spec)
        pki.validate_device_id(dev)
        if not os.path.exists(cert):
            raise ToolError("device %s: certificate %s not found" % (dev, cert))
        out.append((dev, update.device_public_point(cert)))
    if len({d for d, _ in out}) != len(out):
        raise ToolError("a device is listed twice")
    return out


def do_create(args):
    if args.target == "app":
        # An image the boards could not map at boot would be refused by
        # every device (map_too_large): refused here first.
        h = app_image.parse_header(read_file(args.image, "image"))
        if h["magic"] == app_image.MAGIC:
            app_image.check_map(h["length"], args.map_max_kib * 1024)
    devices = _devices(args)
    key = app_image.load_private(args.key)
    kid = app_image.check_id(args.key_id, "key id") if args.key_id else app_image.key_id_for(key.public_key())
    new = read_file(args.image, "image")
    base = read_file(args.base, "base image") if args.base else None
    kw = dict(target=args.target, compression=args.compression, window=args.window, lookahead=args.lookahead,
              version=args.version, counter=args.counter, hwid=args.hwid, ttl=int(args.ttl_days * 86400))
    delta, full, metas = update.create_for(devices, new, base, key, kid, **kw)
    if delta:
        delta.save(os.path.join(args.out, "delta"), metas["delta"])
    full.save(os.path.join(args.out, "full"), metas["full"])
    for name, u in (("delta", delta), ("full", full)):
        if u:
            s = u.summary()
            print("%-5s %s: %d patch bytes (%s) for a %d-byte image, %d chunks, %d devices"
                  % (name, s["id"], s["patch_bytes"], s["compression"], s["result_bytes"], s["chunks"], len(devices)))
    print("wrote %s" % args.out)


def _parts(path):
    out = []
    for name in ("delta", "full"):
        d = os.path.join(path, name)
        if os.path.isdir(d):
            out.append((name, d))
    if not out:
        raise ToolError("%s holds no update (no delta/ or full/): make one with `ictl update create`" % path)
    return out


def do_inspect(args):
    for name, d in _parts(args.dir):
        with open(os.path.join(d, "update.json")) as f:
            s = json.load(f)
        print("%s:" % name)
        for k in ("id", "target", "version", "counter", "hwid", "kind", "compression", "patch_bytes",
                  "result_bytes", "chunks", "base_sha256", "expires", "devices"):
            print("  %-13s %s" % (k, s.get(k)))


def _identity(st):
    """The rollout's operator identity: fleet-updates when the broker's ACL
    has it (the console can stay connected), else the console's own."""
    pki_dir = os.path.dirname(st["ca"])
    acl = os.path.join(os.path.dirname(st["config"]), fleet_broker.ACL)
    try:
        with open(acl) as f:
            has = ("user %s\n" % update.UPDATER_ID) in f.read()
    except OSError:
        has = False
    if has:
        kp, cp = update.updater_credentials(pki_dir)
        return update.UPDATER_ID, kp, cp
    print("publish: the broker's ACL has no %s operator: connecting as %s (a running console is disconnected)"
          % (update.UPDATER_ID, pki.CONSOLE_ID), file=sys.stderr)
    kp, cp = pki.ensure_console_cert(pki.load_ca(pki_dir))
    return pki.CONSOLE_ID, kp, cp


def do_publish(args):
    st = fleet_broker.read_state(args.broker)
    if not st.get("port"):
        raise ToolError("no broker state in %s: start one with `ictl broker start --dir %s`" % (args.broker, args.broker))
    loaded = {name: update.Update.load(d) for name, d in _parts(args.dir)}
    devices = sorted(set().union(*(set(m) for _, m in loaded.values())))
    if args.device:
        missing = sorted(set(args.device) - set(devices))
        if missing:
            raise ToolError("no metadata for %s in %s" % (", ".join(missing), args.dir))
        devices = args.device
    plans = {}
    for dev in devices:
        plans[dev] = [(loaded[n][0], loaded[n][1][dev]) for n in ("delta", "full") if n in loaded and dev in loaded[n][1]]
    cid, kp, cp = _identity(st)
    r = update.Rollout(st["host"], st["port"], st["ca"], cp, kp, prefix=st.get("prefix", fleet_broker.DEFAULT_PREFIX),
                       client_id=cid)
    r.connect()
    until = {"applied": ("applied", "trial", "confirmed"), "trial": ("trial", "confirmed"),
             "confirmed": ("confirmed",)}[args.until]
    try:
        status = r.run(plans, until=until, timeout=args.timeout)
    finally:
        r.close()
    bad = 0
    for dev in devices:
        s = status[dev]
        ok = s.get("state") in until
        bad += not ok
        print("%-20s %-12s %-6s %s" % (dev, s.get("state"), s.get("kind", ""),
                                        s.get("reason", "") or ("%d%%" % s["pct"] if "pct" in s else "")))
    for dev, (n, why) in sorted(r.invalid.items()):
        print("%-20s %d invalid reports refused (the last: %s)" % (dev, n, why))
    print("%d of %d devices done; %d MQTT payload bytes sent" % (len(devices) - bad, len(devices), r.bytes_sent))
    return 1 if bad else 0
