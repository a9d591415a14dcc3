"""Write a generated table into README.md between its two ``<!-- NAME:... -->`` markers."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from grace_rul.io import atomic_write_text

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_section(name: str, text: str, readme: Path = README) -> None:
    """Replace what stands between the two markers of ``name`` with ``text``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = readme.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{readme} has no {start} ... {end} markers")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    atomic_write_text(readme, pattern.sub(lambda _: f"{start}\n{text}{end}", content))


def write_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    """A benchmark's result rows as one CSV file, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
