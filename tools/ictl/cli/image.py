"""ictl image: signing keys, build/sign/verify/inspect app images, the trust
module, and flashing an image into a simulated device."""
import os

from ictl import ToolError, read_file
from ictl import image
from ictl.sim import device as sim_device
from ictl.sim import factory


def register(sub):
    p = sub.add_parser("image", help="signed app images: keys, build, sign, verify, inspect, trust, install")
    s = p.add_subparsers(dest="image_cmd", metavar="ACTION")
    s.required = True

    c = s.add_parser("keygen", help="generate an RSA-3072 image signing key (PEM)")
    c.add_argument("out", help="private key file to write (mode 0600)")
    c.add_argument("--force", action="store_true", help="replace an existing file")
    c.set_defaults(func=do_keygen)

    c = s.add_parser("build", help="build an app image from a source folder (mpremote romfs build, .py -> .mpy)")
    c.add_argument("src", help="app source folder (must hold main.py)")
    c.add_argument("-o", "--out", required=True, help="image file to write")
    c.add_argument("--key", help="signing key (PEM, ours or espsecure's); without it the image is unsigned")
    c.add_argument("--key-id", help="key id to name in the header (default: derived from the public key)")
    c.add_argument("--version", default="1.0.0", help="app version MAJOR.MINOR.PATCH (default 1.0.0)")
    c.add_argument("--counter", type=int, default=1, help="security counter for anti-rollback (default 1)")
    c.add_argument("--hwid", default="esp32-sim", help="hardware id the image is for (default esp32-sim)")
    c.add_argument("--map-max-kib", type=int, default=image.MAP_MAX // 1024,
                   help="largest app payload the board's boot path can map, KiB (default %d; docs/verified-boot.md)"
                   % (image.MAP_MAX // 1024))
    c.set_defaults(func=do_build)

    c = s.add_parser("sign", help="sign an (unsigned or signed) image with a key")
    c.add_argument("image", help="image file")
    c.add_argument("-o", "--out", required=True, help="signed image file to write")
    c.add_argument("--key", required=True, help="signing key (PEM)")
    c.add_argument("--key-id", help="key id (default: derived from the public key)")
    c.set_defaults(func=do_sign)

    for name, fn, hlp in (("verify", do_verify, "verify an image against trusted public keys (exit 0 if valid)"),
                          ("inspect", do_inspect, "print every header field and the verdict")):
        c = s.add_parser(name, help=hlp)
        c.add_argument("image", help="image file")
        c.add_argument("--key", action="append", default=[], metavar="[ID=]PEM",
                       help="trusted public (or private) key, repeatable; ID defaults to the derived key id")
        c.add_argument("--retired", action="append", default=[], metavar="ID", help="retired key id, repeatable")
        c.add_argument("--hwid", help="hardware id the device has (default: not checked)")
        c.add_argument("--floor", type=int, default=0, help="security counter floor (default 0)")
        c.set_defaults(func=fn)

    c = s.add_parser("trust", help="generate the trust module (ironclad_trust.py) frozen into the firmware")
    c.add_argument("--key", action="append", default=[], metavar="[ID=]PEM",
                   help="trusted public (or private) key, repeatable")
    c.add_argument("--retire", action="append", default=[], metavar="ID",
                   help="key id the device must reject from now on, repeatable")
    c.add_argument("--hwid", help="hardware id of the board (default: the device's, with --device)")
    c.add_argument("--min-counter", type=int, default=0,
                   help="lowest app security counter this firmware accepts, whatever the boot state says (default 0)")
    c.add_argument("-o", "--out", help="file to write (for a firmware build to freeze)")
    c.add_argument("--device", help="simulated device: its board's firmware gets the module (board/), with its hwid")
    c.add_argument("--map-max-kib", type=int, default=image.MAP_MAX // 1024,
                   help="largest app payload the board's boot path can map, KiB (default %d; docs/verified-boot.md)"
                   % (image.MAP_MAX // 1024))
    c.set_defaults(func=do_trust)

    c = s.add_parser("install", help="flash an image into a simulated device (factory flashing, as esptool)")
    c.add_argument("dir", help="device state directory")
    c.add_argument("image", help="image file")
    c.add_argument("--slot", default="app_a", choices=image.SLOTS, help="app slot (default app_a)")
    c.add_argument("--inactive", action="store_true", help="only write the slot; do not make it the active image")
    c.set_defaults(func=do_install)


def _write(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def do_keygen(args):
    key = image.keygen(args.out, force=args.force)
    print("wrote %s (RSA-%d, key id %s)" % (args.out, key.key_size, image.key_id_for(key.public_key())))


def do_build(args):
    key = image.load_private(args.key) if args.key else None
    if args.key_id and not key:
        raise ToolError("--key-id needs --key")
    data = image.build(args.src, key, args.key_id, args.version, args.counter, args.hwid, args.map_max_kib * 1024)
    _write(args.out, data)
    h = image.parse_header(data)
    print("wrote %s: %d bytes, version %s, counter %d, hwid %s, %s" % (
        args.out, len(data), image.version_str(h["version"]), h["counter"], h["hwid"],
        "key id " + h["key_id"] if key else "UNSIGNED (sign it with `ictl image sign`)"))


def do_sign(args):
    data = image.sign(read_file(args.image), image.load_private(args.key), args.key_id)
    _write(args.out, data)
    print("wrote %s: signed with key id %s" % (args.out, image.parse_header(data)["key_id"]))


def _keys(specs):
    keys = {}
    for spec in specs:
        kid, pub = image.parse_key_spec(spec)
        keys[kid] = pub
    return keys


def do_verify(args):
    if not args.key:
        raise ToolError("give at least one trusted key with --key")
    h, reason = image.verify(read_file(args.image), _keys(args.key), args.hwid, args.floor, args.retired)
    if reason:
        raise ToolError("%s: rejected: %s" % (args.image, reason))
    print("%s: valid (version %s, counter %d, hwid %s, key id %s)" % (
        args.image, image.version_str(h["version"]), h["counter"], h["hwid"], h["key_id"]))


def do_inspect(args):
    lines, reason = image.inspect_lines(read_file(args.image), _keys(args.key), args.hwid, args.floor, args.retired)
    print("\n".join(lines))
    return 1 if reason and args.key else 0


def do_trust(args):
    if not args.key:
        raise ToolError("give at least one trusted key with --key")
    keys = [image.parse_key_spec(spec) for spec in args.key]
    if args.device:
        if args.hwid or args.out:
            raise ToolError("with --device the hardware id is the device's and the output its board/ dir")
        out = factory.trust_device(args.device, keys, args.retire, args.min_counter, args.map_max_kib * 1024)
        hwid = sim_device.load(args.device)["hwid"]
    else:
        if not args.out or not args.hwid:
            raise ToolError("give --out and --hwid, or --device")
        hwid, out = args.hwid, args.out
        image.write_trust(out, keys, hwid, args.retire, args.min_counter, args.map_max_kib * 1024)
    print("wrote %s: hwid %s, keys %s, retired %s" % (
        out, hwid, ", ".join(k for k, _ in keys if k not in args.retire) or "none", ", ".join(args.retire) or "none"))


def do_install(args):
    data = read_file(args.image)
    factory.flash_image(args.dir, data, args.slot, active=not args.inactive)
    print("flashed %s into %s of %s%s" % (args.image, args.slot, args.dir, "" if args.inactive else " (active, confirmed)"))
