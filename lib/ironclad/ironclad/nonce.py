# The device's nonce counter for the COSE messages it seals (Partial IV =
# counter, nonce = Base IV xor counter), persisted in NVS and reserved in
# blocks so that no power cut, reset or crash ever hands out a value twice.
#
# The NVS record (namespace "ic_nonce", one blob per counter name):
#   epoch  8 bytes   random, drawn when the record is first made
#   hi     u64 LE    every value below hi may have been used
# The keys are derived with the epoch as HKDF salt (ironclad.telemetry), so a
# counter is only ever meaningful together with its epoch: both live in one
# blob and are written by one NVS commit, which lands whole or not at all.
# Losing the record (NVS erased) draws a new epoch, hence new keys: counting
# from 0 again then reuses no nonce under any key.
#
# Reservation: before value v is handed out, hi > v is on flash. Each block
# costs one NVS commit; values reserved but not used when power goes are
# skipped (at most `block` per boot). A commit that fails raises, and no
# value from the unreserved block is handed out. 1024 values a block: at a
# message every two seconds one NVS write per half hour (flash wear, and
# the commit's milliseconds amortised to nothing), and 2**24 values, where
# the Partial IV grows to 4 bytes, last 16,000 reboots.
import struct
from micropython import const

import esp32

from ironclad import rng

NAMESPACE = "ic_nonce"
BLOCK = 1024
# Values stay below 2**40 so the Partial IV is at most 5 bytes (the
# telemetry overhead goal): 35,000 years at one message a second.
LIMIT = const(1 << 40)
_REC = "<8sQ"
_REC_LEN = const(16)
_ERR_NOT_FOUND = const(-4354)  # ESP_ERR_NVS_NOT_FOUND


class NonceExhausted(Exception):
    """The counter reached LIMIT: the device must get a new epoch (re-key)."""


class Counter:
    """A persisted, never-repeating counter under a random epoch.

    nvs: an esp32.NVS handle (default: the "ic_nonce" namespace); name: the
    blob key, one counter per name."""

    def __init__(self, name="up", block=BLOCK, nvs=None, limit=LIMIT):
        if block < 1:
            raise ValueError("nonce block")
        self._nvs = esp32.NVS(NAMESPACE) if nvs is None else nvs
        self._name = name
        self._block = block
        self._limit_all = limit
        buf = bytearray(_REC_LEN)
        try:
            n = self._nvs.get_blob(name, buf)
        except OSError as e:
            if e.args[0] != _ERR_NOT_FOUND:
                raise
            n = 0
        if n == _REC_LEN:
            self.epoch, hi = struct.unpack(_REC, buf)
        else:
            # First use (or an unreadable record): a new epoch, stored before
            # any key is derived from it.
            self.epoch, hi = rng.get(8), 0
            self._store(hi)
        self._next = hi
        self._hi = hi  # reserved on flash: values in [_next, _hi) are ours

    def _store(self, hi):
        self._nvs.set_blob(self._name, struct.pack(_REC, self.epoch, hi))
        self._nvs.commit()

    def next(self):
        """The next unused value. May write NVS (once per block)."""
        v = self._next
        if v >= self._hi:
            hi = min(v + self._block, self._limit_all)
            if v >= hi:
                raise NonceExhausted("nonce counter exhausted: re-key the device")
            self._store(hi)
            self._hi = hi
        self._next = v + 1
        return v

    def peek(self):
        """The value next() will return (for figures and tests)."""
        return self._next
