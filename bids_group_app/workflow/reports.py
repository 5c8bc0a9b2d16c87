"""The report step: methods boilerplate and HTML reports, rendered into a
run's staging folder *before* its commit, from OUTPUT_DIR as it will be
once the run is committed (:class:`~bids_group_app.outputs.view.OutputView`),
so that nothing can fail after the results are in place.
"""

from __future__ import annotations

from pathlib import Path

from bids_group_app.errors import MissingInputError
from bids_group_app.outputs.commit import output_lock
from bids_group_app.outputs.naming import saved_models
from bids_group_app.outputs.view import OutputView
from bids_group_app.outputs.writer import MANIFEST, STAGING_PREFIX, OutputWriter, recover


def stage_reports(writer, models=None, html_reports=True, strict=True):
    """Render the methods text and the reports of ``models`` into ``writer``'s staging folder.

    Parameters
    ----------
    writer : bids_group_app.outputs.writer.OutputWriter
        Its staged files are read over the committed ones.
    models : list of str, optional
        The model labels whose HTML report is rendered (default: all).
    html_reports : bool
        False: only the methods text (``--no-reports``).
    strict : bool
        True: a model whose files cannot be read is an error (exit 65)
        naming the file; False: only those of ``models`` are, another
        model's is left out of the methods text with a warning (one model's
        damaged files must not break another model's run).
    """
    from bids_group_app.reporting.boilerplate import write_boilerplate
    from bids_group_app.reporting.report import write_reports

    view = OutputView(writer.output_dir, writer.staging)
    writer.adopt(p.relative_to(writer.staging) for p in write_boilerplate(view, writer.staging, strict=True if strict else set(models or ())))
    if html_reports:
        writer.adopt(write_reports(view, writer.staging, models=models))


def reports_only(output_dir):
    """``--reports-only``: re-render every report and the methods text of an existing OUTPUT_DIR.

    Any saved model that cannot be read back is an error (exit 65) naming
    it; nothing is written then.
    """
    output_dir = Path(output_dir).expanduser().resolve()
    if not saved_models(output_dir) and not list(output_dir.glob(f"{STAGING_PREFIX}*/{MANIFEST}")):
        raise MissingInputError(f"{output_dir} holds no results of bids_group_app (no model-*_smdl.json); run the analysis first")
    with OutputWriter(output_dir) as writer, output_lock(output_dir):
        recover(output_dir)
        stage_reports(writer)
        return writer.commit()
