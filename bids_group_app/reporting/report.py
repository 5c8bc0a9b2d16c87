"""HTML reports: one per model, rendered from the files in OUTPUT_DIR.

Everything is read back from the derivative dataset (model JSON, design
tables and sidecars, statistical maps and their sidecars, cluster tables,
the logged configuration), so ``--reports-only`` re-renders a report
without refitting. Figures are PNG files in ``OUTPUT_DIR/figures/`` next to
the report, the interactive viewers (nilearn ``view_img``) are
self-contained HTML files there too: the report opens with no network.
Its summary links the participant level's subject reports
(``sub-<label>_report.html``, :mod:`bids_group_app.reporting.participant`)
present in OUTPUT_DIR.

Colour maps follow what the values mean: a signed map (t, z, effect, a
two-sided thresholded map with both signs) is drawn with a diverging map
symmetric about 0, a positive-only map (F, -log10 p, cluster size or mass,
one-sided thresholded maps, the z of an F-test) with a sequential map from 0
to its maximum (:func:`is_positive_only` decides), so that blue always
means "below zero". Headings name the inference (voxel-level, TFCE,
cluster-size or cluster-mass FWE) and the statistic it was made on.
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_group_app import __version__
from bids_group_app.outputs.dataset import dataset_nodes, latest_config, read_optional_result, read_result_json, unreadable_results
from bids_group_app.outputs.view import as_view
from bids_group_app.outputs.writer import writing
from bids_group_app.outputs.naming import (
    FWE_BY_LABEL,
    FWE_KINDS,
    PARAMETRIC_THRESHOLDS,
    CellNames,
    contrast_files,
    model_cells,
    model_of,
    participant_reports,
    report_file,
    saved_models,
)
from bids_group_app.reporting.graph import fitted_nodes, model_graph
from bids_group_app.reporting.templates import template_dir

LOGGER = logging.getLogger(__name__)
FWE_LABELS = {k.label: k.title for k in FWE_KINDS}
PARAMETRIC_LABELS = {"fpr": "uncorrected (fpr)", "fdr": "FDR", "bonferroni": "Bonferroni"}
DPI = 72
# statistics that cannot be negative; every ``logp*`` label (-log10 p) is one too
NON_NEGATIVE_STATISTICS = frozenset({"F", "p", "size", "mass"})
# the diverging colour map of each view; a positive-only map gets its upper half
SLICES_CMAP = "cold_hot"  # slices on a black background
GLASS_CMAP = "RdBu_r"     # glass brain on white, and the interactive viewer (nilearn's defaults)


def is_positive_only(statistic, values, test="t"):
    """Whether a map is drawn as positive-only (sequential colours, bar from 0 to its maximum).

    Parameters
    ----------
    statistic : str
        The map's ``stat-`` label: t, z, effect, F, p, logp, logpmaxt, tfce,
        size, mass, ...
    values : array-like
        The map's values; NaN and infinite values are ignored.
    test : {"t", "F"}
        The test of the map's contrast.

    Returns
    -------
    bool
        True for a statistic that cannot be negative (F, p, -log10 p,
        cluster size and mass), for every map of an F-test (its z is the
        quantile of the upper-tail p: a negative z means an F below its
        null expectation, not an effect of the opposite sign), and for a
        signed statistic whose map holds no negative value (a one-sided
        thresholded map, a one-sided TFCE map). False for a signed map with
        negative values, which keeps a diverging map symmetric about 0.

    Notes
    -----
    A statistic that cannot be negative but holds negative values is
    logged as a warning and reported as signed, so that the impossible
    values are drawn (in blue) rather than hidden at the bottom of a
    sequential colour bar.
    """
    values = np.asarray(values, dtype=np.float64)
    negative = bool(np.any(values[np.isfinite(values)] < 0))
    if statistic in NON_NEGATIVE_STATISTICS or statistic.startswith("logp"):
        if negative:
            LOGGER.warning("the %s map holds negative values, which a %s statistic cannot take; "
                           "it is drawn with a diverging colour map", statistic, statistic)
        return not negative
    if test == "F":
        return True
    return not negative


def inference_label(kind, statistic, two_sided=False):
    """Name of the inference behind a thresholded map, e.g. ``"voxel-level FWE (max F)"``.

    Parameters
    ----------
    kind : str
        The ``thresh-`` label: fpr, fdr, bonferroni, maxt, maxtfce, maxsize
        or maxmass (``maxt`` is the maximum of the contrast's statistic,
        t or F, whatever the label says).
    statistic : str
        The statistic the permutation test was made on (t or F).
    two_sided : bool
        Whether a t statistic was tested in both directions (``|t|``).

    Returns
    -------
    str
    """
    if kind not in FWE_LABELS:
        return PARAMETRIC_LABELS.get(kind, kind)
    stat = f"|{statistic}|" if two_sided and statistic == "t" else statistic
    return f"{FWE_LABELS[kind]} ({'max' if kind == 'maxt' else 'on'} {stat})"


def plain_text(text):
    """``text`` as matplotlib draws it literally: every ``$`` escaped, so no mathtext is parsed.

    Matplotlib reads a string with an even number of unescaped ``$`` as
    mathtext (``"a$b$"`` draws an italic b, ``"$\\frac{$"`` raises); with each
    ``$`` written ``\\$`` none is unescaped, and matplotlib draws each ``\\$``
    as ``$``, so the text appears exactly as given (a ``\\`` before a ``$``
    included). Figures are drawn with ``text.usetex`` off (see
    :func:`render_model_report`), so no TeX reads it either.

    Parameters
    ----------
    text : str
        A user string: a contrast name, a design column name.

    Returns
    -------
    str
    """
    return str(text).replace("$", r"\$")


def _figure_title(name, what, limit=48):
    """``"<contrast>: <what>"``, the contrast name shortened with "…" to keep it within ``limit`` characters.

    A longer title runs over the colour bar of the slices (its top tick
    label disappears); the full name heads the report's section. The title
    is :func:`plain_text`.
    """
    return plain_text(f"{_shortened(name, max(limit - len(what) - 2, 8))}: {what}")


def _load(path):
    """A map of OUTPUT_DIR and its data as float64, read once (UnreadableResultsError naming it when damaged)."""
    with unreadable_results(Path(path).name):
        img = nib.load(str(path))
        return img, img.get_fdata()


def _shortened(text, limit):
    """``text`` cut to ``limit`` characters, the last one "…" when it was longer."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain_columns(design, limit=32):
    """The design with :func:`plain_text` column names, for the figures that label its columns.

    Names longer than ``limit`` characters are shortened with "…" (a long
    label leaves matplotlib no room for the plot itself: the correlation
    figure of a 90-character covariate fails to draw); shortened names that
    coincide get a number, so columns stay distinct. The design sidecar and
    the report's tables keep the full names.
    """
    labels, seen = [], set()
    for name in design.columns:
        label = _shortened(name, limit)
        if label in seen:
            label = _shortened(name, limit - 4) + f"[{len(labels)}]"
        seen.add(label)
        labels.append(plain_text(label))
    return design.set_axis(labels, axis=1)


