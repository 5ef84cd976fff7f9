# Signed, encrypted, resumable updates (format: docs/updates.md).
#
# The agent feeds every message from <prefix>/<id>/update to Updater.on_message
# and publishes what the updater reports (a dict; report_bytes() encodes it).
# Two kinds of message:
#   b"M" + COSE_Sign1 metadata (RSA-3072-PSS, the image signing key)
#   b"C" + update id (16) + chunk index (u32 BE) + AES-CCM(chunk, 16-byte tag)
#
# Order of work, and why:
#   1. metadata: signature, device id, hardware id, expiry (against the newest
#      signed time this device has seen, persisted), version and security
#      counter (no downgrade, no replay), lengths against the slots, the base
#      image's hash (deltas), then the content key is unwrapped (ECDH-ES with
#      the device key, HKDF-SHA256, AES key wrap). Nothing is written to a slot
#      before all of it passes; the metadata is then kept on the filesystem.
#   2. chunks, strictly in order, each authenticated (AAD = update id and
#      index) before a byte of it is used, decrypted and fed to the streaming
#      detools applier: base from the running slot, result into the other.
#      A chain hash over the chunks ties the whole patch to the signature.
#   3. checkpoints: every CKPT_SECTORS result sectors the applier's state (and
#      the chain hash so far) is saved; after a reboot or a lost connection the
#      device asks for the chunk holding the checkpoint and carries on from
#      there. The running slot never changes during an update, so redoing a
#      sector is harmless.
#   4. the result is read back and hashed, the app image's signature checked
#      (image.verify via slots.install), and the slot switched on trial;
#      then a reboot. The next boot reports "trial"; the agent's health check
#      calls confirm(); a boot that went back to the old slot reports
#      "rolled_back".
#   Steps 2 and 4 feed the hardware watchdog (ironclad.watchdog; nothing
#   before the agent starts it) for every sector written and every 4 KiB
#   read: a chunk of a delta can expand into 64 result sectors, and each
#   takes a flash erase (~45 ms typical, 500 ms worst) and 16 page programs
#   (~10 ms) on a board, all inside one MQTT callback, away from the loop's
#   feed. A watchdog reset there redoes the work from the last checkpoint;
#   in the install it spends the update, and on a trial image a trial
#   attempt.
# A rejection at any step leaves the running slot and the boot state as they
# were, records a security event and reports the reason.
import gc
import hashlib
import json
import os
import struct
import time
from micropython import const

import esp32

# Everything imported up front: a module loaded mid-update would scatter its
# code through the free heap just before the 4 KiB buffers are allocated.
from ironclad import bootstate, cbor, clock, der, detools, events, image, kdf, keywrap, p256, rsapss, slots, watchdog
from ironclad.ccm import CCM, AuthError
from ironclad.throttle import Throttle

STORE = "/ironclad/update"  # littlefs directory (tests point it elsewhere)

CHUNK = const(4096)
WINDOW = const(8)  # chunks asked for at a time
CKPT_SECTORS = const(4)  # result sectors between checkpoints
REASK_MS = const(15000)  # ask again when no chunk came for this long
MAX_META = const(2048)
MAX_MESSAGE = const(4133)  # a chunk message: 1 + 16 + 4 + CHUNK + 16
MAX_PACKET = const(4352)  # MQTTClient(max_packet=...) that fits it with its topic
_TAG = const(16)
_ID_LEN = const(16)
_ALG_PS256 = const(-37)
_FW_MAGIC = const(0xE9)  # first byte of an ESP app image (what set_boot checks)

# Report states.
IDLE = "idle"
DOWNLOADING = "downloading"
APPLIED = "applied"
TRIAL = "trial"
CONFIRMED = "confirmed"
ROLLED_BACK = "rolled_back"
REJECTED = "rejected"

# Reasons that end the download in progress (the others refuse one message).
_FATAL = ("bad_chunk", "bad_patch", "bad_result", "switch_failed")

_CKPT_HEAD = "<4s16sII32s"  # magic, update id, next chunk, skip, chain
_CKPT_MAGIC = b"UCK1"


