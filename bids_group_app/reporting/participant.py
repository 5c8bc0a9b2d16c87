"""The participant level's report: one HTML page per subject, ``sub-<label>_report.html``.

Rendered into the run's staging folder before its commit (so concurrent
participant processes never collide), from the runs' inputs and designs in
memory and the subject's maps just staged. It shows, as fMRIPrep's reports do:

* per run: the design matrix (nilearn ``plot_design_matrix``), the contrast
  matrix (the weights of each contrast over the columns it weighs), and a QC
  table (scans, TR, mean and maximum framewise displacement from the
  confounds TSV with ``n/a`` excluded, the confound columns the design takes,
  and the variance inflation factor of each condition column,
  :mod:`bids_group_app.firstlevel.qc`);
* per contrast: the z map of each node fed by the Run node (the Run node's
  own when none is), as slices and a glass brain drawn by the group report's
  :class:`~bids_group_app.reporting.report._Figures`.

The group report links every subject's report it finds
(:func:`bids_group_app.outputs.naming.participant_reports`).
"""

from __future__ import annotations

import json
import logging

import pandas as pd

from bids_group_app import __version__
from bids_group_app.firstlevel.qc import condition_columns, displacement_summary, variance_inflation
from bids_group_app.model.graph import fitlins_label
from bids_group_app.outputs.naming import first_level_figure, participant_report_file
from bids_group_app.outputs.writer import writing
from bids_group_app.reporting.report import _Figures, _figure_title, _plain_columns
from bids_group_app.reporting.templates import template_dir

LOGGER = logging.getLogger(__name__)
#: The confounds column of framewise displacement (fMRIPrep's name).
FD_COLUMN = "framewise_displacement"


def run_qc(run, design):
    """The QC numbers of one run.

    Parameters
    ----------
    run : bids_group_app.firstlevel.inputs.RunInputs
    design : bids_group_app.firstlevel.design.RunDesign

    Returns
    -------
    dict
        ``scans``, ``tr``, ``fd_mean``, ``fd_max`` (None when the confounds
        lack ``framewise_displacement``), ``confounds_used``,
        ``confounds_total``, ``vif`` (condition column -> VIF).
    """
    confounds = pd.read_csv(run.confounds, sep="\t", na_values=["n/a"])
    fd_mean = fd_max = None
    if FD_COLUMN in confounds.columns:
        fd_mean, fd_max = displacement_summary(confounds[FD_COLUMN].to_numpy(float))
    matrix = design.matrix
    values = matrix.to_numpy(float)
    conditions = condition_columns(list(matrix.columns), set(confounds.columns), values)
    vif = variance_inflation(values, conditions)
    return {"scans": run.n_volumes, "tr": run.tr, "fd_mean": fd_mean, "fd_max": fd_max,
            "confounds_used": sum(c in confounds.columns for c in matrix.columns),
            "confounds_total": confounds.shape[1],
            "vif": {matrix.columns[j]: float(v) for j, v in zip(conditions, vif)}}


def contrast_table(design):
    """The run's contrast matrix as a table: one row per contrast row, the columns it weighs.

    Columns no contrast weighs (all zero) are left out.
    """
    rows = {}
    for contrast in design.contrasts:
        for i, weights in enumerate(contrast["weights"]):
            label = contrast["name"] + (f" [{i + 1}]" if len(contrast["weights"]) > 1 else "")
            rows[f"{label} ({contrast['test']})"] = weights
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(
        columns=[c for c in design.matrix.columns if any(r.get(c, 0) for r in rows.values())]).fillna(0.0)
    return frame


def _design_figure(figures, design, relpath):
    import matplotlib.pyplot as plt
    from nilearn.plotting import plot_design_matrix

    width = min(2 + 0.3 * design.matrix.shape[1], 14)
    figure, axes = plt.subplots(figsize=(width, 4))
    plot_design_matrix(_plain_columns(design.matrix), axes=axes)
    return figures._save(figure, first_level_figure(relpath, "design"))


def _z_maps(staging, subject, node):
    """The z maps of ``node`` for ``subject`` in the staging folder: (relpath, contrast name, test)."""
    folder = f"node-{fitlins_label(node)}/sub-{subject}"
    found = []
    for path in sorted((staging / folder).glob("*_stat-z_statmap.nii.gz")):
        sidecar = json.loads(path.with_name(path.name[: -len(".nii.gz")] + ".json").read_text())
        found.append((path.relative_to(staging).as_posix(), sidecar.get("Contrast", path.name), sidecar.get("Test", "t")))
    return found


def stage_participant_report(writer, subject, runs, nodes, model_name=""):
    """Render ``sub-<label>_report.html`` and its figures into ``writer``'s staging folder.

    Parameters
    ----------
    writer : bids_group_app.outputs.writer.OutputWriter
        Holds the subject's staged maps; the report and figures are added to it.
    subject : str
    runs : list of tuple
        ``(RunInputs, RunDesign, design relpath)`` of each run.
    nodes : list of str
        The nodes whose z maps are drawn, in order.
    model_name : str
        The model's ``Name``, for the title.

    Returns
    -------
    list of pathlib.Path
        The written paths, relative to OUTPUT_DIR.
    """
    import matplotlib
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    figures = _Figures(writer.staging)
    with matplotlib.rc_context({"text.usetex": False}):
        run_sections = []
        for run, design, relpath in runs:
            run_sections.append({"label": run.label, "design": _design_figure(figures, design, relpath),
                                 "contrasts": contrast_table(design).to_html(classes="weights", border=0,
                                                                            float_format=lambda v: f"{v:g}"),
                                 "qc": run_qc(run, design), "filled": design.filled,
                                 "files": {"BOLD": run.bold, "confounds": run.confounds, "events": run.events}})
        maps = []
        for node in nodes:
            for relpath, contrast, test in _z_maps(writer.staging, subject, node):
                images = figures.statmap(writer.staging / relpath, lambda kind, rel=relpath: first_level_figure(rel, kind),
                                         "z", test, title=_figure_title(contrast, "z (unthresholded)"))
                maps.append({"node": node, "contrast": contrast, "test": test, "images": images, "map": relpath})
    environment = Environment(loader=FileSystemLoader(str(template_dir())), autoescape=select_autoescape(["html", "j2"]))
    page = environment.get_template("participant_report.html.j2").render(
        subject=subject, model=model_name, runs=run_sections, maps=maps, version=__version__)
    target = writer.staging / participant_report_file(subject)
    with writing(target):
        target.write_text(page)
    written = [target.relative_to(writer.staging), *(p.relative_to(writer.staging) for p in figures.written)]
    writer.adopt(written)
    return written