def _upper_half(cmap):
    """The part of a diverging colour map above its centre, as a sequential map."""
    import matplotlib
    from matplotlib.colors import LinearSegmentedColormap
    from nilearn.plotting import cm  # noqa: F401  (registers nilearn's colour maps with matplotlib)

    cmap = matplotlib.colormaps[cmap]
    return LinearSegmentedColormap.from_list(f"{cmap.name}_upper", cmap(np.linspace(0.5, 1, 256)))


def _positive_part(img, data):
    """``img`` with its negative values set to 0 (drawing a one-sided statistic), or ``img`` itself."""
    if not np.any(data < 0):
        return img
    return nib.Nifti1Image(np.clip(data, 0, None).astype(np.float32), img.affine, img.header)


@dataclass
class ContrastResult:
    """Files of one contrast of one cell."""

    name: str
    label: str
    sidecar: dict
    maps: dict = field(default_factory=dict)  # stat label -> Path
    thresholded: list = field(default_factory=list)  # (kind, map Path, sidecar, clusters DataFrame)


@dataclass
class CellResult:
    """Files of one model cell."""

    names: CellNames
    design: pd.DataFrame
    sidecar: dict
    mask: Path
    contrasts: list = field(default_factory=list)

    @property
    def node(self):
        """The node name."""
        return self.names.node

    @property
    def prefix(self):
        """The GroupBy values, as they appear in file names."""
        return self.names.label


_read_json = read_result_json


THRESHOLD_ORDER = [*PARAMETRIC_THRESHOLDS, *FWE_BY_LABEL]


#: How the report names each Test in a contrast's heading.
TEST_LABELS = {"t": "t-test", "F": "F-test", "FEMA": "fixed-effects (FEMA) t-test",
               "pass": "passed on without a test (effect map)"}


def _threshold_rank(name):
    kind = name.get("thresh")
    return THRESHOLD_ORDER.index(kind) if kind in THRESHOLD_ORDER else len(THRESHOLD_ORDER)


