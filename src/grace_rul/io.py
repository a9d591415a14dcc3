"""Reading and writing files: bounded YAML readers and atomic writers, used everywhere.

* YAML (``--config``, dataset YAMLs, a run's ``config.yaml``, ``sweep.yaml``): at most
  :data:`MAX_YAML_BYTES` bytes and :data:`MAX_YAML_NODES` nodes *after* expanding
  aliases, counted on the composed node graph (each shared node is counted once per use
  without being expanded, so a "billion laughs" document is refused in microseconds);
  recursive aliases and nesting too deep for the parser are refused too
  (docs/reliability.md).
* Every write goes to a temporary file in the target's directory, is flushed and
  fsync'ed, then ``os.replace``d over the target: a crash or error leaves either the old
  file or the new one, never a half-written one, and no temporary file behind.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

from grace_rul.bounded import check_file
from grace_rul.errors import GraceError, WriteError, first_line

MAX_YAML_BYTES = 2**20  # 1 MiB: a config or dataset YAML is a few hundred bytes
MAX_YAML_NODES = 100_000  # scalars + collections after alias expansion


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


def load_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML file (``what`` names it in errors) into a nested dict (one-line errors)."""
    p = Path(path)
    if not p.is_file():
        raise GraceError(f"{what} not found: {p}")
    data = read_yaml_file(p, f"{what} {p}") or {}
    if not isinstance(data, dict):
        raise GraceError(f"{what} {p} must hold a mapping at the top level")
    return data


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically with ``write(file)``; returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 lets the umask decide the final permissions, like a plain open().
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(tmp, flags, 0o666)
    except OSError as exc:
        raise WriteError(exc.errno, exc.strerror or str(exc), str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            # disk full, quota, read-only: one line naming the file; nothing half-written
            raise WriteError(exc.errno, exc.strerror or str(exc), str(path)) from None
        if isinstance(exc, RuntimeError) and "write" in str(exc).lower():
            # torch.save reports a failed write (ENOSPC) as a RuntimeError of its zip writer
            raise WriteError(None, first_line(exc), str(path)) from None
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically; returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")