class Rejected(Exception):
    """An update (or one message of it) refused; args[0] is the reason code."""

    @property
    def reason(self):
        return self.args[0]


def report_bytes(rep):
    """A report as the bytes the agent publishes (JSON: nothing in it is secret)."""
    return json.dumps(rep).encode()


def chain_step(prev, chunk):
    """The patch digest: d0 = 32 zero bytes, d(i+1) = SHA-256(d(i) || chunk i).
    Chained rather than one SHA-256 so a resumed download can go on checking
    from any chunk boundary."""
    h = hashlib.sha256(prev)
    h.update(chunk)
    return h.digest()


def kek(z, update_id, device_id, epk):
    """The key-wrapping key for this device: HKDF-SHA256 over the ECDH secret."""
    return kdf.hkdf(z, update_id, b"ironclad update kek " + device_id.encode() + b" " + bytes(epk), 16)


def nonce(index):
    return b"\x00" * 9 + struct.pack(">I", index)


def aad(update_id, index):
    return b"ICUC" + bytes(update_id) + struct.pack(">I", index)


def _wall():
    t = int(time.time())
    if time.gmtime(0)[0] == 2000:  # MicroPython's embedded epoch
        t += 946684800
    return t


def _path(name):
    return STORE + "/" + name


def _mkdirs():
    p = ""
    for part in STORE.strip("/").split("/"):
        p += "/" + part
        try:
            os.mkdir(p)
        except OSError:
            pass


def _read(name):
    try:
        with open(_path(name), "rb") as f:
            return f.read()
    except OSError:
        return None


def _write(name, data):
    # littlefs keeps a file's old contents until it is closed, so a power
    # cut leaves either the old file or the new one.
    _mkdirs()
    with open(_path(name), "wb") as f:
        f.write(data)


def _remove(name):
    try:
        os.remove(_path(name))
    except OSError:
        pass


def _part(label):
    P = esp32.Partition
    found = P.find(P.TYPE_DATA, label=label) or P.find(P.TYPE_APP, label=label)
    if not found:
        raise Rejected("no_partition")
    return found[0]


