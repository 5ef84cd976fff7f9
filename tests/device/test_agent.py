# The agent's handling of what the broker delivers (app/agent.py), without
# a network: its message callback and its update report queue, on stand-in
# objects. The agent as a whole under a flood of hostile messages through
# mosquitto is tests/host/test_agent_fuzz.py.
import os
import sys

from ironclad import events

D = os.getenv("IC_TMP")
events.PATH = D + "/events.bin"
events.SENT_PATH = D + "/events.sent"
sys.path.append(__file__.rsplit("/", 3)[0] + "/app")

import agent  # noqa: E402

# The agent's imports (update, telemetry, mqtt, ...) compiled from source.
HEAP_KIB = 640


class Stub:
    pass


def test_a_topic_that_is_not_utf8_is_ignored_not_raised():
    # Issue 14 item 1: topic.decode() raised UnicodeError out of the
    # callback (a crash, a trial attempt burnt). Topics are compared as bytes.
    got = []
    a = Stub()
    a._cmd_b = b"ironclad/dev-1/cmd"
    a._update_b = b"ironclad/dev-1/update"
    a.updater = Stub()
    a.updater.on_message = got.append
    for t in (b"ironclad/dev-1/\xff", bytearray(b"\xc0\xaf"), memoryview(b"ironclad/\xed\xa0\x80/cmd")):
        agent.Agent._on_message(a, t, b"x")
    assert got == []
    agent.Agent._on_message(a, memoryview(b"ironclad/dev-1/update"), b"M")
    assert got == [b"M"]


def test_update_reports_are_bounded_oldest_rejection_first():
    # A flood of junk on the update topic: one rejection report per message,
    # all queued inside the callback before the loop publishes any. The
    # queue grew until the heap ran out (found by the agent fuzz campaign).
    a = Stub()
    a.reports = []
    agent.Agent._queue_report(a, {"state": "downloading", "next": 0})
    for i in range(500):
        agent.Agent._queue_report(a, {"state": "rejected", "reason": "bad_message", "n": i})
    assert len(a.reports) == agent.MAX_REPORTS
    assert a.reports[0]["state"] == "downloading"  # not a rejection: kept
    assert [r["n"] for r in a.reports[1:]] == list(range(500 - agent.MAX_REPORTS + 1, 500))


def test_update_reports_sent_are_those_queued_when_the_loop_came():
    # Each report's publish waits for its PUBACK and handles what arrives
    # meanwhile; under a flood every message queued another rejection and
    # "until none is left" never ended: the agent's loop (readings, events)
    # starved and the event ring overflowed (found by the agent fuzz
    # campaign through mosquitto).
    a = Stub()
    a.reports = [{"state": "downloading", "next": 0}, {"state": "rejected", "reason": "a"}]
    a.online = True
    a.topics = {"report": "ironclad/dev-1/state/update"}
    a.updater = Stub()
    a.updater.tick = lambda: None
    a.updater.reboot_due = a.updater.restart_due = False
    sent = []

    def publish(topic, msg, qos=0):
        sent.append(msg)
        if len(sent) > 20:
            raise AssertionError("the report loop does not end")
        for i in range(5):  # the flood, handled inside the PUBACK wait
            agent.Agent._queue_report(a, {"state": "rejected", "reason": "bad_message", "n": len(sent) * 10 + i})

    a.client = Stub()
    a.client.publish = publish
    agent.Agent._updates(a)
    assert len(sent) == 2 and b"downloading" in sent[0]  # both sent, in order, then back to the loop
    assert len(a.reports) == agent.MAX_REPORTS  # the newest, for the next round