def collect(output_dir, model_path):
    """The cells and contrasts of one model, from OUTPUT_DIR (through :mod:`.naming`).

    ``output_dir`` is a path or an :class:`~bids_group_app.outputs.view.OutputView`.
    """
    output_dir = as_view(output_dir)
    model = _read_json(model_path)
    label = model_of(model_path)
    cells = []
    for node in dataset_nodes(model):
        for names in model_cells(output_dir, label, node.get("Name")):
            cell = CellResult(names=names, design=pd.read_csv(output_dir / names.design(), sep="\t"),
                              sidecar=_read_json(output_dir / names.design(".json")), mask=output_dir / names.mask())
            for contrast_label, files in contrast_files(output_dir, names).items():
                result = None
                for name in sorted(files, key=_threshold_rank):
                    info = _read_json(output_dir / name.relpath)
                    if result is None:
                        result = ContrastResult(info["Contrast"]["Name"], contrast_label, info)
                    image = output_dir / names.statmap(contrast_label, name.get("stat"), name.get("thresh"))
                    if name.get("thresh") is None:
                        result.maps[name.get("stat")] = image
                        continue
                    table = output_dir / names.clusters(contrast_label, name.get("thresh"))
                    clusters = pd.read_csv(table, sep="\t") if table.exists() else pd.DataFrame()
                    result.thresholded.append((name.get("thresh"), image, info, clusters))
                cell.contrasts.append(result)
            cells.append(cell)
    return model, cells


class _Figures:
    """Makes the PNG figures and viewers of a report, in ``<target>/figures``."""

    def __init__(self, output_dir):
        import matplotlib

        matplotlib.use("Agg")
        self.output_dir = Path(output_dir)
        self.folder = self.output_dir / "figures"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written = []
        self._background = None

    @property
    def background(self):
        if self._background is None:
            from nilearn.datasets import load_mni152_template

            self._background = load_mni152_template(resolution=2)
        return self._background

    def _save(self, figure, relpath):
        import matplotlib.pyplot as plt

        path = self.output_dir / relpath
        try:
            with writing(path):
                figure.savefig(path, dpi=DPI, bbox_inches="tight")
        finally:
            plt.close(figure)
        self.written.append(path)
        return path.relative_to(self.output_dir).as_posix()

    def design(self, cell):
        import matplotlib.pyplot as plt
        from nilearn.plotting import plot_design_matrix, plot_design_matrix_correlation

        width = min(2 + 0.35 * cell.design.shape[1], 14)
        figure, axes = plt.subplots(figsize=(width, 5))
        plot_design_matrix(_plain_columns(cell.design), axes=axes)
        design = self._save(figure, cell.names.figure("design"))
        correlation = None
        if cell.design.shape[1] > 1 and cell.design.shape[1] <= 40:
            ax = plot_design_matrix_correlation(_plain_columns(cell.design))
            correlation = self._save(ax.figure, cell.names.figure("corrdesign"))
        return design, correlation

    def contrasts(self, cell):
        import matplotlib.pyplot as plt
        from nilearn.plotting import plot_contrast_matrix

        paths = []
        for contrast in cell.contrasts:
            weights = np.atleast_2d(contrast.sidecar["Contrast"]["Weights"])
            ax = plot_contrast_matrix(weights if len(weights) > 1 else weights[0],
                                      design_matrix=_plain_columns(cell.design))
            ax.set_title(plain_text(contrast.name), fontsize=9)
            paths.append((contrast.name, self._save(ax.figure, cell.names.figure("contrast", contrast.label))))
            plt.close("all")
        return paths

    def mask(self, cell):
        from nilearn.plotting import plot_roi

        display = plot_roi(str(cell.mask), bg_img=self.background, draw_cross=False, display_mode="ortho")
        return self._save(display.frame_axes.figure, cell.names.figure("mask"))

    def statmap(self, path, figure, statistic, test, threshold=None, title=None):
        """Slices and glass brain of a map; ``threshold`` hides smaller |values|.

        A signed map is drawn with the views' diverging colour maps,
        symmetric about 0; a positive-only one (see :func:`is_positive_only`)
        with their upper halves from 0 to its maximum, negative values (the
        z of an F-test) not drawn. ``figure(kind)`` names the figure of each
        kind (see :meth:`bids_group_app.outputs.naming.CellNames.figure`).
        """
        from nilearn.plotting import plot_glass_brain, plot_stat_map

        kwargs = {"threshold": threshold, "colorbar": True, "title": title}
        img, data = _load(path)
        data = np.nan_to_num(data)
        if is_positive_only(statistic, data, test):
            img, source = _positive_part(img, data), None
            data = np.clip(data, 0, None)
            scale = {"symmetric_cbar": False, "vmin": 0, "vmax": float(data.max()) or 1.0}
            slices_cmap, glass = _upper_half(SLICES_CMAP), {"cmap": _upper_half(GLASS_CMAP), **scale}
        else:
            source, scale, slices_cmap, glass = str(path), {}, SLICES_CMAP, {}
        peak = np.unravel_index(int(np.argmax(np.abs(data))), data.shape)
        cut = nib.affines.apply_affine(img.affine, peak)  # slices through the strongest voxel
        slices = plot_stat_map(img, bg_img=self.background, display_mode="ortho", draw_cross=False,
                               cut_coords=cut, cmap=slices_cmap, black_bg=True, **scale, **kwargs)
        slices_png = self._save(slices.frame_axes.figure, figure("slices"))
        glass = plot_glass_brain(source or img, plot_abs=False, display_mode="lyrz", **glass, **kwargs)
        glass_png = self._save(glass.frame_axes.figure, figure("glass"))
        return slices_png, glass_png

    def viewer(self, path, relpath, threshold, test, page_title):
        """Interactive viewer (nilearn ``view_img``) of a z map; returns its path and its title.

        brainsprite writes the title on the canvas over the first (sagittal)
        panel only, and its room grows with the viewer as its font does: a
        wider viewer does not make a long title fit, so the title says only
        what is drawn (``|z| > 3.09``, ``z > 3.09`` for the one-sided z of an
        F-test) and the contrast goes into the report's heading and into
        the page's ``<title>`` (``page_title``).
        """
        from nilearn.plotting import view_img

        img, data = _load(path)
        data = np.nan_to_num(data)
        options = {}
        positive = is_positive_only("z", data, test)
        if positive:
            img = _positive_part(img, data)
            options = {"cmap": _upper_half(GLASS_CMAP), "symmetric_cmap": False, "vmin": 0,
                       "vmax": float(np.clip(data, 0, None).max()) or 1.0}
        z = "z" if positive else "|z|"
        title = f"{z} > {threshold:.2f}" if threshold else "z, no threshold"
        target = self.output_dir / relpath
        page = view_img(img if positive else str(path), bg_img=self.background, threshold=threshold, title=title,
                        **options).get_standalone()
        # the page embeds its scripts and images; only nilearn's favicon would need the network
        page = re.sub(r"<link[^>]*rel=\"icon\"[^>]*/?>", "", page, flags=re.S)
        page = re.sub(r"<title>.*?</title>", lambda _: f"<title>{html.escape(page_title)}</title>", page,
                      count=1, flags=re.S)
        with writing(target):
            target.write_text(page)
        self.written.append(target)
        return target.relative_to(self.output_dir).as_posix(), title


