"""Readers bounded before they allocate: YAML documents and table files.

A small file must not exhaust memory or CPU, so every limit is checked before the work
it guards (docs/reliability.md states them):

* YAML (``--config``, dataset YAMLs, a run's ``config.yaml``, ``sweep.yaml``): at most
  :data:`MAX_YAML_BYTES` bytes and :data:`MAX_YAML_NODES` nodes *after* expanding
  aliases, counted on the composed node graph (each shared node is counted once per use
  without being expanded, so a "billion laughs" document is refused in microseconds);
  recursive aliases and nesting too deep for the parser are refused too.
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

import yaml

from grace_rul.errors import GraceError, first_line

MAX_YAML_BYTES = 2**20  # 1 MiB: a config or dataset YAML is a few hundred bytes
MAX_YAML_NODES = 100_000  # scalars + collections after alias expansion
MAX_INPUT_BYTES = 128 * 2**20  # grace predict input, on disk and decompressed
MAX_TABLE_BYTES = 2**30  # fleet training tables, on disk and decompressed
BINARY_PROBE = 8192
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document expanding beyond ``MAX_YAML_NODES``."""

    def construct_document(self, node: yaml.Node) -> Any:
        _count_nodes(node)
        return super().construct_document(node)


def _count_nodes(root: yaml.Node) -> int:
    """Nodes of the document with aliases expanded, computed without expanding them."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise yaml.YAMLError("a recursive alias (a node that contains itself)")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                raise yaml.YAMLError(
                    f"more than {MAX_YAML_NODES} values once its aliases are expanded"
                )
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def load_yaml_text(text: str, where: str) -> Any:
    """Parse one YAML document safely (no tags that build objects) and within the limits;
    ``where`` names it in the one-line error."""
    if len(text) > MAX_YAML_BYTES:
        raise GraceError(f"{where} is larger than {MAX_YAML_BYTES} bytes; refusing to parse it")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise GraceError(f"{where} is not valid YAML: {first_line(exc)}") from None
    except RecursionError:
        raise GraceError(f"{where} is not valid YAML: nested too deeply") from None


def read_yaml_file(path: str | Path, where: str | None = None) -> Any:
    """:func:`load_yaml_text` of a file (size checked before reading; UTF-8)."""
    p = Path(path)
    where = where or str(p)
    check_file(p, MAX_YAML_BYTES, where)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise GraceError(f"{where} is not UTF-8 text") from None
    return load_yaml_text(text, where)


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
