"""The catalog folder on disk and its all-or-nothing writes.

Layout of a catalog folder ``ROOT``::

    ROOT/parts/<video_id>/video.parquet     one row: the video (ok or failed)
    ROOT/parts/<video_id>/clips.parquet     its clips (zero rows when failed)
    ROOT/parts/<video_id>/poses.parquet     its pose rows
    ROOT/parts/_schema/*.parquet            zero-row files with the full schemas (views work when empty)
    ROOT/staging/                           videos being written (never read by queries)
    ROOT/catalog.duckdb                     DuckDB views over parts/ (rebuildable from parts/ alone)
    ROOT/contact_sheets/*.png               contact sheets of curation runs

A video's three files are written into a fresh folder under ``staging/`` and the folder is then renamed to
``parts/<video_id>`` in one step (rename is atomic within a filesystem). So a reader, or a run killed at
any moment, sees either all of a video's rows or none of them, and ``parts/<video_id>`` existing is the
record that the video is done. Leftovers of killed runs in ``staging/`` are removed by the next run.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from catalog.schema import TABLE_FILES, arrow_schema
from mimicmotion.errors import ConfigError

CATALOG_ENV = "MIMICMOTION_CATALOG"
PARTS_DIR = "parts"
STAGING_DIR = "staging"
SCHEMA_PART = "_schema"
DB_FILE = "catalog.duckdb"
SHEETS_DIR = "contact_sheets"
_GLOB_CHARS = set("*?[]{}")


def default_catalog_dir() -> Path:
    """``$MIMICMOTION_CATALOG`` if set, else ``$XDG_DATA_HOME/mimicmotion/catalog`` (~/.local/share/...)."""
    env = os.environ.get(CATALOG_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME", "").strip() or "~/.local/share"
    return Path(data_home).expanduser() / "mimicmotion" / "catalog"


def catalog_root(root=None) -> Path:
    """The catalog folder as an absolute path (``root``, else the default). DuckDB reads the Parquet
    files through glob patterns, so the path may not contain glob characters."""
    path = (Path(root).expanduser() if root is not None else default_catalog_dir()).resolve()
    bad = sorted(_GLOB_CHARS & set(str(path)))
    if bad or "\x00" in str(path):
        raise ConfigError(f"catalog folder {path} contains {' '.join(bad) or 'a NUL character'}, which DuckDB's file "
                          "patterns treat specially: choose a folder name without * ? [ ] { }")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"catalog folder {path} is a file: pass a folder (it is created if missing)")
    return path


def init_catalog(root) -> Path:
    """Create the folder layout and the zero-row schema files (idempotent). Returns the root."""
    root = catalog_root(root)
    for sub in (PARTS_DIR, STAGING_DIR, SHEETS_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    schema_dir = root / PARTS_DIR / SCHEMA_PART
    for table, file_name in TABLE_FILES.items():
        path = schema_dir / file_name
        schema = arrow_schema(table)
        if not path.is_file() or pq.read_schema(path) != schema:
            _write_table_atomically(schema.empty_table(), path)
    return root


def part_dir(root, video_id: str) -> Path:
    return Path(root) / PARTS_DIR / video_id


def is_committed(root, video_id: str) -> bool:
    return (part_dir(root, video_id) / TABLE_FILES["videos"]).is_file()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_table_atomically(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _owner_tag() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"


def _staging_name(video_id: str) -> str:
    # <video_id>.<host>.<pid>.<token>: clean_staging can tell which process a leftover belonged to.
    return f"{video_id}.{_owner_tag()}.{secrets.token_hex(4)}"


def commit_part(root, video_id: str, tables: dict, replace: bool = False) -> bool:
    """Write a video's tables ({"videos": ..., "clips": ..., "poses": ...}) all at once.

    Returns False, writing nothing, when the video is already committed (e.g. by a concurrent run) and
    ``replace`` is False. With ``replace`` the old folder is swapped out first (a crash in between leaves
    the video uncommitted, so the next run redoes it)."""
    root = Path(root)
    if set(tables) != set(TABLE_FILES):
        raise ValueError(f"commit_part needs exactly the tables {sorted(TABLE_FILES)}, got {sorted(tables)}")
    staging = root / STAGING_DIR / _staging_name(video_id)
    staging.mkdir(parents=True)
    try:
        for table, file_name in TABLE_FILES.items():
            data = tables[table]
            expected = arrow_schema(table)
            if not data.schema.equals(expected, check_metadata=False):
                raise ValueError(f"{table} rows do not have the catalog schema:\n{data.schema}\nexpected\n{expected}")
            pq.write_table(data.replace_schema_metadata(expected.metadata), staging / file_name)
            _fsync(staging / file_name)
        final = part_dir(root, video_id)
        if replace and final.exists():
            trash = root / STAGING_DIR / f"{_staging_name(video_id)}.old"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False  # someone committed this video meanwhile: theirs stands
            raise
        _fsync(final.parent)
        return True
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def clean_staging(root) -> list[str]:
    """Remove leftovers in staging/ whose writer (on this host) is no longer running. Returns their names."""
    staging = Path(root) / STAGING_DIR
    if not staging.is_dir():
        return []
    host = socket.gethostname()
    removed = []
    for entry in Path(root).glob(f".{DB_FILE}.*.tmp*"):  # an index rebuild killed before its rename
        pid = entry.name[len(DB_FILE) + 2:].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    for entry in staging.iterdir():
        parts = entry.name.split(".")
        # video_id . host (may contain dots) . pid . token [. old]
        if entry.name.endswith(".old"):
            parts = parts[:-1]
        if len(parts) < 4:
            continue
        entry_host, pid = ".".join(parts[1:-2]), parts[-2]
        if entry_host != host or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return sorted(removed)


def committed_video_ids(root) -> list[str]:
    parts = Path(root) / PARTS_DIR
    if not parts.is_dir():
        return []
    return sorted(p.name for p in parts.iterdir() if p.name != SCHEMA_PART and is_committed(root, p.name))


def read_part(root, video_id: str, table: str, filter=None, columns: Optional[list] = None) -> pa.Table:
    """One video's rows of ``table``; ``filter`` is a pyarrow.compute expression."""
    path = part_dir(root, video_id) / TABLE_FILES[table]
    if not path.is_file():
        raise KeyError(f"video {video_id} is not in the catalog {root}")
    return pq.read_table(path, filters=filter, columns=columns)


def read_table(root, table: str, columns: Optional[list] = None) -> pa.Table:
    """All committed rows of ``table`` (without DuckDB): e.g. the known videos at the start of a run."""
    root = Path(root)
    files = [str(part_dir(root, v) / TABLE_FILES[table]) for v in committed_video_ids(root)]
    schema = arrow_schema(table)
    if not files:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    return ds.dataset(files, schema=schema, format="parquet").to_table(columns=columns)
