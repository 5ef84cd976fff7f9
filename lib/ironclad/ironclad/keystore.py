# The device's credential store: named values (keys, certificates, settings),
# each sealed with AES-256-CCM under a storage key, kept as NVS blobs.
#
#   from ironclad.keystore import KeyStore
#   ks = KeyStore()
#   ks.put("cert", der)      # atomic: after a power cut, the old value or the new
#   ks.get("cert")           # bytes, None if absent, KeyStoreError if tampered
#   ks.names(); ks.delete("cert"); ks.wipe()
#
# Layout (docs/keystore.md): NVS namespace "ic_sk" holds the 32-byte storage
# key; namespace "ic_ks" holds one blob per entry, under the entry's name, and
# "_index", the sealed list of names (esp32.NVS cannot list its keys). A
# sealed value is
#   version (1) || nonce (13, random) || AES-256-CCM ciphertext || tag (16)
# with AAD = "ironclad-ks" || version || the chip's unique id || name, so a
# record only opens on this chip (a flash image cloned to another chip, or a
# record copied from another device, fails) and under its own name (records
# cannot be swapped between entries).
#
# Atomicity: each change is one set_blob (or erase_key) and one commit, which
# NVS makes atomic on its own, on an ESP32 as in the stand-in. Nothing relies
# on two NVS writes landing together: a new name goes into the index before its
# record, and a record leaves before its name does, so after a cut the index
# can only name a missing record (names() skips it), never hide one.
#
# On an ESP32, flash encryption and NVS encryption (docs/keystore.md) keep the
# storage key out of a flash dump; this layer adds integrity, device binding
# and crypto-erase: wipe() destroys the storage key and then rewrites NVS until
# the erased entries are physically gone.
from micropython import const

from ironclad import ccm
from ironclad import nvs as _nvs

NAMESPACE = "ic_ks"
KEY_NAMESPACE = "ic_sk"
WELL_KNOWN = ("device_id", "device_key", "cert", "ca", "broker", "fleet_data_pub", "wifi", "provisioned")
MAX_VALUE = const(2048)  # a device certificate and a short CA chain fit

_VERSION = const(1)
_NONCE = const(13)
_TAG = const(16)
_OVERHEAD = const(30)  # version + nonce + tag
_KEY_LEN = const(32)
_MAX_NAME = const(15)  # an NVS key is at most 15 characters
_INDEX = "_index"
_SK = "sk"
_FILL = "_wipe"
_FILL_CHUNK = const(1024)
_NVS_SIZE = const(0x6000)  # if the partition table has no "nvs" entry to measure

_ERR_NOT_FOUND = const(-4354)  # ESP_ERR_NVS_NOT_FOUND
_ERR_INVALID_LENGTH = const(-4364)  # ESP_ERR_NVS_INVALID_LENGTH: the buffer is too small
_READ_BUF = const(704)
_AAD = b"ironclad-ks"


class KeyStoreError(Exception):
    """An entry that cannot be used (tampered, corrupted, from another device,
    or a bad name). Messages name the entry, never its value."""


def _check_name(name):
    ok = isinstance(name, str) and 0 < len(name) <= _MAX_NAME and "a" <= name[0] <= "z"
    if ok:
        for c in name:
            if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "_"):
                ok = False
                break
    if not ok:
        raise KeyStoreError("keystore name must be 1-15 of a-z 0-9 _, starting with a letter")
    return name


def _not_found(e):
    return e.args and e.args[0] == _ERR_NOT_FOUND


