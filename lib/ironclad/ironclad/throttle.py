# Security events from input anyone on the broker can send (commands,
# update messages): each reason of one kind recorded once until reset(), so
# a flood of one kind of rejection cannot overwrite the rest of the event
# ring (ironclad.events). Apart from events.py: the MQTT client, which has
# its own once-per-outage filter, does not load it.
from ironclad import events


class Throttle:
    """Records each reason of one kind once until reset(): anyone on the
    broker can send junk, and a flood of one kind of rejection must not
    overwrite the rest of the ring. The ones left out are counted
    (suppressed) into the next recorded event's detail as "+N"."""

    def __init__(self, kind):
        self.kind = kind
        self.logged = []  # reasons recorded since the last reset
        self.suppressed = 0  # rejections not recorded since the last recorded event

    def record(self, reason, detail="", outcome="rejected"):
        if reason in self.logged:
            self.suppressed += 1
            return
        self.logged.append(reason)
        if self.suppressed:
            detail = ("+%d " % self.suppressed + detail)[:events.MAX_DETAIL]
            self.suppressed = 0
        events.record(self.kind, reason, outcome, detail)

    def reset(self):
        """What was to be stopped has ended (a command or metadata accepted):
        each reason is news again. Returns the count left out, now zero."""
        self.logged = []
        n, self.suppressed = self.suppressed, 0
        return n
