"""Write a generated table into its pages, between its two ``<!-- NAME:... -->`` markers.

Each table stands on the pages :data:`PAGES` names for it: the README front page shows
the accuracy table; every other table stands on its guide or evidence page under
``docs/``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from pathlib import Path

from grace_rul.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

PAGES: dict[str, tuple[Path, ...]] = {
    "accuracy": (README, DOCS / "evidence" / "accuracy.md"),
    "recipe": (DOCS / "evidence" / "accuracy.md",),
    "search-fd001": (DOCS / "evidence" / "accuracy.md",),
    "search-fd002": (DOCS / "evidence" / "accuracy.md",),
    "confirm": (DOCS / "evidence" / "accuracy.md",),
    "default-time": (DOCS / "evidence" / "accuracy.md",),
    "review-balancers": (DOCS / "evidence" / "review.md",),
    "review-stabilisers": (DOCS / "evidence" / "review.md",),
    "precision": (DOCS / "evidence" / "performance.md",),
    "selection": (DOCS / "guides" / "protocols.md",),
    "cv-noise": (DOCS / "guides" / "experiments.md",),
    "arch-speed": (DOCS / "architectures.md",),
}


def replace_section(name: str, text: str, page: Path | None = None) -> None:
    """Replace what stands between the two markers of ``name`` with ``text``.

    On ``page`` when given (a test's own file), else on every page of ``PAGES[name]``.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    for path in (page,) if page is not None else PAGES[name]:
        content = path.read_text()
        if start not in content or end not in content:
            raise SystemExit(f"{path} has no {start} ... {end} markers")
        atomic_write_text(path, pattern.sub(lambda _: f"{start}\n{text}{end}", content))


def merge_rows(path: Path, new: list[dict], key: Callable[[dict], tuple]) -> list[dict]:
    """The rows committed in ``path`` that no row of ``new`` replaces (same ``key``), then
    ``new``: a benchmark run in parts keeps what earlier sessions measured."""
    keys = {key(r) for r in new}
    kept = list(csv.DictReader(open(path, newline=""))) if path.is_file() else []
    return [r for r in kept if key(r) not in keys] + new


def write_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    """A benchmark's result rows as one CSV file, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
