"""ictl.service.db on both engines: placeholders, transactions, migrations."""
import os
import threading

import pytest

from ictl.service import db as service_db
from pg import pg_server, pg_url  # noqa: F401  (fixtures)


@pytest.fixture(params=['sqlite', 'postgresql'])
def url(request, tmp_path):
    if request.param == 'sqlite':
        return 'sqlite:///' + str(tmp_path / 'svc.db')
    return request.getfixturevalue('pg_url')


def test_bound_parameters_and_transactions(url):
    d = service_db.connect(url)
    d.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)')
    hostile = "x'); DROP TABLE t; -- ? %s %"
    d.execute('INSERT INTO t (id, v) VALUES (?, ?)', (1, hostile))
    assert d.one("SELECT v FROM t WHERE v LIKE '%' AND id = ?", (1,)) == {'v': hostile}
    with pytest.raises(RuntimeError):
        with d.transaction():
            d.execute('INSERT INTO t (id, v) VALUES (?, ?)', (2, 'b'))
            raise RuntimeError('rolled back')
    assert d.query('SELECT id FROM t ORDER BY id') == [{'id': 1}]
    with pytest.raises(service_db.IntegrityError):
        d.execute('INSERT INTO t (id, v) VALUES (?, ?)', (1, 'dup'))
    d.close()


def test_migrate_applies_in_order_once_and_atomically(url, tmp_path):
    mig = tmp_path / 'mig'
    mig.mkdir()
    (mig / '0001_a.sql').write_text('CREATE TABLE a (x INTEGER);\n'
                                    '-- comment\nINSERT INTO a (x) VALUES (1);\n')
    (mig / '0002_b.sql').write_text('CREATE TABLE b (y INTEGER);\n'
                                    'INSERT INTO nosuch VALUES (1);\n')
    d = service_db.connect(url)
    with pytest.raises(service_db.DatabaseError, match='0002_b'):
        d.migrate(str(mig))
    # 0001 stays, 0002 left nothing behind (its CREATE TABLE rolled back)
    assert [r['version'] for r in d.query('SELECT version FROM schema_migrations')] == [1]
    d.execute('CREATE TABLE b_probe (z INTEGER)')
    with pytest.raises(Exception):
        d.query('SELECT * FROM b')
    (mig / '0002_b.sql').write_text('CREATE TABLE b (y INTEGER);\n')
    assert d.migrate(str(mig)) == [2]
    assert d.migrate(str(mig)) == []
    assert d.query('SELECT x FROM a') == [{'x': 1}]
    d.close()


def test_concurrent_migrate_and_the_real_schema(url):
    errors = []

    def run():
        try:
            d = service_db.connect(url)
            d.migrate()
            d.close()
        except Exception as exc:        # reported below
            errors.append(exc)
    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    d = service_db.connect(url)
    versions = [r['version'] for r in d.query('SELECT version FROM schema_migrations ORDER BY version')]
    files = [v for v, _, _ in d.migrations()]
    assert versions == files
    d.close()


def test_bad_urls_are_refused(tmp_path):
    with pytest.raises(service_db.DatabaseError, match='sqlite:///'):
        service_db.connect('mysql://x')
    with pytest.raises(service_db.DatabaseError, match='no directory'):
        service_db.connect(str(tmp_path / 'nope' / 'x.db'))
