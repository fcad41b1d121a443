"""Reporting: the Markdown conversion report, its verdict texts, and headless charts."""

from quantstage.quant.report.markdown import (
    PENDING_PROMOTION,
    render_report,
    set_verdict,
    summary_rows,
    sweep_pending,
    verdict_line,
)

__all__ = [
    "PENDING_PROMOTION",
    "render_report",
    "set_verdict",
    "summary_rows",
    "sweep_pending",
    "verdict_line",
]
