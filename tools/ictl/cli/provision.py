"""ictl provision: give a board on USB its identity (see ictl/provision.py)."""
import getpass
import os
import sys

from ictl import ToolError, read_file, broker as fleet_broker, pki
from ictl import provision
from ictl.cli.pki import DEFAULT_DIR


def register(sub):
    p = sub.add_parser(
        "provision", help="provision a board over USB: key made on the board, certificate from the fleet CA",
        description="Provision the board on PORT (a USB serial port, or a virtual board's pty): the board "
                    "makes its own P-256 key and CSR, the fleet CA certifies it, and the certificate, CA, broker "
                    "settings and fleet data key are written into the board's keystore. Refuses a provisioned "
                    "board unless --reprovision. Appends a JSON line per attempt to the provisioning log.")
    p.add_argument("--port", required=True, help="the board's port, as mpremote accepts it (e.g. /dev/ttyUSB0)")
    p.add_argument("--device-id", help="the device id (certificate CN, topic level); default: the inventory's id for this chip, else a random ic-<hex>")
    p.add_argument("--ca-dir", help="fleet CA directory (default: the broker's, or build/broker/pki)")
    p.add_argument("--broker-dir", help="take broker host, port and prefix from this `ictl broker` state directory")
    p.add_argument("--broker-host", help="broker host the board connects to")
    p.add_argument("--broker-port", type=int, help="broker TLS port")
    p.add_argument("--broker-hostname", help="name the broker's certificate must carry (default: the host; localhost for 127.0.0.1)")
    p.add_argument("--broker-ca", metavar="PATH",
                   help="CA certificate(s) that certify the broker, PEM or DER, when the fleet CA does not "
                        "(AWS IoT Core: Amazon's root CA); default: the fleet CA")
    p.add_argument("--prefix", help="topic prefix (default: the broker's, or %s)" % fleet_broker.DEFAULT_PREFIX)
    p.add_argument("--ntp", metavar="HOST[:PORT]",
                   help="time server the board sets its clock from before TLS (SNTP, port 123 by default); "
                        "without it the board's clock starts from its floor: this host's time at provisioning, "
                        "moved on while the board runs")
    p.add_argument("--wifi-ssid", metavar="SSID", help="the Wi-Fi network the board joins (station mode)")
    p.add_argument("--wifi-passphrase-file", metavar="PATH",
                   help="file whose first line is the Wi-Fi passphrase (default: $%s, else asked at the terminal; "
                        "never given on the command line)" % PASSPHRASE_ENV)
    p.add_argument("--wifi-open", action="store_true", help="the Wi-Fi network is open (no passphrase)")
    p.add_argument("--fleet-data-pub", required=True, metavar="PATH",
                   help="the fleet data public key (P-256; PEM, DER or the 65-byte point)")
    p.add_argument("--operator", help="who provisions, for the records (default: your login name)")
    p.add_argument("--log", help="provisioning log, JSON lines (default: <ca-dir>/provision.jsonl)")
    p.add_argument("--days", type=int, default=pki.CLIENT_DAYS, help="certificate validity in days (default %d)" % pki.CLIENT_DAYS)
    p.add_argument("--reprovision", action="store_true", help="wipe a provisioned board first (asks for confirmation)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation (scripts)")
    p.set_defaults(func=do_provision)


PASSPHRASE_ENV = "ICTL_WIFI_PASSPHRASE"


def wifi_from_args(args):
    """(ssid, passphrase) or None. The passphrase from a file, the
    environment or a prompt without echo: never an argument."""
    if not args.wifi_ssid:
        if args.wifi_passphrase_file or args.wifi_open:
            raise ToolError("--wifi-passphrase-file/--wifi-open need --wifi-ssid")
        return None
    if args.wifi_open:
        key = ""
    elif args.wifi_passphrase_file:
        text = read_file(args.wifi_passphrase_file, "the Wi-Fi passphrase file").decode("utf-8", "replace")
        key = (text.splitlines() or [""])[0]
    elif os.environ.get(PASSPHRASE_ENV) is not None:
        key = os.environ[PASSPHRASE_ENV]
    elif sys.stdin.isatty():
        key = getpass.getpass("Wi-Fi passphrase for %s: " % args.wifi_ssid)
    else:
        raise ToolError("no Wi-Fi passphrase: give --wifi-passphrase-file, set %s, or run at a terminal" % PASSPHRASE_ENV)
    return provision.wifi_credentials(args.wifi_ssid, key)


def _confirm(yes):
    def ask(question):
        if yes:
            return True
        if not sys.stdin.isatty():
            raise ToolError("--reprovision wipes the board: confirm at a terminal, or pass --yes")
        return input(question + " [y/N] ").strip().lower() in ("y", "yes")
    return ask


def do_provision(args):
    ca_dir = args.ca_dir
    host, port, prefix = args.broker_host, args.broker_port, args.prefix
    if args.broker_dir:
        st = fleet_broker.read_state(args.broker_dir)
        if not st.get("port"):
            raise ToolError("no broker state in %s: start one with `ictl broker start`, or give --broker-host/--broker-port" % args.broker_dir)
        host, port = host or st["host"], port or st["port"]
        prefix = prefix or st.get("prefix")
        ca_dir = ca_dir or os.path.dirname(st["ca"])
    if not host or not port:
        raise ToolError("where does the board connect? give --broker-dir, or --broker-host and --broker-port")
    if args.days < 1:
        raise ToolError("--days must be at least 1")
    broker = provision.broker_settings(host, port, args.broker_hostname, prefix or fleet_broker.DEFAULT_PREFIX,
                                       args.ntp)
    ca = pki.load_ca(ca_dir or DEFAULT_DIR)
    if ca.development:
        print("note: the fleet CA in %s is DEVELOPMENT ONLY" % ca.dir)
    fleet_pub = provision.load_fleet_pub(args.fleet_data_pub)
    wifi = wifi_from_args(args)
    provision.Provisioner(args.port, ca, broker, fleet_pub, device_id=args.device_id, operator=args.operator,
                          log_path=args.log, reprovision=args.reprovision, confirm=_confirm(args.yes),
                          days=args.days, wifi=wifi,
                          broker_ca=provision.load_broker_ca(args.broker_ca) if args.broker_ca else None).run()
