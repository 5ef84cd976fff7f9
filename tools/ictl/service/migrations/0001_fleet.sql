-- The fleet service's core tables (owner: CORE; docs/service.md "Schema").
-- Times are unix seconds (DOUBLE PRECISION); JSON as TEXT; see db.py for
-- the two SQLite spellings mapped for PostgreSQL.

-- One row per device ever heard from. console_state is the console's
-- per-device memory (public key, key epochs, highest Partial IV per topic,
-- last event seq and hash: tools/ictl/console.py), kept here so every
-- ingest worker checks against the same history.
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    pub TEXT,
    cert_pem TEXT,
    cert_serial TEXT,
    cert_not_after DOUBLE PRECISION,
    key_epoch TEXT,
    online INTEGER NOT NULL DEFAULT 0,
    app_version TEXT,
    first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,
    last_event_seq BIGINT,
    chain_ok INTEGER NOT NULL DEFAULT 1,
    console_state TEXT
);

-- Sealed telemetry, opened and checked. counter: the message's COSE
-- Partial IV, unique per device key and topic (a redelivery is stored
-- once); key_id: the first 16 hex digits of SHA-256 of the device's public
-- key (a re-provisioned device starts counting again under a new key).
CREATE TABLE readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    counter BIGINT NOT NULL,
    seq BIGINT,
    device_ts DOUBLE PRECISION,
    received_at DOUBLE PRECISION NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (device_id, key_id, counter)
);
CREATE INDEX readings_device_time ON readings (device_id, received_at);
CREATE INDEX readings_time ON readings (received_at);

-- Security events (docs/events.md), one row per record whose chain link
-- checked (or that arrived after a gap: the gap itself is an alarm).
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    device_ms BIGINT,
    device_wall BIGINT,
    hash TEXT NOT NULL,
    counter BIGINT,
    received_at DOUBLE PRECISION NOT NULL,
    UNIQUE (device_id, key_id, seq, hash)
);
CREATE INDEX events_time ON events (received_at);
CREATE INDEX events_device ON events (device_id, seq);

-- Commands the service sent (fleetops.send_command) and the replies.
CREATE TABLE commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    op TEXT NOT NULL,
    args TEXT NOT NULL,
    counter BIGINT NOT NULL,
    sent_by TEXT NOT NULL,
    sent_at DOUBLE PRECISION NOT NULL,
    UNIQUE (device_id, counter)
);
CREATE TABLE replies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    cmd BIGINT,
    ok INTEGER NOT NULL,
    reason TEXT NOT NULL,
    counter BIGINT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    UNIQUE (device_id, key_id, counter)
);

-- The devices' update reports (<prefix>/<id>/state/update, JSON, not
-- sealed: docs/updates.md). digest: SHA-256 of the payload, so a QoS 1
-- redelivery is stored once (the same report twice adds only seen_count).
CREATE TABLE update_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    update_id TEXT,
    state TEXT,
    pct INTEGER,
    reason TEXT,
    body TEXT NOT NULL,
    digest TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    UNIQUE (device_id, digest)
);
CREATE INDEX update_reports_device ON update_reports (device_id, received_at);

-- Alarms: a check failed (kind: chain_gap, forgery, key_change, rollback,
-- replay, other). Webhook delivery state beside it. source: a digest of
-- the message that raised it (every worker sees the retained state topics:
-- the same alarm is stored once); NULL when there is no such message.
CREATE TABLE alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    raised_at DOUBLE PRECISION NOT NULL,
    acked_at DOUBLE PRECISION,
    acked_by TEXT,
    webhook_state TEXT NOT NULL DEFAULT 'pending',
    webhook_tries INTEGER NOT NULL DEFAULT 0,
    webhook_at DOUBLE PRECISION,
    source TEXT,
    UNIQUE (device_id, source)
);
CREATE INDEX alarms_open ON alarms (acked_at, raised_at);
CREATE INDEX alarms_webhook ON alarms (webhook_state);

-- Staged rollouts (rollout.py). state: awaiting_approval, ready, running,
-- paused, stopped (auto-stop), cancelled, done. params: JSON (groups, rate,
-- thresholds); update_archive: the uploaded update (a tar of what `ictl
-- update create` wrote), kept in the database so any instance can run it.
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    update_id TEXT NOT NULL,
    update_summary TEXT NOT NULL,
    update_archive BLOB NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    stop_reason TEXT,
    approvals_needed INTEGER NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    started_by TEXT,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    current_group INTEGER NOT NULL DEFAULT -1
);
CREATE TABLE rollout_groups (
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    idx INTEGER NOT NULL,
    size INTEGER NOT NULL,
    state TEXT NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    PRIMARY KEY (rollout_id, idx)
);
CREATE TABLE rollout_devices (
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    device_id TEXT NOT NULL,
    group_idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    kind TEXT,
    pct INTEGER,
    reason TEXT,
    offered_at DOUBLE PRECISION,
    updated_at DOUBLE PRECISION,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE TABLE rollout_approvals (
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    approved_by TEXT NOT NULL,
    approved_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (rollout_id, approved_by)
);
CREATE TABLE rollout_timeline (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    t DOUBLE PRECISION NOT NULL,
    device_id TEXT,
    state TEXT NOT NULL,
    pct INTEGER,
    reason TEXT
);
CREATE INDEX rollout_timeline_r ON rollout_timeline (rollout_id, t);

-- Copies of the fleet CA's inventory (ca.py, inventory.jsonl) and the
-- provisioning log (provision.py, provision.jsonl), imported by line
-- digest so a re-import adds nothing.
CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    fingerprint TEXT,
    not_after TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    issued_at TEXT,
    revoked_at TEXT,
    operator TEXT
);
CREATE TABLE provisioning_records (
    digest TEXT PRIMARY KEY,
    device_id TEXT,
    at TEXT,
    outcome TEXT,
    operator TEXT,
    record TEXT NOT NULL
);

-- Service-wide settings and counters kept in the database (web tier and
-- workers are stateless): retention runs, ingest worker heartbeats.
CREATE TABLE service_state (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
