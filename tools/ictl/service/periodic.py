"""A background thread that runs step(db) every interval seconds on its own
database connection, until stop(); an exception (the database or broker
away a moment) is kept in .errors and the next round tries again."""
import threading

from ictl.service import db as service_db


class Periodic:
    name = "periodic"

    def __init__(self, db_url, interval):
        self.db_url = db_url
        self.interval = interval
        self.runs = 0
        self.errors = []
        self._stop = threading.Event()
        self._t = None

    def step(self, db):
        raise NotImplementedError

    def _loop(self):
        db = service_db.connect(self.db_url)
        try:
            while True:
                try:
                    self.step(db)
                    self.runs += 1
                except Exception as e:   # noqa: BLE001 - kept for the operator; the next round tries again
                    self.errors.append("%s: %s" % (type(e).__name__, e))
                    del self.errors[:-20]
                if self._stop.wait(self.interval):
                    return
        finally:
            db.close()

    def start(self):
        self._t = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        if self._t:
            self._t.join(30)
