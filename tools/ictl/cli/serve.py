"""ictl serve: the fleet service (docs/service.md, docs/console.md).

    ictl serve --broker build/broker --init          # prints the setup token once
    ictl serve --db postgresql://... --workers 2 --retain-readings 30d \\
        --webhook https://alerts.example/ironclad --webhook-secret-file secret.txt

Ingest workers store what the fleet sends (checked as `ictl console` checks
it), the rollout engine runs staged rollouts, retention deletes what is past
its time, alarms go to the webhook, and the web console serves HTTPS. Runs
until Ctrl-C / SIGTERM."""
import os
import signal
import threading

from ictl import ROOT, ToolError
from ictl.service import retention, runner

DEFAULT_DB = os.path.join(ROOT, "build", "service", "service.db")
DEFAULT_BROKER = os.path.join(ROOT, "build", "broker")


def register(sub):
    p = sub.add_parser("serve", help="the fleet service: ingest, rollouts, alarms, retention, web console (HTTPS)")
    p.add_argument("--db", default=DEFAULT_DB,
                   help="database: a file path or sqlite:///path (default build/service/service.db), "
                        "or postgresql://user@host/db")
    p.add_argument("--broker", default=DEFAULT_BROKER, help="broker state directory (default build/broker)")
    p.add_argument("--fleet-key", help="fleet data private key (default <broker pki>/fleet-data.key)")
    p.add_argument("--workers", type=int, default=1, help="ingest workers sharing the subscription (default 1)")
    p.add_argument("--first-worker", type=int, default=1, metavar="K",
                   help="number this process's workers from K (identities fleet-ingest-K...): one range per process")
    p.add_argument("--shared", action="store_true",
                   help="share the subscription with ingest workers of other processes (implied by --workers 2+ "
                        "or --first-worker 2+)")
    p.add_argument("--no-ingest", action="store_true", help="web console only (ingest runs elsewhere)")
    p.add_argument("--no-web", action="store_true", help="no web console (an ingest-only instance)")
    p.add_argument("--no-rollouts", action="store_true", help="do not run the rollout engine here")
    p.add_argument("--host", default="127.0.0.1", help="web console address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="web console port (default 8443; 0 picks a free one)")
    p.add_argument("--web-cert", help="the console's TLS certificate (PEM; default: issued by the fleet CA)")
    p.add_argument("--web-key", help="its key (PEM)")
    p.add_argument("--web-name", action="append", metavar="NAME",
                   help="host name or IP for the fleet-issued certificate (repeatable; default localhost, 127.0.0.1)")
    p.add_argument("--init", action="store_true",
                   help="print the one-time setup token for the first administrator (if none exists yet)")
    for kind, default in retention.DEFAULTS.items():
        p.add_argument("--retain-" + kind.replace("_", "-"), dest="retain_" + kind, metavar="DURATION",
                       help="keep %s this long (default %s; e.g. 30d, 12h, forever)" % (kind.replace("_", " "), default))
    p.add_argument("--webhook", metavar="URL", help="POST every alarm here (JSON)")
    p.add_argument("--webhook-secret-file", metavar="FILE",
                   help="sign webhook bodies with the key in FILE (HMAC-SHA256, header X-Ironclad-Signature)")
    p.set_defaults(func=do_serve)


def service_from_args(args):
    policy = retention.parse_policy({k: getattr(args, "retain_" + k) for k in retention.DEFAULTS})
    secret = None
    if args.webhook_secret_file:
        try:
            with open(args.webhook_secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as e:
            raise ToolError("cannot read %s: %s" % (args.webhook_secret_file, e.strerror)) from None
        if not secret:
            raise ToolError("%s is empty: put the webhook signing key in it" % args.webhook_secret_file)
    if bool(args.web_cert) != bool(args.web_key):
        raise ToolError("give both --web-cert and --web-key, or neither")
    db = args.db
    if "://" not in db:
        os.makedirs(os.path.dirname(os.path.abspath(db)), exist_ok=True)
    return runner.Service(db, args.broker, workers=args.workers, fleet_key_path=args.fleet_key,
                          web=not args.no_web, host=args.host, port=args.port, certfile=args.web_cert,
                          keyfile=args.web_key, web_hosts=tuple(args.web_name or ("localhost", "127.0.0.1")),
                          init=args.init, retention_policy=policy, webhook=args.webhook, webhook_secret=secret,
                          engine=not args.no_rollouts, ingest_enabled=not args.no_ingest,
                          first_worker=args.first_worker, shared=True if args.shared else None)


def do_serve(args):
    svc = service_from_args(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    svc.start()
    try:
        print("serve: %d ingest worker(s) on %s; database %s" % (len(svc.workers), args.broker,
                                                               svc.db_url.split("@")[-1]), flush=True)
        for kind, text in retention.describe(svc.policy).items():
            print("serve: retention %-15s %s" % (kind, text), flush=True)
        if svc.url:
            print("serve: console at %s" % svc.url, flush=True)
        if args.init:
            if svc.setup_token:
                print("serve: one-time setup token (creates the first administrator, expires): %s"
                      % svc.setup_token, flush=True)
            else:
                print("serve: an administrator exists already: no setup token", flush=True)
        try:
            stop.wait()         # SIGTERM sets it; Ctrl-C interrupts the wait
        except KeyboardInterrupt:
            pass
    finally:
        svc.stop()
    return 0