class KeyStore:
    """Sealed entries in NVS. `nvs`/`key_nvs` (esp32.NVS objects) and `uid`
    (the chip's unique id) can be passed in; by default they are this chip's."""

    def __init__(self, nvs=None, key_nvs=None, uid=None):
        if nvs is None or key_nvs is None or uid is None:
            import machine

            nvs = nvs or _nvs.open(NAMESPACE)
            key_nvs = key_nvs or _nvs.open(KEY_NAMESPACE)
            uid = uid or machine.unique_id()
        self._nvs = nvs
        self._knvs = key_nvs
        self._uid = bytes(uid)
        # Sized for every usual entry (a certificate is ~500 bytes): one
        # small buffer kept, the rare longer value read into a temporary one.
        self._buf = bytearray(_READ_BUF)
        self._cipher = None

    def __repr__(self):
        return "<KeyStore>"

    # --- the storage key ---------------------------------------------------

    def _ccm(self, create=False):
        """The CCM object under the storage key; None if there is no key and
        create is False."""
        if self._cipher is None:
            k = bytearray(_KEY_LEN)
            try:
                n = self._knvs.get_blob(_SK, k)
            except OSError as e:
                if not _not_found(e):
                    raise KeyStoreError("keystore storage key is corrupt")
                if not create:
                    return None
                # No key: whatever records are left (a wipe cut short) can
                # never be opened again, so clear them before starting over.
                self._erase_entries()
                from ironclad import rng  # (here: a board that only reads never loads it)

                k = rng.get(_KEY_LEN)
                self._knvs.set_blob(_SK, k)
                self._knvs.commit()
                n = _KEY_LEN
            if n != _KEY_LEN:
                raise KeyStoreError("keystore storage key is corrupt")
            self._cipher = ccm.CCM(k, _TAG, _NONCE)
        return self._cipher

    # --- sealing -------------------------------------------------------------

    def _aad(self, name):
        return _AAD + bytes((_VERSION,)) + self._uid + name.encode()

    def _seal(self, name, value):
        c = self._ccm(True)
        out = bytearray(_OVERHEAD + len(value))
        out[0] = _VERSION
        from ironclad import rng

        nonce = rng.get(_NONCE)
        out[1:1 + _NONCE] = nonce
        c.encrypt_into(nonce, self._aad(name), value, out, 1 + _NONCE)
        return out

    def _read(self, key):
        """The raw blob stored under key (a memoryview), or None."""
        buf = self._buf
        while True:
            try:
                return memoryview(buf)[:self._nvs.get_blob(key, buf)]
            except OSError as e:
                if _not_found(e):
                    return None
                if e.args and e.args[0] == _ERR_INVALID_LENGTH and len(buf) < MAX_VALUE + _OVERHEAD:
                    # Longer than the usual entry: once more with room for the longest.
                    buf = bytearray(MAX_VALUE + _OVERHEAD)
                    continue
                self._tampered(key)

    def _open(self, name):
        rec = self._read(name)
        if rec is None:
            return None
        c = self._ccm()
        if c is None:
            raise KeyStoreError("keystore entry %r cannot be read: the storage key is gone (wiped)" % name)
        if len(rec) < _OVERHEAD or rec[0] != _VERSION:
            self._tampered(name)
        try:
            return c.decrypt(rec[1:1 + _NONCE], self._aad(name), rec[1 + _NONCE:])
        except ccm.AuthError:
            self._tampered(name)

    def _tampered(self, name):
        from ironclad import events

        events.record("keystore", "tampered", detail=name)
        raise KeyStoreError("keystore entry %r failed authentication: tampered, corrupted or from another device" % name)

    def _write(self, key, blob):
        self._nvs.set_blob(key, blob)
        self._nvs.commit()

    def _erase(self, nvs, key):
        try:
            nvs.erase_key(key)
        except OSError as e:
            if not _not_found(e):
                raise
            return False
        nvs.commit()
        return True

    # --- the index -----------------------------------------------------------

    def _index(self):
        raw = self._open(_INDEX)
        return raw.decode().split(",") if raw else []

    def _set_index(self, names):
        if names:
            self._write(_INDEX, self._seal(_INDEX, ",".join(names).encode()))
        else:
            self._erase(self._nvs, _INDEX)

    # --- the API ---------------------------------------------------------------

    def put(self, name, value):
        """Store value (bytes) under name, replacing any old value atomically."""
        _check_name(name)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise KeyStoreError("keystore value for %r must be bytes" % name)
        if len(value) > MAX_VALUE:
            raise KeyStoreError("keystore value for %r is longer than %d bytes" % (name, MAX_VALUE))
        blob = self._seal(name, value)
        idx = self._index()
        if name not in idx:
            self._set_index(idx + [name])
        self._write(name, blob)

    def get(self, name):
        """The value stored under name, or None. Raises KeyStoreError (naming
        the entry) if the record does not authenticate; other entries are
        untouched."""
        return self._open(_check_name(name))

    def delete(self, name):
        """Remove name; returns False if it was not there."""
        _check_name(name)
        gone = self._erase(self._nvs, name)
        idx = self._index()
        if name in idx:
            idx.remove(name)
            self._set_index(idx)
        return gone

    def names(self):
        """Names of the stored entries, sorted."""
        out = []
        for n in self._index():
            if self._read(n) is not None:
                out.append(n)
        out.sort()
        return out

    def _erase_entries(self):
        # The index may be unreadable (tampered, or its key gone): then the
        # well-known names are still erased, and everything else is garbage
        # under a key that no longer exists.
        try:
            listed = self._index()
        except KeyStoreError:
            listed = []
        n = 0
        # "provisioned" first: from the first erase on, the board is not provisioned.
        for name in ("provisioned",) + WELL_KNOWN + tuple(listed):
            if self._erase(self._nvs, name):
                n += 1
        self._erase(self._nvs, _INDEX)
        return n

    def wipe(self):
        """Decommission: erase every entry and the storage key, then rewrite
        NVS until the erased records are physically overwritten. A power cut
        part way leaves the board unprovisioned; run wipe() again to finish.
        Returns the number of entries erased."""
        n = self._erase_entries()
        self._cipher = None
        self._erase(self._knvs, _SK)
        self._churn()
        return n

    def decommission(self):
        """Decommission the board for good: wipe(), then erase every sector of
        the NVS partition, then reset; never returns. Real NVS reclaims page by
        page and keeps marked-erased entries on flash until a page is reused,
        so only erasing the sectors themselves leaves nothing behind (other
        namespaces too: the clock floor, counters). The IDF keeps NVS page
        state in RAM and MicroPython cannot re-initialise it
        (nvs_flash_erase_partition wants nvs_flash_deinit first), so NVS is
        not used again before the reset; at the next boot nvs_flash_init
        finds a blank partition and formats it. A power cut part way leaves
        the board unprovisioned (wipe() ran first): run it again."""
        import esp32
        import machine

        self.wipe()
        for p in esp32.Partition.find(esp32.Partition.TYPE_DATA, label="nvs"):
            for i in range(p.ioctl(4, 0)):  # BP_IOCTL_SEC_COUNT
                p.ioctl(6, i)  # BP_IOCTL_SEC_ERASE
        machine.reset()

    def _churn(self):
        # NVS only marks entries erased; their bytes stay until the page (the
        # stand-in: the log half) is erased to be reused. Writing twice the
        # partition's size of filler forces every page through that at least once.
        import esp32

        parts = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="nvs")
        size = parts[0].info()[3] if parts else _NVS_SIZE
        fill = bytearray(_FILL_CHUNK)
        for i in range(2 * size // _FILL_CHUNK + 1):
            fill[0] = i & 0xFF
            self._knvs.set_blob(_FILL, fill)
            self._knvs.commit()
        self._erase(self._knvs, _FILL)