def _slot_sha(part, n, buf):
    # SHA-256 of the first n bytes of a partition, through one buffer (up
    # to a whole 1.5 MiB firmware slot: the watchdog is fed as it goes).
    h = hashlib.sha256()
    mv = memoryview(buf)
    off = 0
    while off < n:
        k = min(len(buf), n - off)
        part.readblocks(off // CHUNK, mv[:k], off % CHUNK)
        h.update(mv[:k])
        off += k
        watchdog.feed()
    return h.digest()


def _scalar(key):
    # The 32-byte P-256 scalar from a raw scalar or the keystore's SEC1
    # ECPrivateKey DER (as ironclad.telemetry reads it; not imported from
    # there, to keep the telemetry stack out of the updater's heap).
    if len(key) == 32:
        return bytes(key)
    s, e = der.expect(key, 0, len(key), 0x30)
    v, pos = der.read_uint(key, s, e, 1)
    a, b = der.expect(key, pos, e, 0x04)
    if v != 1 or b - a != 32:
        raise ValueError("not a P-256 SEC1 private key")
    return bytes(key[a:b])


def _need(m, key, typ, n=None):
    v = m.get(key)
    if not isinstance(v, typ) or (n is not None and len(v) != n) or (typ is int and v < 0):
        raise Rejected("bad_metadata")
    return v


class Manifest:
    """The signed fields, checked for type and shape (docs/updates.md)."""

    def __init__(self, m):
        if not isinstance(m, dict) or m.get("v") != 1:
            raise Rejected("bad_metadata")
        self.id = _need(m, "id", bytes, _ID_LEN)
        self.target = _need(m, "target", str)
        if self.target not in ("app", "fw"):
            raise Rejected("bad_metadata")
        self.hwid = _need(m, "hwid", str)
        self.dev = _need(m, "dev", str)
        self.ver = _need(m, "ver", int)
        self.ctr = _need(m, "ctr", int)
        self.iat = _need(m, "iat", int)
        self.exp = _need(m, "exp", int)
        base = m.get("base")
        if base is None:
            self.base_len, self.base_sha, self.base_ver = 0, None, None
        elif isinstance(base, dict):
            self.base_len = _need(base, "len", int)
            self.base_sha = _need(base, "sha", bytes, 32)
            self.base_ver = _need(base, "ver", int)
        else:
            raise Rejected("bad_metadata")
        patch = _need(m, "patch", dict)
        self.patch_len = _need(patch, "len", int)
        self.chain = _need(patch, "chain", bytes, 32)
        self.comp = _need(patch, "comp", str)
        res = _need(m, "result", dict)
        self.result_len = _need(res, "len", int)
        self.result_sha = _need(res, "sha", bytes, 32)
        self.n = _need(m, "n", int)
        if _need(m, "chunk", int) != CHUNK or self.n != (self.patch_len + CHUNK - 1) // CHUNK \
                or self.patch_len < 2 or self.iat > self.exp:
            raise Rejected("bad_metadata")
        kw = _need(m, "kw", dict)
        self.epk = _need(kw, "epk", bytes, 65)
        self.wk = _need(kw, "wk", bytes, 24)


def open_metadata(msg, anchors):
    """Check the signature of a metadata message (without its b"M") and
    return (Manifest, key id). Raises Rejected."""
    if len(msg) > MAX_META:
        raise Rejected("bad_message")
    try:
        top = cbor.decode(msg)
        if not isinstance(top, cbor.Tag) or top.tag != 18 or not isinstance(top.value, list) \
                or len(top.value) != 4:
            raise Rejected("bad_message")
        prot, unprot, payload, sig = top.value
        if not isinstance(prot, bytes) or not isinstance(unprot, dict) or not isinstance(payload, bytes) \
                or not isinstance(sig, bytes):
            raise Rejected("bad_message")
        hdr = cbor.decode(prot)
    except cbor.CBORError:
        raise Rejected("bad_message")
    if not isinstance(hdr, dict) or hdr.get(1) != _ALG_PS256 or not isinstance(hdr.get(4), bytes) \
            or set(hdr) != {1, 4}:
        raise Rejected("bad_message")
    try:
        kid = hdr[4].decode()
    except UnicodeError:
        # Any bytes can arrive here before the signature is checked: a key
        # id that is not UTF-8 names no key of ours.
        raise Rejected("unknown_key", "key id not UTF-8")
    if kid in anchors.RETIRED:
        raise Rejected("key_retired")
    key = anchors.KEYS.get(kid)
    if key is None:
        raise Rejected("unknown_key")
    # COSE Sig_structure (RFC 9052 section 4.4), no external AAD.
    tbs = cbor.encode(["Signature1", prot, b"", payload])
    if not rsapss.verify(key[0], key[1], hashlib.sha256(tbs).digest(), sig):
        raise Rejected("bad_signature")
    try:
        man = Manifest(cbor.decode(payload))
    except cbor.CBORError:
        raise Rejected("bad_metadata")
    return man, kid


class Updater:
    """One device's update client.

    device_id: this device's id (metadata for another device is refused).
    device_key: its P-256 private key (SEC1 DER from the keystore, or the raw
      32-byte scalar).
    report(dict): called with each state to publish. It may be called from
      inside on_message, that is from inside the MQTT client's callback:
      queue the report and publish it once the callback has returned.
    reboot(): called after a slot switch. Default: set reboot_due, and the
      agent resets (machine.reset()) once the "applied" report is out.
    anchors: the trust module (default: image.trust(), frozen in the firmware).
    """

    def __init__(self, device_id, device_key, report=None, reboot=None, anchors=None):
        self.device_id = device_id
        self._key = device_key
        self._report_cb = report
        self._reboot = reboot
        if anchors is None:
            anchors = image.trust()
        self._anchors = anchors
        self._st = self._load_state()
        self._job = None  # the update being downloaded: _Job
        self._foreign = None  # id of the last stray chunk reported
        self.reboot_due = False
        self.restart_due = False  # restart to resume a download on a fresh heap
        self.throttle = Throttle("update")  # each rejection once until metadata is accepted

    # -- persistent state --------------------------------------------------

    def _load_state(self):
        raw = _read("state.json")
        try:
            st = json.loads(raw) if raw else {}
        except ValueError:
            st = {}
        if not isinstance(st, dict):
            st = {}
        for k in ("seen", "fw_ver", "fw_ctr"):
            if not isinstance(st.get(k), int):
                st[k] = 0
        return st

    def _save_state(self):
        _write("state.json", json.dumps(self._st).encode())

    def state(self):
        """The persistent state (newest signed time, firmware version and
        counter, the last installed update, a pending trial)."""
        return dict(self._st)

    # -- reports and events --------------------------------------------------

    def _report(self, state, uid=None, **kw):
        rep = {"state": state}
        if uid is not None:
            rep["id"] = bytes(uid).hex()
        rep.update(kw)
        if self._report_cb:
            self._report_cb(rep)
        return rep

    def _reject(self, reason, uid=None, detail=""):
        # Each reason is recorded once until metadata is accepted (as
        # ironclad.commands does, ironclad.throttle): anyone on the broker can
        # send junk to the update topic, and 80 junk messages must not push
        # the real events out of the ring. The fleet still gets every report.
        self.throttle.record(reason, detail)
        return self._report(REJECTED, uid, reason=reason)

    # -- start-up -------------------------------------------------------------

    def start(self):
        """Call once connected (and after every reconnect): reports how the
        last installed update went, or resumes an interrupted download."""
        pend = self._st.get("pending")
        if pend:
            # Nothing downloads while an installed update waits for its
            # verdict; leftovers of the finished download go.
            _remove("ckpt")
            _remove("meta")
            self._check_pending(pend)
        elif self._job is None:
            meta = _read("meta")
            if meta and not self._resume(meta):
                return
        if self._job:
            self._ask()
        elif not pend:
            # Listening and free: a fleet waiting to offer an update can send
            # it now rather than at its next retry.
            self._report(IDLE)

    def prepare(self):
        """Call at start-up, before the rest of the app makes its objects: a
        saved download (interrupted by a power cut, or by a restart for
        memory, see _out_of_memory) is resumed now, so that its big buffers
        come from a fresh heap. If even a fresh heap cannot hold them, the
        update is refused (no_memory)."""
        if self._job is None and not self._st.get("pending"):
            meta = _read("meta")
            if meta:
                self._resume(meta, fresh=True)

    def _resume(self, meta, fresh=False):
        try:
            self._begin(meta, resume=True)
            return True
        except Rejected as e:
            self._abandon()
            self._reject(e.reason, detail="on resume")
        except MemoryError:
            self._out_of_memory(restart=not fresh)
        return False

    def _check_pending(self, pend):
        # What became of the update installed before the last reboot.
        uid = bytes.fromhex(pend["id"])
        trial = True
        if pend["target"] == "app":
            st = bootstate.state()
            running = st["booted"] or st["active"]
            trial = st["trial"]
        else:
            running = esp32.Partition(esp32.Partition.RUNNING).info()[4]
        if running == pend["slot"] and trial:
            self._report(TRIAL, uid, ver=pend["ver"])
            return
        self._st["pending"] = None
        if running != pend["slot"]:
            self._st["last"] = None  # not running: the fleet may offer it again
        self._save_state()
        if running == pend["slot"]:
            self._report(CONFIRMED, uid, ver=pend["ver"])
        elif pend["stage"] == "install":
            # Power went before the slot switch was on flash: the old image
            # still runs and the fleet sends the update again.
            self._reject("interrupted", uid, detail=pend["slot"])
        else:
            events.record("update", "rolled_back", outcome="failed", detail=pend["slot"])
            self._report(ROLLED_BACK, uid, ver=pend["ver"])

    def confirm(self):
        """The agent's health check passed: keep the running image (app and
        firmware) and report it. Returns the report, or None when nothing
        was on trial."""
        pend = self._st.get("pending")
        if not pend or pend["target"] == "app":
            # An app image on trial is confirmed whether or not this updater
            # installed it (its record may have been lost to a power cut).
            if bootstate.state()["trial"]:
                bootstate.confirm()
        if not pend:
            return None
        uid = bytes.fromhex(pend["id"])
        if pend["target"] == "fw":
            esp32.Partition.mark_app_valid_cancel_rollback()
            self._st["fw_ver"] = pend["ver"]
            self._st["fw_ctr"] = max(self._st["fw_ctr"], pend["ctr"])
        self._st["pending"] = None
        self._save_state()
        events.record("update", "confirmed", outcome="ok", detail="v%d" % pend["ver"])
        return self._report(CONFIRMED, uid, ver=pend["ver"])

    def busy(self):
        """True while an update is being downloaded."""
        return self._job is not None

    # -- messages -------------------------------------------------------------

    def on_message(self, msg):
        """One message from the update topic. Never raises for bad input:
        rejections are reported and recorded."""
        if not len(msg):
            self._reject("bad_message")
            return
        kind = msg[0]
        before = self._job
        try:
            if kind == 0x4D:  # "M"
                # Parts of the metadata are kept: off the MQTT buffer.
                self._on_meta(memoryview(bytes(msg))[1:])
            elif kind == 0x43:  # "C"
                # Decrypted in place: the MQTT client's receive buffer (a
                # writable view, see MQTTClient.set_callback) or a copy.
                self._on_chunk(memoryview(msg if isinstance(msg, memoryview) else bytearray(msg)))
            else:
                raise Rejected("bad_message")
        except Rejected as e:
            job = self._job
            uid = None
            if job and e.reason in _FATAL:
                # The download itself went bad: give it up cleanly.
                uid = job.man.id
                self._abandon()
            self._reject(e.reason, uid, detail=e.args[1] if len(e.args) > 1 else "")
        except OSError as e:
            # Flash or filesystem failure mid-update: give the update up
            # cleanly; the running slot was never touched.
            uid = self._job.man.id if self._job else None
            self._abandon()
            self._reject("flash_error", uid, detail=str(e)[:39])
        except MemoryError:
            if kind == 0x4D and before is not None and self._job is before:
                # Metadata that came while a download runs and found no
                # room: that message is dropped, the download goes on.
                gc.collect()
                events.record("update", "no_memory", "rejected", "metadata during a download")
                return
            self._out_of_memory()

    def _out_of_memory(self, restart=True):
        # The heap could not hold the update's buffers: a heap long in use is
        # fragmented, and 4 KiB blocks are what it runs out of first. The
        # download is saved (metadata, checkpoint) and the device restarts
        # to resume it on a fresh heap (prepare()), once per update; if that
        # is not enough either (or the heap was fresh already: restart
        # False), the update is refused.
        job = self._job
        self._job = None
        gc.collect()
        uid = bytes(job.man.id).hex() if job else None
        if restart and job and self._st.get("mem_restart") != uid and _read("meta"):
            self._st["mem_restart"] = uid
            self._save_state()
            events.record("update", "restart_for_memory", outcome="info", detail=uid[:16])
            self.restart_due = True
            return
        if job:
            self._abandon()
        self._reject("no_memory", job.man.id if job else None, detail="" if restart else "on a fresh heap")

    def tick(self):
        """Call from the agent's loop: asks again for chunks that never came."""
        job = self._job
        if job and time.ticks_diff(time.ticks_ms(), job.asked) > REASK_MS:
            self._ask()

    def _on_meta(self, body):
        job = self._job
        if job and hashlib.sha256(body).digest() == job.meta_sha:
            # The metadata of the download under way, byte for byte, sent
            # again (the fleet missed our request): already verified, and
            # verifying it again would need heap the download is using.
            self._ask()
            return
        man, _ = open_metadata(body, self._anchors)
        if man.dev == self.device_id and self._st.get("last") == bytes(man.id).hex():
            # The update installed last, sent again (the fleet missed our
            # report): say how it stands. An older one fails the version check.
            pend = self._st.get("pending")
            self._report(TRIAL if pend else CONFIRMED, man.id, ver=man.ver)
            return
        job = self._job
        if job and job.man.id == man.id:
            self._ask()  # the fleet sent it again: it missed our request
            return
        if job:
            # A different update while one is downloading: it must pass every
            # check before the old one is given up.
            self._check(man)
            self._abandon()
            events.record("update", "superseded", outcome="info", detail=bytes(job.man.id).hex()[:16])
        self._begin(b"M" + bytes(body), man=man)
        self.throttle.reset()  # signed metadata passed every check: rejections are news again
        self._ask()

    # -- checks ---------------------------------------------------------------

    def _check(self, man, resume=False):
        """Every check of the metadata against this device; returns
        (base partition, target partition). Raises Rejected."""
        a = self._anchors
        if man.dev != self.device_id:
            raise Rejected("not_for_device")
        if man.hwid != a.HWID:
            raise Rejected("wrong_hwid")
        # The newest time this device has seen in signed metadata: a signed
        # iat is the fleet's word that it was at least that late.
        if man.iat > self._st["seen"]:
            self._st["seen"] = man.iat
            self._save_state()
        # Also a later time for a clock no time server set (clock.advance).
        clock.advance(man.iat)
        # And against the device's trusted time floor (ironclad.clock: build
        # time, the remembered clock): metadata that expired before it is
        # refused even if no newer signed iat ever reached this device, so
        # a broker holding old per-device metadata cannot install a
        # withdrawn release.
        if man.exp < self._st["seen"] or man.exp < clock.floor():
            raise Rejected("expired")
        if self._st.get("pending"):
            raise Rejected("busy", "update on trial")
        if man.target == "app":
            st = bootstate.state()
            if st["trial"]:
                raise Rejected("busy", "image on trial")
            base = _part(st["active"])
            target = _part("app_b" if st["active"] == "app_a" else "app_a")
            try:
                cur = image.read_header(base)
                cur_ver = cur.version
            except image.Rejected:
                cur_ver = -1  # recovery: no image runs, any newer signed image may
            if man.ver < cur_ver:
                raise Rejected("downgrade", "v%d < v%d" % (man.ver, cur_ver))
            if man.ver == cur_ver:
                raise Rejected("not_newer", "v%d" % man.ver)
            if man.ctr < st["floor"]:
                raise Rejected("rollback", "ctr %d < %d" % (man.ctr, st["floor"]))
        else:
            base = esp32.Partition(esp32.Partition.RUNNING)
            target = base.get_next_update()
            if man.ver < self._st["fw_ver"]:
                raise Rejected("downgrade", "v%d < v%d" % (man.ver, self._st["fw_ver"]))
            if man.ver == self._st["fw_ver"]:
                raise Rejected("not_newer", "v%d" % man.ver)
            if man.ctr < self._st["fw_ctr"]:
                raise Rejected("rollback", "ctr %d < %d" % (man.ctr, self._st["fw_ctr"]))
        if man.result_len > target.info()[3]:
            raise Rejected("too_large", "%d bytes" % man.result_len)
        if man.target == "app":
            # An image the boot path could not map on this board would never
            # run: refused now, before a byte is written (docs/verified-boot.md).
            try:
                image.check_mappable(target, man.result_len, a, total=True)
            except image.Rejected as e:
                raise Rejected(e.reason, "%d bytes" % man.result_len)
        if man.base_len > base.info()[3]:
            raise Rejected("base_mismatch", "base too long")
        if man.base_sha is not None and _slot_sha(base, man.base_len, bytearray(1024)) != man.base_sha:
            raise Rejected("base_mismatch", "v%d expected" % man.base_ver)
        return base, target

    def _unwrap(self, man):
        try:
            z = p256.ecdh(_scalar(self._key), man.epk)
            return keywrap.unwrap(kek(z, man.id, self.device_id, man.epk), man.wk)
        except (ValueError, keywrap.UnwrapError):
            raise Rejected("bad_key_wrap")

    # -- download and apply ---------------------------------------------------

    def _begin(self, meta, man=None, resume=False):
        if man is None:
            man, _ = open_metadata(memoryview(meta)[1:], self._anchors)
        base, target = self._check(man, resume)  # (the base's hash: fed as it is read)
        watchdog.feed()  # the ECDH in pure Python next: seconds on an ESP32
        key = self._unwrap(man)
        watchdog.feed()
        if not resume:
            _write("meta", meta)
            _remove("ckpt")
        # Known before its buffers are made, so an out-of-memory knows which
        # update it interrupts.
        self._job = job = _Job(man, base, target, hashlib.sha256(memoryview(meta)[1:]).digest())
        job.alloc(key)
        ck = _read("ckpt") if resume else None
        if ck:
            job.restore(ck)

    def _abandon(self):
        self._job = None
        _remove("ckpt")
        _remove("meta")

    def _ask(self):
        job = self._job
        job.asked = time.ticks_ms()
        job.window_end = min(job.next + WINDOW, job.man.n)
        self._report(DOWNLOADING, job.man.id, next=job.next, want=job.window_end - job.next,
                     pct=job.next * 100 // job.man.n)

    def _on_chunk(self, mv):
        job = self._job
        if len(mv) < 1 + _ID_LEN + 4 + _TAG:
            raise Rejected("bad_message")
        uid = mv[1:1 + _ID_LEN]
        if job is None or uid != job.man.id:
            if self._foreign == bytes(uid):
                return  # already reported: stray chunks of one old update are one event
            self._foreign = bytes(uid)
            raise Rejected("wrong_update", bytes(uid).hex()[:16])
        idx = struct.unpack(">I", mv[1 + _ID_LEN:5 + _ID_LEN])[0]
        if idx != job.next:
            return  # a repeat or one past a gap: the request logic sorts it out
        job.take(idx, mv[5 + _ID_LEN:])
        if job.next < job.man.n:
            if job.next >= job.window_end:
                self._ask()
            return
        self._finish(job)

    def _finish(self, job):
        man = job.man
        uid = man.id
        if not job.patch.done():
            raise Rejected("bad_patch", "patch incomplete")
        if job.chain != man.chain:
            raise Rejected("bad_patch", "chain hash")
        watchdog.feed()  # the last chunk's sectors are written; the checks start now
        job.ccm = job.patch = None  # what follows needs RAM for hashing and RSA (twice)
        gc.collect()
        # Read back, verified, installed: three passes over the result and
        # one over the fallback image, fed as they go (image.verify's tick).
        if _slot_sha(job.target, man.result_len, job.sector) != man.result_sha:
            raise Rejected("bad_result", "hash")
        label = job.target.info()[4]
        if man.target == "app":
            try:
                h = image.verify(label, anchors=self._anchors, event=None, buf=job.sector, tick=watchdog.feed)
            except image.Rejected as e:
                raise Rejected("bad_result", "image " + e.reason)
            if h.version != man.ver or h.counter != man.ctr:
                raise Rejected("bad_result", "header differs")
        else:
            b = bytearray(1)
            job.target.readblocks(0, b)
            if b[0] != _FW_MAGIC:
                raise Rejected("bad_result", "not an app image")
        # Recorded before the switch, so a power cut between the two is
        # reported as such at the next boot (see _check_pending).
        pend = {"id": bytes(uid).hex(), "target": man.target, "slot": label, "ver": man.ver, "ctr": man.ctr,
                "stage": "install"}
        self._st["pending"] = pend
        self._save_state()
        try:
            if man.target == "app":
                slots.install(label, h, buf=job.sector, tick=watchdog.feed)
            else:
                # esp_ota_set_boot_partition verifies the image (Secure Boot
                # V2 signature, anti-rollback) and can fail: check_esp_err
                # raises OSError (upstream ports/esp32/esp32_partition.c).
                job.target.set_boot()
        except (image.Rejected, OSError, ValueError) as e:
            # The switch did not happen: nothing is pending, and the next
            # boot runs what runs now.
            self._st["pending"] = None
            self._save_state()
            if isinstance(e, image.Rejected):
                raise Rejected("bad_result", e.reason)
            raise Rejected("switch_failed", ("%s %s" % (type(e).__name__, e))[:39])
        pend["stage"] = "boot"
        self._st["last"] = pend["id"]
        self._save_state()
        self._job = None
        _remove("ckpt")
        _remove("meta")
        events.record("update", "applied", outcome="ok", detail="%s v%d" % (label, man.ver))
        self._report(APPLIED, uid, ver=man.ver, slot=label)
        if self._reboot:
            self._reboot()
        else:
            self.reboot_due = True


class _Job:
    """One download in progress: the content key, the applier, the chain
    hash, the position, the work buffers."""

    def __init__(self, man, base, target, meta_sha):
        self.man = man
        self.meta_sha = meta_sha  # SHA-256 of the verified metadata it came from
        self.base = base
        self.target = target
        self.next = 0  # next chunk to take
        self.skip = 0  # bytes of chunk `next` already applied (after a resume)
        self.chain = bytes(32)  # chain digest before chunk `next`
        self.chain_next = self.chain  # ... and after it, once it is decrypted
        self.asked = 0
        self.window_end = 0

    def alloc(self, key):
        # The big buffers in one go, on a freshly collected heap: 4 KiB
        # blocks are what a fragmented heap runs out of first (see
        # Updater.prepare). CCM's two work buffers are grown to a chunk now.
        gc.collect()
        self.sector = bytearray(detools.SECTOR)
        self.ccm = CCM(key, _TAG, 13)
        self.ccm.reserve(CHUNK, len(aad(self.man.id, 0)))
        self._new_patch()

    def _on_sector(self, patch):
        # After every result sector written (an erase and 16 page programs).
        watchdog.feed()
        if (patch.to_pos // detools.SECTOR) % CKPT_SECTORS:
            return
        # The chunk holding the applier's position, the bytes of it already
        # applied, and the chain hash up to that chunk.
        c = patch.consumed
        i = c // CHUNK
        chain = self.chain if i == self.next else self.chain_next
        _write("ckpt", struct.pack(_CKPT_HEAD, _CKPT_MAGIC, self.man.id, i, c - i * CHUNK, chain) + patch.state())

    def _new_patch(self):
        man = self.man
        self.patch = detools.Patch(self.base, man.base_len, self.target, man.result_len, man.patch_len,
                                   on_sector=self._on_sector, sector=self.sector)

    def restore(self, blob):
        n = struct.calcsize(_CKPT_HEAD)
        try:
            magic, uid, i, skip, chain = struct.unpack(_CKPT_HEAD, blob[:n])
            if magic != _CKPT_MAGIC or uid != self.man.id or i >= self.man.n or skip >= CHUNK:
                raise detools.PatchError("checkpoint")
            self.patch.restore(blob[n:])
            if self.patch.consumed != i * CHUNK + skip:
                raise detools.PatchError("checkpoint position")
        except (ValueError, detools.PatchError):
            # A checkpoint that does not fit: start the download over, with
            # an applier that no half-restored state has touched.
            self._new_patch()
            return
        self.next, self.skip, self.chain = i, skip, chain

    def take(self, idx, ct):
        man = self.man
        n = len(ct) - _TAG
        want = CHUNK if idx + 1 < man.n else man.patch_len - idx * CHUNK
        if n != want:
            raise Rejected("bad_chunk", "length")
        try:
            self.ccm.decrypt_into(nonce(idx), aad(man.id, idx), ct, ct)
        except AuthError:
            raise Rejected("bad_chunk", "chunk %d" % idx)
        pt = ct[:n]
        # The chain value after this chunk is needed if a checkpoint lands
        # exactly on its end.
        self.chain_next = chain_step(self.chain, pt)
        try:
            self.patch.feed(pt[self.skip:])
        except detools.PatchError as e:
            raise Rejected("bad_patch", str(e)[:39])
        self.skip = 0
        self.chain = self.chain_next
        self.next = idx + 1
