"""Reporting: the Markdown conversion report and headless charts."""

from quantstage.quant.report.markdown import render_report, summary_rows

__all__ = ["render_report", "summary_rows"]
