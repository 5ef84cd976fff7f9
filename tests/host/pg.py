"""PostgreSQL for the service tests: a real server (Debian's package), started
in a temporary directory on a free loopback port, once per test session.

Use: `from pg import pg_url` in a test module, then take `pg_url` as a
fixture; each test gets a fresh database (CREATE DATABASE) so tests do not
see each other's rows."""
import secrets

import pytest

from ictl.service import db as service_db
from ictl.service import pgserver


@pytest.fixture(scope='session')
def pg_server():
    if not pgserver.available():
        pytest.skip(pgserver.MISSING)
    with pgserver.PgServer() as pg:
        yield pg


@pytest.fixture
def pg_url(pg_server):
    name = 't_' + secrets.token_hex(6)
    admin = service_db.connect(pg_server.url)
    admin.execute('CREATE DATABASE ' + name)   # name is ours: hex only
    admin.close()
    yield pg_server.url.rsplit('/', 1)[0] + '/' + name
    admin = service_db.connect(pg_server.url)
    admin.execute('DROP DATABASE IF EXISTS %s WITH (FORCE)' % name)
    admin.close()
