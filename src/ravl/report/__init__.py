"""Reports rendered from saved results: HTML pages, galleries and charts. Library code never imports this."""

from ravl.report.html import write_report

__all__ = ["write_report"]
