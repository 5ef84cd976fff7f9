"""The whole service in one process: N ingest workers, the rollout engine,
retention, the alarm webhook, the PKI import, and WEB's HTTPS console.
`ictl serve` and `make run` (tools/ictl/cmd_run.py) start it; several such
processes can share one PostgreSQL database (docs/service.md "Scaling").

    svc = Service(db_url, broker_dir="build/broker", workers=2).start()
    svc.url, svc.setup_token
    svc.stop()
"""
import contextlib
import os
import threading

from ictl import ToolError, fleetkeys, pki
from ictl import broker as fleet_broker
from ictl import update as upd
from ictl.service import alarms, fleetops, ingest, retention, rollout
from ictl.service import db as service_db

PKI_SYNC_S = 30.0


def operators(workers, first=1):
    """The broker ACL identities a service with `workers` ingest workers
    (numbered from `first`) uses."""
    return tuple(ingest.worker_id(i) for i in range(first, first + workers)) + (upd.UPDATER_ID, fleetops.SERVICE_ID)


def broker_settings(broker_dir):
    """(host, port, ca path, prefix, pki dir, acl text) of a broker started
    by ictl (its broker.json)."""
    st = fleet_broker.read_state(broker_dir)
    if not st.get("port"):
        raise ToolError("no broker state in %s: start one with `ictl broker start --dir %s`" % (broker_dir, broker_dir))
    acl = ""
    try:
        with open(os.path.join(os.path.dirname(st["config"]), fleet_broker.ACL)) as f:
            acl = f.read()
    except (OSError, KeyError):
        pass
    return st["host"], st["port"], st["ca"], st.get("prefix", fleet_broker.DEFAULT_PREFIX), os.path.dirname(st["ca"]), acl