def _threshold_text(kind, sidecar, label):
    """The threshold of a thresholded map in words; ``label`` is its :func:`inference_label`."""
    if kind in FWE_LABELS:
        return (f"{label} p < {sidecar.get('FWEAlpha')} by permutation "
                f"({sidecar.get('NumberOfPermutations')} shufflings, {sidecar.get('Shuffling', {}).get('Scheme')}); "
                f"{sidecar.get('SurvivingVoxels', 0)} voxels survive")
    threshold = (sidecar.get("Threshold") or {}).get("Value")
    z = "|z|" if sidecar.get("TwoSided") else "z"
    value = "no voxel survives" if threshold is None else f"{z} > {threshold:.3f}"
    extent = sidecar.get("ClusterExtentThreshold", 0)
    return f"{label} α = {sidecar.get('Alpha')}, {value}" + (f", clusters ≥ {extent} voxels" if extent else "")


def _table_html(frame):
    if frame is None or frame.empty:
        return "<p class='empty'>No cluster.</p>"
    return frame.to_html(index=False, classes="clusters", border=0, na_rep="", float_format=lambda v: f"{v:.2f}")


def _sections(cells, figures):
    """The report's sections, one per cell, with their figures drawn by ``figures`` (:class:`_Figures`)."""
    sections = []
    for cell in cells:
        design, correlation = figures.design(cell)
        contrasts = []
        for contrast in cell.contrasts:
            test = contrast.sidecar["Contrast"]["Test"]
            stat = next(s for s in ("t", "F", "effect") if s in contrast.maps)  # a pass contrast has no test
            unthresholded = figures.statmap(contrast.maps[stat], partial(cell.names.figure, contrast=contrast.label, stat=stat), stat, test,
                                            title=_figure_title(contrast.name, f"{stat} (unthresholded)"))
            thresholded = []
            for kind, path, sidecar, clusters in contrast.thresholded:
                statistic = sidecar.get("Statistic", stat)
                label = inference_label(kind, statistic, bool(sidecar.get("TwoSided")))
                survived = bool(np.any(_load(path)[1]))
                images = figures.statmap(path, partial(cell.names.figure, contrast=contrast.label, thresh=kind), statistic, test, threshold=1e-6,
                                         title=_figure_title(contrast.name, label)) if survived else None
                thresholded.append({
                    "kind": kind, "label": label, "family": "permutation" if kind in FWE_LABELS else "parametric",
                    "text": _threshold_text(kind, sidecar, label), "images": images,
                    "table": _table_html(clusters), "atlas": sidecar.get("Atlas"),
                })
            viewer = viewer_title = None
            if "z" in contrast.maps:
                z_threshold = _parametric_z_threshold(contrast)
                viewer, viewer_title = figures.viewer(contrast.maps["z"], cell.names.figure("viewer", contrast.label, "z", extension=".html"), z_threshold, test,
                                                      page_title=f"{contrast.name}: z map")
            contrasts.append({"name": contrast.name, "test": test, "stat": stat,
                              "test_label": TEST_LABELS.get(test, f"{test}-test"),
                              "dof": contrast.sidecar.get("DegreesOfFreedom"),
                              "unthresholded": unthresholded, "thresholded": thresholded, "viewer": viewer,
                              "viewer_title": viewer_title})
        sections.append({
            "title": f"{cell.node}" + (f" — {cell.prefix}" if cell.prefix else ""),
            "design": design, "correlation": correlation, "contrast_figures": figures.contrasts(cell),
            "mask": figures.mask(cell), "sidecar": cell.sidecar, "contrasts": contrasts,
            "n_maps": cell.sidecar.get("NumberOfMaps"),
        })
    return sections


