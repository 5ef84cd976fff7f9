"""Callbacks that nothing from the network can end.

paho-mqtt runs a client's callbacks in its network thread, and an exception
that leaves one ends that thread: paho re-raises it unless
`suppress_exceptions` is set (paho/mqtt/client.py, `_handle_on_message` and
the other `_handle_on_*`), and from then on every message is lost, silently.
One device's malformed report would stop a whole rollout. The host's MQTT
clients (the rollout, the console) wrap every callback here: an exception is
counted and kept (the last few, for the operator), never fatal."""
import threading

KEEP = 8  # the last errors kept for the operator to read


class Guard:
    def __init__(self):
        self.errors = 0
        self.last = []
        self._lock = threading.Lock()

    def wrap(self, fn):
        def guarded(*args, **kw):
            try:
                return fn(*args, **kw)
            # Everything: this is the last stop before paho's thread, and
            # whatever passes it (a TypeError from a hostile field, a
            # RecursionError from nested JSON, a bug) ends the client.
            except Exception as e:
                with self._lock:
                    self.errors += 1
                    self.last.append("%s: %s" % (getattr(fn, "__name__", "callback"), repr(e)[:200]))
                    del self.last[:-KEEP]
        return guarded
