"""Docs and bytes agree (issue 14, finding 10): what docs/telemetry.md,
docs/events.md and docs/updates.md say about commands, replies, events and
the update files is what the code does."""
import ast
import os
import re
import struct

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ictl import fleetkeys
from ictl import update as host_update
from mphelp import ROOT


def _doc(name):
    with open(os.path.join(ROOT, "docs", name)) as f:
        return f.read()


def _tree(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return ast.parse(f.read())


def _assigned(tree, name):
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
    raise AssertionError(name)


def test_every_allowed_command_is_documented():
    ops = [k.value for k in _assigned(_tree("lib/ironclad/ironclad/commands.py"), "OPS").keys]
    assert "wipe" in ops
    allow = _doc("telemetry.md").split("Allowlist (`commands.OPS`):")[1].split("\n\n")[0]
    cmd_row = [line for line in _doc("events.md").splitlines() if line.startswith("| `cmd` |")][0]
    for op in ops:
        assert "`%s`" % op in allow, op
        assert "`%s`" % op in cmd_row, op


def test_every_event_recorded_by_literal_is_in_the_reason_table():
    table = {}
    for line in _doc("events.md").split("## Reason codes")[1].splitlines():
        m = re.match(r"\| `(\w+)` \| (.*)", line)
        if m:
            table[m.group(1)] = table.get(m.group(1), "") + m.group(2)
    missing = []
    for base in ("lib/ironclad/ironclad", "app"):
        for fn in sorted(os.listdir(os.path.join(ROOT, base))):
            if not fn.endswith(".py"):
                continue
            for node in ast.walk(_tree(os.path.join(base, fn))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "record"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "events"
                        and len(node.args) >= 2 and all(isinstance(a, ast.Constant) for a in node.args[:2])):
                    kind, reason = node.args[0].value, node.args[1].value
                    if "`%s`" % reason not in table.get(kind, ""):
                        missing.append("%s/%s (%s)" % (kind, reason, fn))
    assert not missing, missing


def test_a_rejected_command_gets_no_reply_as_documented():
    # app/agent.py: `except commands.Rejected: return`, nothing published.
    handlers = [h for h in ast.walk(_tree("app/agent.py")) if isinstance(h, ast.ExceptHandler)
                and isinstance(h.type, ast.Attribute) and h.type.attr == "Rejected"]
    assert handlers and all(len(h.body) == 1 and isinstance(h.body[0], ast.Return) for h in handlers)
    text = _doc("telemetry.md")
    assert "A rejected command gets no reply" in text
    assert "0 for one that did not open" not in text.split("## Commands")[0]


def test_events_per_message_stated_once():
    batch = [f for f in ast.walk(_tree("lib/ironclad/ironclad/telemetry.py"))
             if isinstance(f, ast.FunctionDef) and f.name == "send_events"][0].args.defaults[-1].value
    assert batch == 4
    assert "at most\n4 raw records per message" in _doc("events.md")
    assert "≤ 8" not in _doc("telemetry.md") and "up to 4" not in _doc("events.md")


def test_update_files_have_the_documented_layout(tmp_path):
    patch = os.urandom(3 * host_update.CHUNK + 10)
    upd = host_update.Update.seal(patch, "app", "esp32-sim", 2, 2, None, {"len": 1, "sha": bytes(32)}, "none")
    dev_key = ec.generate_private_key(ec.SECP256R1())
    meta = upd.metadata("d1", fleetkeys.public_point(dev_key), rsa.generate_private_key(65537, 3072), "k")
    upd.save(str(tmp_path), {"d1": meta})
    doc = _doc("updates.md")
    assert "`chunks.bin`" in doc and "`meta/<device>.bin`" in doc
    with open(tmp_path / "chunks.bin", "rb") as f:
        data = f.read()
    off, i = 0, 0
    while off < len(data):  # u32 BE length, then ciphertext || tag
        n, = struct.unpack(">I", data[off:off + 4])
        body = data[off + 4:off + 4 + n]
        assert upd.chunk(i) == b"C" + upd.id + struct.pack(">I", i) + body
        off, i = off + 4 + n, i + 1
    assert i == upd.n
    assert (tmp_path / "meta" / "d1.bin").read_bytes() == meta and meta[:1] == b"M"


def test_a_damaged_update_directory_is_refused(tmp_path):
    import pytest

    from ictl import ToolError

    upd = host_update.Update.seal(os.urandom(2 * host_update.CHUNK), "app", "esp32-sim", 2, 2, None,
                                  {"len": 1, "sha": bytes(32)}, "none")
    upd.save(str(tmp_path), {"d1": b"M" + bytes(10)})
    host_update.Update.load(str(tmp_path))
    p = tmp_path / "chunks.bin"
    whole = p.read_bytes()
    for damaged in (whole[:-1], whole[:-5], whole + b"\x00\x00", whole[:4 + host_update.CHUNK + 16]):
        p.write_bytes(damaged)
        with pytest.raises(ToolError, match="not an update"):
            host_update.Update.load(str(tmp_path))
    p.write_bytes(whole)
    (tmp_path / "meta" / "d2.bin").write_bytes(b"junk")
    with pytest.raises(ToolError, match="metadata"):
        host_update.Update.load(str(tmp_path))