def render_model_report(output_dir, model_path, target_dir=None):
    """Render ``model-<name>_report.html`` and its figures.

    Reads OUTPUT_DIR; writes into ``target_dir`` (default OUTPUT_DIR), whose
    layout mirrors OUTPUT_DIR (a staging folder moved into place later).
    Returns the written paths relative to ``target_dir``.

    User strings never become code: the page is rendered with autoescaping,
    the viewer pages hold the contrast name only in their escaped
    ``<title>``, and figures draw names as :func:`plain_text`, with
    ``text.usetex`` off whatever the matplotlib configuration says.
    """
    import matplotlib
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    output_dir = as_view(output_dir)
    target_dir = Path(target_dir or output_dir.root)
    label = model_of(model_path)
    with unreadable_results(Path(model_path).name):
        model, cells = collect(output_dir, model_path)
    figures = _Figures(target_dir)
    with matplotlib.rc_context({"text.usetex": False}):
        sections = _sections(cells, figures)
    environment = Environment(loader=FileSystemLoader(str(template_dir())),
                              autoescape=select_autoescape(["html", "j2"]))
    config = read_optional_result(latest_config(output_dir, label))
    page = environment.get_template("report.html.j2").render(
        model=model, model_json=json.dumps(model, indent=2), sections=sections, config=config,
        graph=model_graph(model, fitted_nodes(output_dir, label, {
            name: [c.sidecar for c in cells if c.node == name] for name in {c.node for c in cells}})),
        command=" ".join(html.escape(str(a)) for a in config.get("CommandLine", [])),
        versions=config.get("SoftwareVersions", {}), version=__version__,
        description=read_optional_result(output_dir / "dataset_description.json"),
        participants=[p.as_posix() for p in participant_reports(output_dir)],
    )
    target = target_dir / report_file(label)
    with writing(target):
        target.write_text(page)
    return [p.relative_to(target_dir) for p in (target, *figures.written)]


def _parametric_z_threshold(contrast):
    """The z threshold of the parametric thresholded map, if one was made."""
    for kind, _, sidecar, _ in contrast.thresholded:
        value = (sidecar.get("Threshold") or {}).get("Value")
        if kind not in FWE_LABELS and value:
            return float(value)
    return None


def write_reports(output_dir, target_dir=None, models=None):
    """Render the reports of the models of OUTPUT_DIR; returns the written relative paths.

    Parameters
    ----------
    output_dir : str, pathlib.Path or bids_group_app.outputs.view.OutputView
    target_dir : path-like, optional
        See :func:`render_model_report`.
    models : list of str, optional
        The model labels to render (default: every saved model).

    Raises
    ------
    bids_group_app.errors.UnreadableResultsError
        When a model's files cannot be read back (exit 65), naming it.
    """
    written = []
    for model_path in saved_models(output_dir):
        if models is None or model_of(model_path) in models:
            written.extend(render_model_report(output_dir, model_path, target_dir))
    return written
