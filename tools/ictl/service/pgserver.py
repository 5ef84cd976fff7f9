"""A throw-away PostgreSQL server for tests and benchmarks.

initdb + pg_ctl (Debian's postgresql package; tools/setup.sh installs it) in
a temporary directory, listening on a free loopback port only (no Unix
socket), with a password generated here and scram-sha-256 authentication.
PostgreSQL refuses to run as root, so under root the server runs as the
`postgres` system user the package creates.
"""
import glob
import os
import secrets
import shutil
import subprocess
import tempfile

from ..broker import free_port

HOST = '127.0.0.1'
MISSING = ('PostgreSQL not found (initdb/pg_ctl): install Debian\'s postgresql '
           'package (tools/setup.sh does)')


class PgError(Exception):
    pass


def find_bin(name):
    p = shutil.which(name)
    if p:
        return p
    found = sorted(glob.glob('/usr/lib/postgresql/*/bin/' + name))
    if found:
        return found[-1]
    raise PgError(MISSING)


def available():
    try:
        find_bin('initdb')
        find_bin('pg_ctl')
    except PgError:
        return False
    return True


class PgServer:
    """with PgServer() as pg: connect(pg.url) ..."""

    def __init__(self, max_connections=60):
        self.max_connections = max_connections
        self.dir = None
        self.port = None
        self.url = None

    def _run(self, argv, timeout=120):
        name = os.path.basename(argv[0])
        if os.geteuid() == 0:
            argv = ['runuser', '-u', 'postgres', '--'] + argv
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, text=True)
        if r.returncode:
            raise PgError('%s failed: %s' % (name, r.stdout.strip()[-400:]))
        return r.stdout

    def start(self):
        initdb, pg_ctl = find_bin('initdb'), find_bin('pg_ctl')
        self.dir = tempfile.mkdtemp(prefix='ictl-pg-')
        data = os.path.join(self.dir, 'data')
        password = secrets.token_hex(16)
        pwfile = os.path.join(self.dir, 'pw')
        with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT, 0o600), 'w') as f:
            f.write(password + '\n')
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam('postgres')
            for p in (self.dir, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self._run([initdb, '-D', data, '-U', 'ictl', '--pwfile', pwfile,
                   '--auth', 'scram-sha-256', '-E', 'UTF8', '--no-sync'])
        os.unlink(pwfile)
        self.port = free_port(HOST)
        opts = ('-c listen_addresses=%s -c port=%d -c unix_socket_directories= '
                '-c max_connections=%d -c fsync=off -c synchronous_commit=off '
                '-c full_page_writes=off' % (HOST, self.port, self.max_connections))
        self._run([pg_ctl, '-D', data, '-o', opts, '-l',
                   os.path.join(self.dir, 'log'), '-w', '-t', '60', 'start'])
        self.url = 'postgresql://ictl:%s@%s:%d/postgres' % (password, HOST, self.port)
        return self

    def stop(self):
        if self.dir is None:
            return
        try:
            self._run([find_bin('pg_ctl'), '-D', os.path.join(self.dir, 'data'),
                       '-m', 'immediate', '-w', 'stop'], timeout=60)
        except (PgError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
