"""ictl device: create and inspect simulated devices (state directories)."""
import json

from ictl.sim import device


def register(sub):
    p = sub.add_parser("device", help="create and inspect simulated devices")
    s = p.add_subparsers(dest="device_cmd", metavar="ACTION")
    s.required = True
    c = s.add_parser("create", help="create a fresh simulated ESP32 (erased 4 MiB flash)")
    c.add_argument("dir", help="device state directory")
    c.add_argument("--hwid", default="esp32-sim", help="hardware id the images must name (default: esp32-sim)")
    c.add_argument("--table", default=device.DEFAULT_TABLE, help="partition table CSV")
    c.add_argument("--force", action="store_true", help="replace an existing device")
    c.add_argument("--chip", default="esp32", choices=("esp32", "esp32s3"),
                   help="the chip whose MicroPython surface the stand-ins offer (firmware/profile/; default esp32)")
    c.add_argument("--development", action="store_true",
                   help="a development board: flash encryption off (default: on, as on a production board)")
    c.set_defaults(func=do_create)
    i = s.add_parser("info", help="print a device's identity and partition table")
    i.add_argument("dir", help="device state directory")
    i.set_defaults(func=do_info)


def do_create(args):
    cfg = device.create(args.dir, hwid=args.hwid, table=args.table, force=args.force, chip=args.chip,
                        flash_encryption=not args.development)
    print("created device %s (hwid %s, unique id %s, flash encryption %s)"
          % (args.dir, cfg["hwid"], cfg["unique_id"], "on" if cfg["efuse"]["flash_encryption"] else "off"))


def do_info(args):
    cfg = device.load(args.dir)
    print(json.dumps({k: cfg[k] for k in ("hwid", "unique_id", "flash_size")}))
    for p in cfg["partitions"]:
        print("  %-9s type %d subtype 0x%02x  0x%06x  %7d bytes" % (p["label"], p["type"], p["subtype"], p["offset"], p["size"]))
