"""The report step: methods boilerplate and HTML reports rendered from OUTPUT_DIR."""

from __future__ import annotations

from pathlib import Path

from bids_group_app.errors import MissingInputError
from bids_group_app.outputs.naming import saved_models
from bids_group_app.outputs.writer import OutputWriter


def publish_reports(output_dir, html_reports=True):
    """Render the methods boilerplate and the HTML reports from OUTPUT_DIR.

    They are staged and moved into place like the results. Returns the
    written paths relative to OUTPUT_DIR.
    """
    from bids_group_app.reporting.boilerplate import write_boilerplate
    from bids_group_app.reporting.report import write_reports

    writer = OutputWriter(output_dir)
    try:
        writer.adopt(p.relative_to(writer.staging) for p in write_boilerplate(output_dir, writer.staging))
        if html_reports:
            writer.adopt(write_reports(output_dir, writer.staging))
        written = list(writer.written)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return written


def reports_only(output_dir):
    """``--reports-only``: re-render reports from an existing OUTPUT_DIR."""
    output_dir = Path(output_dir).expanduser().resolve()
    if not saved_models(output_dir):
        raise MissingInputError(f"{output_dir} holds no results of bids_group_app (no model-*_smdl.json); run the analysis first")
    return [output_dir / p for p in publish_reports(output_dir)]


