"""ictl audit: the fleet service's operator audit trail (ictl/service/audit.py).

    ictl audit verify --db build/run/service.db     # exit 0 intact, 1 tampered
    ictl audit export --db URL --out audit.jsonl    # JSON lines, hashes included
    ictl audit verify --jsonl audit.jsonl           # check an export on its own
"""
import json
import sys

from ictl import ToolError


def register(sub):
    p = sub.add_parser("audit", help="verify or export the fleet service's operator audit trail")
    a = p.add_subparsers(dest="audit_cmd", metavar="ACTION")
    a.required = True
    v = a.add_parser("verify", help="walk the hash chain; exit 1 if a record was altered or removed")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--db", help="database: a file path, sqlite:///path or postgresql://...")
    src.add_argument("--jsonl", help="an export made by `ictl audit export`")
    v.add_argument("--expect-head", metavar="HASH", help="the head hash noted earlier: refuse if it is not in the chain")
    v.set_defaults(func=do_verify)
    e = a.add_parser("export", help="write the trail as JSON lines")
    e.add_argument("--db", required=True, help="database URL or path")
    e.add_argument("--out", default="-", help="output file (default: standard output)")
    e.set_defaults(func=do_export)


def _db(url):
    from ictl.service import db as dbmod
    try:
        return dbmod.connect(url)
    except dbmod.DatabaseError as e:
        raise ToolError(str(e)) from None


def do_verify(args):
    from ictl.service import audit
    if args.jsonl:
        with open(args.jsonl, encoding="utf-8") as f:
            lines = [ln for ln in f if ln.strip()]
        problems = audit.verify_jsonl(lines)
        hashes = set()
        for ln in lines:
            hashes.add(json.loads(ln).get("hash"))
        count, head = len(lines), None
    else:
        with _db(args.db) as db:
            res = audit.verify(db)
            hashes = {r["hash"] for r in db.query("SELECT hash FROM audit_log")} if args.expect_head else set()
        problems, count, head = res["problems"], res["count"], res["head_hash"]
    if args.expect_head and args.expect_head not in hashes:
        problems = problems + ["the expected head %s is not in the chain (records removed or rewritten)"
                               % args.expect_head]
    for p in problems[:50]:
        print("audit: %s" % p)
    if problems:
        print("audit: TAMPERED: %d problem(s) in %d record(s)" % (len(problems), count))
        return 1
    print("audit: intact: %d record(s)%s" % (count, ", head %s" % head if head else ""))
    return 0


def do_export(args):
    from ictl.service import audit
    with _db(args.db) as db:
        if args.out == "-":
            n = audit.export_jsonl(db, sys.stdout)
        else:
            with open(args.out, "w", encoding="utf-8") as f:
                n = audit.export_jsonl(db, f)
    print("audit: exported %d record(s)" % n, file=sys.stderr)
    return 0
