"""The DuckDB index: views ``videos``, ``clips`` and ``poses`` over the catalog's Parquet files.

The database holds nothing but view definitions and a small ``catalog_info`` table, so it can always be
rebuilt from the Parquet files (:func:`rebuild_index`, ``mimicmotion catalog rebuild``). The views read
the files through glob patterns at query time: a video committed after the rebuild shows up in the next
query without touching the database. Rebuilding writes a new database file and renames it over the old
one, so readers never see a half-built index.

Queries run on a read-only connection confined to the catalog's folder (DuckDB's ``enable_external_access``
off, ``allowed_directories`` the catalog, configuration locked), only SELECT-like statements are accepted,
and every value a user supplies is passed as a bound parameter (``$name`` in the SQL), never pasted into it.
"""
from __future__ import annotations

import datetime as _dt
import os
import secrets
from pathlib import Path
from typing import Optional

import duckdb
import pyarrow as pa

from catalog.schema import SCHEMA_VERSION, TABLE_FILES, TABLES
from catalog.store import DB_FILE, PARTS_DIR, catalog_root, init_catalog
from mimicmotion.errors import ConfigError

VIEWS = tuple(TABLES)  # videos, clips, poses


def _sql_string(value: str) -> str:
    """A SQL string literal. Only for the catalog's own folder in view definitions (DDL cannot take bound
    parameters); quotes are doubled, so the value can never end the literal."""
    if "\x00" in value:
        raise ConfigError("a catalog path cannot contain NUL characters")
    return "'" + value.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def view_sql(root: Path, table: str) -> str:
    pattern = str(Path(root) / PARTS_DIR / "*" / TABLE_FILES[table])
    columns = ", ".join(_identifier(name) for name, *_ in TABLES[table])
    return (f"CREATE OR REPLACE VIEW {_identifier(table)} AS SELECT {columns} "
            f"FROM read_parquet({_sql_string(pattern)}, union_by_name = true)")


def db_path(root=None) -> Path:
    return catalog_root(root) / DB_FILE


def rebuild_index(root=None) -> Path:
    """(Re)create the DuckDB database of the catalog at ``root`` from its Parquet files. Returns its path."""
    root = init_catalog(root)
    final = root / DB_FILE
    tmp = root / f".{DB_FILE}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        con = duckdb.connect(str(tmp))
        try:
            for table in VIEWS:
                con.execute(view_sql(root, table))
            con.execute("CREATE TABLE catalog_info (key VARCHAR PRIMARY KEY, value VARCHAR)")
            info = {"schema_version": str(SCHEMA_VERSION), "root": str(root),
                    "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            con.executemany("INSERT INTO catalog_info VALUES (?, ?)", list(info.items()))
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, final)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
            if leftover.exists():
                leftover.unlink()
    return final


def index_is_current(root=None) -> bool:
    """Whether the database exists, was built for this folder and this schema version."""
    path = db_path(root)
    if not path.is_file():
        return False
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return False
    try:
        info = dict(con.execute("SELECT key, value FROM catalog_info").fetchall())
    except duckdb.Error:
        return False
    finally:
        con.close()
    return info.get("root") == str(catalog_root(root)) and info.get("schema_version") == str(SCHEMA_VERSION)


def ensure_index(root=None) -> Path:
    """Rebuild the database only when it is missing or stale."""
    return db_path(root) if index_is_current(root) else rebuild_index(root)


def connect(root=None) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the catalog's database; ConfigError with the fix when there is none,
    when it belongs to a moved folder, or when it is locked by a writer."""
    root = catalog_root(root)
    path = root / DB_FILE
    if not path.is_file():
        raise ConfigError(f"no catalog database at {path}: curate videos into it (`mimicmotion curate VIDEOS "
                          f"--catalog {root}`) or index existing files (`mimicmotion catalog rebuild --catalog {root}`)")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise ConfigError(f"cannot open {path} read-only ({exc}); if a curation run is writing the index, "
                          "retry when it is done") from exc
    try:
        _guard(con, root)
        info = dict(con.execute("SELECT key, value FROM catalog_info").fetchall())
    except duckdb.Error as exc:
        con.close()
        raise ConfigError(f"{path} is not a MimicMotion catalog database: rebuild it with "
                          f"`mimicmotion catalog rebuild --catalog {root}`") from exc
    if info.get("root") != str(root) or info.get("schema_version") != str(SCHEMA_VERSION):
        con.close()
        raise ConfigError(f"{path} was built for {info.get('root')} (schema {info.get('schema_version')}), not for "
                          f"{root} (schema {SCHEMA_VERSION}): run `mimicmotion catalog rebuild --catalog {root}`")
    return con


READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


def _guard(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Confine the connection to the catalog's own folder: no other file can be read or written, no
    extension loaded, no database attached, and the settings cannot be changed back."""
    folders = sorted({str(root) + os.sep, str(Path(root).resolve()) + os.sep})
    con.execute("SET allowed_directories = ?", [folders])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


def check_read_only(sql: str) -> None:
    """Only SELECT-like statements (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, VALUES, EXPLAIN) run: COPY,
    ATTACH, CREATE, INSERT, SET, PRAGMA, INSTALL... are refused before anything executes."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ConfigError(f"query failed: {str(exc).strip()}") from exc
    for statement in statements:
        kind = str(statement.type).rsplit(".", 1)[-1]
        if kind not in READ_ONLY_STATEMENTS:
            raise ConfigError(f"catalog queries are read-only: a {kind} statement is not allowed (only SELECT, "
                              "WITH, DESCRIBE, SHOW, SUMMARIZE, VALUES and EXPLAIN run); the catalog's files are "
                              "written by `mimicmotion curate` and `mimicmotion catalog rebuild` only")


def run_query(sql: str, params: Optional[dict] = None, root=None,
              con: Optional[duckdb.DuckDBPyConnection] = None) -> pa.Table:
    """Run ``sql`` with ``params`` bound to its ``$name`` placeholders on a read-only connection and return
    the result as an Arrow table (empty for a statement without a result). SQL errors become ConfigError."""
    check_read_only(sql)
    own = con is None
    con = connect(root) if own else con
    try:
        relation = con.sql(sql, params=params or None)
        if relation is None:
            return pa.table({})
        return relation.to_arrow_table()
    except duckdb.Error as exc:
        raise ConfigError(f"query failed: {str(exc).strip()}") from exc
    finally:
        if own:
            con.close()
