"""The service's database: SQLite by default (one file), PostgreSQL by URL.

SQL is written once with `?` placeholders and bound parameters only; for
PostgreSQL the placeholders become `%s` (psycopg 3's paramstyle). Values are
never formatted into SQL text. Migrations are the files
migrations/NNNN_name.sql applied in order, each in its own transaction, and
recorded in schema_migrations. Migrations are portable SQL with two SQLite
spellings mapped for PostgreSQL: `INTEGER PRIMARY KEY AUTOINCREMENT` (an
auto-numbered key, BIGSERIAL) and `BLOB` (BYTEA). Times are unix seconds
(DOUBLE PRECISION), booleans INTEGER 0/1.
"""
import contextlib
import os
import re
import sqlite3
import threading
import time

MIGRATIONS = os.path.join(os.path.dirname(__file__), 'migrations')
_MIGRATION = re.compile(r'^(\d{4})_([a-z0-9_]+)\.sql$')
_MIGRATE_LOCK = 0x1C7D0001      # PostgreSQL advisory lock key of migrate()


class DatabaseError(Exception):
    """A database URL or migration that cannot be used (a one-line message)."""


IntegrityError = (sqlite3.IntegrityError,)
try:
    import psycopg
    IntegrityError = IntegrityError + (psycopg.errors.IntegrityError,)
except ImportError:                 # PostgreSQL optional: SQLite needs nothing
    psycopg = None


def _split_statements(text):
    """The statements of a migration file: ';' at a line end ends one.

    Migrations are plain DDL/DML without procedural bodies, so this is enough
    and keeps both engines on the same text (sqlite3.execute runs one
    statement; executescript would commit on its own)."""
    out, cur = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not cur and (not stripped or stripped.startswith('--')):
            continue
        cur.append(line)
        if stripped.endswith(';'):
            out.append('\n'.join(cur).rstrip().rstrip(';'))
            cur = []
    if ''.join(cur).strip():
        out.append('\n'.join(cur))
    return out


# The one dialect difference migrations may use: an auto-numbered key and a
# byte string are written the SQLite way and mapped for PostgreSQL here.
_PG_DDL = ((re.compile(r'\bINTEGER PRIMARY KEY AUTOINCREMENT\b', re.I),
            'BIGSERIAL PRIMARY KEY'),
           (re.compile(r'\bBLOB\b', re.I), 'BYTEA'))


def _pg_ddl(stmt):
    for pattern, repl in _PG_DDL:
        stmt = pattern.sub(repl, stmt)
    return stmt


def _pg_sql(sql):
    """'?' placeholders to psycopg's '%s' (and a literal '%' doubled).

    Question marks inside quoted string literals are left alone."""
    out, quote = [], None
    for ch in sql:
        if ch == '%':               # psycopg parses '%' inside literals too
            out.append('%%')
        elif quote:
            out.append(ch)
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == '?':
            out.append('%s')
        else:
            out.append(ch)
    return ''.join(out)


