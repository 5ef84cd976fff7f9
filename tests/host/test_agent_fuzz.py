"""The agent under hostile input through the real mosquitto (issue 14):
the slice of `ictl soak --only agent` that `make test` runs. A few hundred
random and mutated messages on the device's cmd and update topics; the
agent must not reset, crash or spend a trial attempt, must answer every
genuine command, keep publishing readings and record at most one event per
reason per window; and malformed MQTT bytes (topics that are not UTF-8,
bad lengths, truncated packets) fed in-process to the real agent's client
(tools/ictl/soak_agent.py)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from ictl.measure import soak_agent  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def test_hostile_messages_through_mosquitto_never_crash_the_agent(tmp_path):
    res = soak_agent.campaign(str(tmp_path / "fuzz"), messages=300, batch=50, seed=14, say=print)
    assert res["messages"] == 300, res
    assert res["crashes"] == 0, res
    assert res["unanswered"] == 0 and not res["excess"] and not res["alarms"], res
    assert not res["readings_short"], res
    # The campaign reached the checks it is for, not just the first one.
    for want in ("cmd/malformed", "cmd/forged", "update/bad_message"):
        assert want in res["reasons"], res["reasons"]
    assert soak_agent.failures(res) == 0


def test_malformed_mqtt_bytes_never_leave_the_agents_client(tmp_path):
    raw = soak_agent.raw_inputs(str(tmp_path / "raw"), 2000, seed=14)
    assert raw["inputs"] == 2000 and raw["rc"] == 0, raw["out"]
    assert raw["crashes"] == 0 and not raw["excess"], raw["out"]
    for want in (("mqtt", "bad_topic"), ("mqtt", "truncated"), ("mqtt", "too_big"), ("update", "bad_message")):
        assert list(want) in raw["events"], raw["events"]


def test_event_windows():
    ev = [{"seq": 1, "kind": "cmd", "reason": "forged", "outcome": "rejected"},
          {"seq": 2, "kind": "cmd", "reason": "read", "outcome": "ok"},
          {"seq": 3, "kind": "cmd", "reason": "forged", "outcome": "rejected"},
          {"seq": 4, "kind": "update", "reason": "bad_message", "outcome": "rejected"},
          {"seq": 5, "kind": "update", "reason": "bad_message", "outcome": "rejected"},
          {"seq": 6, "kind": "cmd", "reason": "forged", "outcome": "rejected"}]
    assert soak_agent.window_excess(ev) == ["update/bad_message #5", "cmd/forged #6"]
