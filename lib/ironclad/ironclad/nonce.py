# The device's nonce counter for the COSE messages it seals (Partial IV =
# counter, nonce = Base IV xor counter), persisted in NVS and reserved in
# blocks so that no power cut, reset or crash ever hands out a value twice.
#
# The NVS record (namespace "ic_nonce", one blob per counter name):
#   epoch  8 bytes   random, drawn afresh at every boot (every Counter())
#   hi     u64 LE    every value below hi may have been used
# The keys are derived with the epoch as HKDF salt (ironclad.telemetry), so a
# counter is only ever meaningful together with its epoch: both live in one
# blob and are written by one NVS commit, which lands whole or not at all.
#
# Why a new epoch every boot: NVS can be rolled back. Whoever holds the board
# can write back an earlier dump of the nvs partition, and a counter read
# from it would hand out values already used under the same epoch, the same
# key: two messages under one nonce, which breaks AES-CCM. A random epoch
# drawn at boot means new keys whatever NVS says, so no (key, nonce) pair
# can repeat across boots (64 random bits: a repeat is a 2**-64 chance per
# pair of boots). The counter itself still rises across boots (hi, and its
# copy outside NVS, ironclad.mono), so the console's per-topic high-water
# mark keeps working and a rolled-back NVS alone does not move it back.
# Losing the record (NVS erased) goes on from the copy, or from 0 without
# one, under a new epoch either way.
#
# Reservation: before value v is handed out, hi > v is on flash. Each block
# costs one NVS commit; values reserved but not used when power goes are
# skipped (at most `block` per boot). A commit that fails raises, and no
# value from the unreserved block is handed out. 1024 values a block: at a
# message every two seconds one NVS write per half hour (flash wear, and
# the commit's milliseconds amortised to nothing), and 2**24 values, where
# the Partial IV grows to 4 bytes, last 16,000 reboots.
import os
import struct
from micropython import const

from ironclad import nvs as _nvs

from ironclad import mono

NAMESPACE = "ic_nonce"
BLOCK = 1024
# Values stay below 2**40 so the Partial IV is at most 5 bytes (the
# telemetry overhead goal): 35,000 years at one message a second.
LIMIT = const(1 << 40)
_REC = "<8sQ"
_REC_LEN = const(16)
_PREV = const(3)  # earlier epochs kept: the console keeps four in all
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
        self._nvs = _nvs.open(NAMESPACE) if nvs is None else nvs
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
        hi = max(struct.unpack(_REC, buf)[1] if n == _REC_LEN else 0, mono.get("nonce_" + name))
        # The epochs of the last boots, newest first: messages sealed under
        # them may still wait in the spool, so the hello names them for the
        # console (telemetry.hello).
        prev = bytearray(8 * _PREV)
        try:
            k = self._nvs.get_blob(name + "_prev", prev)
        except OSError:
            k = 0
        old = [bytes(buf[:8])] if n == _REC_LEN else []
        old += [bytes(prev[i:i + 8]) for i in range(0, k - k % 8, 8)]
        self.previous = old[:_PREV]
        # A new epoch at every boot (see the top of this file), stored with
        # hi before any key is derived from it. os.urandom is esp_random(),
        # truly random only while Wi-Fi/BT or the bootloader's entropy
        # source is on (ESP-IDF v5.5 docs, "Random Number Generation"): on
        # a board the draw must come after the radio is up (issue 13's rng
        # module is to enforce it; only hardware can confirm the entropy).
        self.epoch = os.urandom(8)
        self._nvs.set_blob(name + "_prev", b"".join(self.previous))  # (committed by _store)
        self._store(hi)
        self._next = hi
        self._hi = hi  # reserved on flash: values in [_next, _hi) are ours

    def _store(self, hi):
        self._nvs.set_blob(self._name, struct.pack(_REC, self.epoch, hi))
        self._nvs.commit()
        mono.put("nonce_" + self._name, hi)

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