class Database:
    """One connection per thread, shared by the methods below.

    engine is 'sqlite' or 'postgresql'. A transaction() block commits on
    success and rolls back on an exception; outside one, each execute()
    commits by itself."""

    def __init__(self, url):
        self.url = url
        self._local = threading.local()
        self._conns = []
        self._lock = threading.Lock()
        if url.startswith(('postgresql://', 'postgres://')):
            if psycopg is None:
                raise DatabaseError('PostgreSQL needs psycopg (pip install '
                                    '"psycopg[binary]", see requirements.txt)')
            self.engine = 'postgresql'
            self.path = None
        else:
            path = url[len('sqlite:///'):] if url.startswith('sqlite:///') else url
            if not path or '://' in path:
                raise DatabaseError('database URL %r: use a file path, '
                                    'sqlite:///path or postgresql://...' % url)
            self.engine = 'sqlite'
            self.path = path
        self._conn()                # fail now, not at the first query

    # -- connections ---------------------------------------------------------
    def _conn(self):
        conn = getattr(self._local, 'conn', None)
        if conn is None:
            if self.engine == 'postgresql':
                conn = psycopg.connect(self.url, autocommit=True)
            else:
                parent = os.path.dirname(os.path.abspath(self.path))
                if not os.path.isdir(parent):
                    raise DatabaseError('database %s: no directory %s'
                                        % (self.path, parent))
                # isolation_level=None: we issue BEGIN/COMMIT ourselves so a
                # transaction() means the same on both engines.
                conn = sqlite3.connect(self.path, timeout=30,
                                       isolation_level=None,
                                       check_same_thread=False)
                self._wal(conn)
                conn.execute('PRAGMA foreign_keys=ON')
                conn.execute('PRAGMA synchronous=NORMAL')
            self._local.conn = conn
            self._local.depth = 0
            with self._lock:
                self._conns.append(conn)
        return conn

    @staticmethod
    def _wal(conn, tries=100):
        # Switching a new file to WAL needs it alone for a moment: SQLite
        # answers "database is locked" at once (no busy wait) when another
        # connection opens it in the same instant (several workers starting).
        for _ in range(tries):
            try:
                if conn.execute('PRAGMA journal_mode=WAL').fetchone()[0].lower() == 'wal':
                    return
            except sqlite3.OperationalError as e:
                if 'locked' not in str(e):
                    raise
            time.sleep(0.05)
        raise DatabaseError('database %s stays locked: cannot switch it to WAL' % conn)

    def close(self):
        """Close every connection this object opened (all threads)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- statements ----------------------------------------------------------
    def _cursor(self, sql, params):
        conn = self._conn()
        if self.engine == 'postgresql':
            cur = conn.cursor()
            # without parameters psycopg does no placeholder parsing at all
            if params:
                cur.execute(_pg_sql(sql), tuple(params))
            else:
                cur.execute(sql)
            return cur
        return conn.execute(sql, tuple(params))

    def execute(self, sql, params=()):
        """Run one statement; returns the number of rows it changed."""
        cur = self._cursor(sql, params)
        try:
            return cur.rowcount
        finally:
            cur.close()

    def insert(self, sql, params=()):
        """Run an INSERT ... RETURNING id (both engines) and return the id."""
        row = self.one(sql, params)
        return None if row is None else next(iter(row.values()))

    def query(self, sql, params=()):
        """Rows as a list of dicts (column name -> value)."""
        cur = self._cursor(sql, params)
        try:
            if cur.description is None:
                return []
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        finally:
            cur.close()

    def one(self, sql, params=()):
        rows = self.query(sql, params)
        return rows[0] if rows else None

    @contextlib.contextmanager
    def transaction(self):
        """BEGIN ... COMMIT, ROLLBACK on an exception. Nested blocks join
        the outer transaction."""
        conn = self._conn()
        if self._local.depth:
            self._local.depth += 1
            try:
                yield self
            finally:
                self._local.depth -= 1
            return
        # SQLite: BEGIN IMMEDIATE takes the write lock up front, so two
        # workers never deadlock upgrading read locks.
        begin = 'BEGIN IMMEDIATE' if self.engine == 'sqlite' else 'BEGIN'
        conn.execute(begin)
        self._local.depth = 1
        try:
            yield self
        except BaseException:
            self._local.depth = 0
            conn.execute('ROLLBACK')
            raise
        self._local.depth = 0
        conn.execute('COMMIT')

    # -- migrations ----------------------------------------------------------
    def migrations(self, directory=MIGRATIONS):
        """(version, name, path) of every migration file, in order."""
        found, seen = [], {}
        for fname in sorted(os.listdir(directory)):
            if not fname.endswith('.sql'):
                continue
            m = _MIGRATION.match(fname)
            if not m:
                raise DatabaseError('migration %s: name must be NNNN_name.sql'
                                    % fname)
            version = int(m.group(1))
            if version in seen:
                raise DatabaseError('migrations %s and %s share version %d'
                                    % (seen[version], fname, version))
            seen[version] = fname
            found.append((version, m.group(2), os.path.join(directory, fname)))
        return found

    def migrate(self, directory=MIGRATIONS):
        """Apply the migrations not yet recorded; returns their versions.

        Each runs in one transaction with its schema_migrations row, so a
        failing migration leaves nothing half-applied (PostgreSQL and SQLite
        both have transactional DDL). Concurrent migrate() calls (several
        workers starting at once) are safe: on PostgreSQL they take turns
        (an advisory lock), on SQLite each transaction takes the write lock
        and a version already recorded is skipped."""
        if self.engine == 'postgresql':
            # one migrator at a time per database (CREATE TABLE IF NOT EXISTS
            # itself races on PostgreSQL); released when done or on close
            self.query('SELECT pg_advisory_lock(?)', (_MIGRATE_LOCK,))
        try:
            return self._migrate(directory)
        finally:
            if self.engine == 'postgresql':
                self.query('SELECT pg_advisory_unlock(?)', (_MIGRATE_LOCK,))

    def _migrate(self, directory):
        self.execute('CREATE TABLE IF NOT EXISTS schema_migrations ('
                     ' version INTEGER PRIMARY KEY,'
                     ' name TEXT NOT NULL,'
                     ' applied_at DOUBLE PRECISION NOT NULL)')
        done = {r['version'] for r in
                self.query('SELECT version FROM schema_migrations')}
        applied = []
        for version, name, path in self.migrations(directory):
            if version in done:
                continue
            with open(path, encoding='utf-8') as f:
                text = f.read()
            try:
                with self.transaction():
                    if self.one('SELECT version FROM schema_migrations '
                                'WHERE version = ?', (version,)):
                        continue
                    for stmt in _split_statements(text):
                        if self.engine == 'postgresql':
                            stmt = _pg_ddl(stmt)
                        self.execute(stmt)
                    self.execute('INSERT INTO schema_migrations '
                                 '(version, name, applied_at) VALUES (?, ?, ?)',
                                 (version, name, time.time()))
            except IntegrityError:
                continue
            except Exception as exc:
                raise DatabaseError('migration %04d_%s failed: %s'
                                    % (version, name, exc)) from exc
            applied.append(version)
        return applied


def connect(url):
    """A Database for a file path, sqlite:///path or postgresql://..."""
    return Database(url)


def connect_retrying(url, stop, interval=1.0):
    """connect(url), retried every interval seconds while the server is
    away (a restarting PostgreSQL); None once stop (an Event) is set."""
    while not stop.is_set():
        try:
            return Database(url)
        except DatabaseError:
            raise
        except Exception:   # noqa: BLE001 - psycopg.OperationalError, sqlite3.OperationalError
            stop.wait(interval)
    return None