class Service:
    """See the module docstring. web: start WEB's server (host, port,
    certfile/keyfile or a certificate from the fleet PKI); init: issue the
    one-time setup token when no administrator exists yet."""

    def __init__(self, db_url, broker_dir, workers=1, fleet_key_path=None, web=True, host="127.0.0.1", port=8443,
                 certfile=None, keyfile=None, web_hosts=pki.DEFAULT_SERVER_HOSTS, web_config=None, init=False,
                 retention_policy=None, retention_interval=60.0, webhook=None, webhook_secret=None, engine=True,
                 ingest_enabled=True, provisioning_log=None, first_worker=1, shared=None):
        if workers < 0 or workers > 64:
            raise ToolError("--workers: 0 to 64")
        if not 1 <= first_worker <= 999:
            raise ToolError("--first-worker: 1 to 999")
        self.first_worker = first_worker
        # several workers, in this process or others, share the subscription
        self.shared = workers > 1 or first_worker > 1 if shared is None else shared
        self.db_url = db_url
        self.broker_dir = broker_dir
        self.workers_n = workers
        self.fleet_key_path = fleet_key_path
        self.web, self.host, self.port = web, host, port
        self.certfile, self.keyfile, self.web_hosts = certfile, keyfile, web_hosts
        self.web_config = web_config or {}
        self.init = init
        self.policy = retention_policy or retention.parse_policy()
        self.retention_interval = retention_interval
        self.webhook_url = alarms.check_webhook_url(webhook) if webhook else None
        self.webhook_secret = webhook_secret
        self.engine_enabled = engine
        self.ingest_enabled = ingest_enabled
        self.provisioning_log = provisioning_log
        self.workers, self.parts = [], []
        self.engine = self.server = self.webhook = self.retention = None
        self.url = None
        self.setup_token = None
        self._stop = threading.Event()
        self._sync_t = None

    def start(self):
        host, port, ca_path, prefix, pki_dir, acl = broker_settings(self.broker_dir)
        self.pki_dir = pki_dir
        key = fleetkeys.load(self.fleet_key_path) if self.fleet_key_path else fleetkeys.ensure(pki_dir)
        db = service_db.connect(self.db_url)
        try:
            db.migrate()
            fleetops.sync_pki(db, pki_dir, self.provisioning_log)
        finally:
            db.close()
        need = operators(self.workers_n if self.ingest_enabled else 0, self.first_worker)
        missing = [n for n in need if ("user %s\n" % n) not in acl]
        if missing:
            raise ToolError("the broker's ACL lacks the service's operator identities %s: start the broker with "
                            "`ictl broker start --service-workers %d` (or add them to your broker's ACL)"
                            % (", ".join(missing), self.first_worker + self.workers_n - 1))
        try:
            if self.ingest_enabled:
                for i in range(self.first_worker, self.first_worker + self.workers_n):
                    kp, cp = ingest.worker_credentials(pki_dir, i)
                    w = ingest.Ingest(self.db_url, key, ca_path, prefix, host, port, cp, kp, ingest.worker_id(i),
                                      shared=self.shared, events=i == 1)
                    self.workers.append(w.start())
            fleetops.configure(fleetops.Ops(pki_dir, key, host, port, prefix, self.broker_dir))
            if self.engine_enabled:
                kp, cp = upd.updater_credentials(pki_dir)
                self.engine = rollout.Engine(self.db_url, host, port, ca_path, cp, kp, prefix).start()
            self.retention = retention.Retention(self.db_url, self.policy, self.retention_interval).start()
            if self.webhook_url:
                self.webhook = alarms.Webhook(self.db_url, self.webhook_url, self.webhook_secret).start()
            self._sync_t = threading.Thread(target=self._sync, name="pki-sync", daemon=True)
            self._sync_t.start()
            if self.web:
                from ictl.service.web import server
                if self.certfile and self.keyfile:
                    kf, cf = self.keyfile, self.certfile
                else:
                    kf, cf = server.ensure_web_cert(pki_dir, self.web_hosts)
                self.server = server.start(self.db_url, self.host, self.port, cf, kf, self.web_config)
                self.url = self.server.url
            if self.init:
                self.setup_token = self._setup_token()
        except BaseException:
            self.stop()
            raise
        return self

    def _setup_token(self):
        from ictl.service.web import accounts
        db = service_db.connect(self.db_url)
        try:
            return accounts.init_setup_token(db, self.web_config)
        except accounts.AccountError:
            return None         # an administrator exists: nothing to set up
        finally:
            db.close()

    def _sync(self):
        db = service_db.connect(self.db_url)
        try:
            while not self._stop.wait(PKI_SYNC_S):
                try:
                    fleetops.sync_pki(db, self.pki_dir, self.provisioning_log)
                except Exception:   # noqa: BLE001 - a half-written inventory line: next round
                    pass
        finally:
            db.close()

    def stop(self):
        self._stop.set()
        for part in [self.server, self.webhook, self.retention, self.engine] + self.workers:
            if part is not None:
                try:
                    part.stop()
                except Exception:   # noqa: BLE001 - stop the rest regardless
                    pass
        if fleetops._ops is not None:
            fleetops._ops.close()
        if self._sync_t:
            self._sync_t.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@contextlib.contextmanager
def for_run(root, br, fleet_key_path, port, say):
    """`make run`'s fleet service (ictl.cmd_run), for its ExitStack:
    SQLite in <root>/service, one worker, the console over HTTPS with a
    fleet-issued certificate, the one-time setup token printed."""
    os.makedirs(os.path.join(root, "service"), exist_ok=True)
    svc = Service(os.path.join(root, "service", "service.db"), br.state_dir, workers=1,
                  fleet_key_path=fleet_key_path, port=port, init=True,
                  provisioning_log=os.path.join(root, "provisioning.jsonl")).start()
    try:
        say("fleet service (`ictl serve`): console at %s (certificate from the fleet CA: %s)"
            % (svc.url, os.path.join(br.pki_dir, pki.CA_CERT)))
        if svc.setup_token:
            say("one-time setup token for the first administrator: %s" % svc.setup_token)
        yield svc
    finally:
        svc.stop()
