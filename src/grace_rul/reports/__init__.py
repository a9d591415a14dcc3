"""Reports: matplotlib figures and one self-contained HTML page for a run or a sweep."""

from grace_rul.reports.report import write_report

__all__ = ["write_report"]
