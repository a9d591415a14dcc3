"""Readers bounded before they allocate: table files (YAML: :mod:`grace_rul.io`).

A small file must not exhaust memory or CPU, so every limit is checked before the work
it guards (docs/reliability.md states them):

* Table files (``grace predict`` input, fleet tables): at most a given number of bytes
  on disk and after gzip decompression (streamed, stopped at the limit), Parquet at most
  as many uncompressed bytes by its own metadata, and text with a NUL byte in its first
  :data:`BINARY_PROBE` bytes is refused as binary before the rest is read.
"""

from __future__ import annotations

import gzip
import io
import stat
import zlib
from pathlib import Path
from typing import Any

from grace_rul.errors import GraceError, first_line

MAX_INPUT_BYTES = 128 * 2**20  # grace predict input, on disk and decompressed
MAX_TABLE_BYTES = 2**30  # fleet training tables, on disk and decompressed
BINARY_PROBE = 8192
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


def check_file(path: Path, limit: int, where: str, missing: str | None = None) -> int:
    """The size of ``path``, a regular file (links followed) of at most ``limit`` bytes.

    ``where`` names it in messages; ``missing`` is the message when it does not exist.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        if missing is None:
            raise GraceError(f"{where} cannot be read (No such file or directory)") from None
        raise GraceError(missing) from None
    except OSError as exc:
        raise GraceError(f"{where} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise GraceError(f"{where} is not a regular file (a device, pipe or directory)")
    if info.st_size > limit:
        raise GraceError(f"{where} is {info.st_size} bytes, over the limit of {limit} bytes")
    return info.st_size


def read_table_bytes(path: str | Path, limit: int = MAX_INPUT_BYTES, where: str = "") -> bytes:
    """The bytes of a table file, gzip-decompressed (recognised by content), within ``limit``.

    Refused in one line: a file over ``limit`` bytes, gzip that inflates beyond it (the
    decompression stops there), Parquet whose metadata declares more uncompressed bytes,
    and text with a NUL byte near its start (binary data, a sparse or zeroed file).
    """
    p = Path(path)
    where = where or str(p)
    check_file(p, limit, where)
    try:
        with open(p, "rb") as f:
            magic = f.read(2)
            f.seek(0)
            if magic == GZIP_MAGIC:
                data = _inflate(f, limit, where)
            else:
                data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise GraceError(
            f"{where}: not a readable gzip file (truncated or corrupt: {first_line(exc)})"
        ) from None
    except OSError as exc:
        raise GraceError(f"{where} cannot be read ({exc.strerror or first_line(exc)})") from None
    if data[:4] == PARQUET_MAGIC:
        _check_parquet(data, limit, where)
    else:
        _refuse_binary(data[:BINARY_PROBE], where)
    return data


def _inflate(f: Any, limit: int, where: str) -> bytes:
    """Decompress a gzip stream in chunks, refusing binary data or more than ``limit`` bytes
    as soon as it shows (memory stays near ``limit``, time near what was inflated)."""
    out = bytearray()
    with gzip.GzipFile(fileobj=f) as g:
        while chunk := g.read(2**20):
            if not out:
                _refuse_binary(chunk[:BINARY_PROBE], where)
            out += chunk
            if len(out) > limit:
                raise GraceError(f"{where} inflates to more than {limit} bytes; refused")
    return bytes(out)


def _refuse_binary(head: bytes, where: str) -> None:
    if head[:4] != PARQUET_MAGIC and b"\x00" in head:
        raise GraceError(f"{where}: binary data (NUL bytes), not C-MAPSS text, CSV or Parquet")


def _check_parquet(data: bytes, limit: int, where: str) -> None:
    """Refuse Parquet whose metadata declares more than ``limit`` uncompressed bytes."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(io.BytesIO(data)).metadata
        total = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise GraceError(f"{where}: not a readable Parquet file ({first_line(exc)})") from None
    if total > limit:
        raise GraceError(f"{where}: Parquet data of {total} bytes uncompressed, over {limit}")
