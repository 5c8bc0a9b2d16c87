"""HTML reports: one per model, rendered from the files in OUTPUT_DIR.

Everything is read back from the derivative dataset (model JSON, design
tables and sidecars, statistical maps and their sidecars, cluster tables,
the logged configuration), so ``--reports-only`` re-renders a report
without refitting. Figures are PNG files in ``OUTPUT_DIR/figures/`` next to
the report, the interactive viewers (nilearn ``view_img``) are
self-contained HTML files there too: the report opens with no network.
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
from bids_group_app.outputs.dataset import dataset_node_dirs, latest_config
from bids_group_app.outputs.naming import (
    FWE_BY_LABEL,
    FWE_KINDS,
    PARAMETRIC_THRESHOLDS,
    CellNames,
    contrast_files,
    model_cells,
    model_of,
    report_file,
)
from bids_group_app.reporting.templates import template_dir

LOGGER = logging.getLogger(__name__)
FWE_LABELS = {k.label: k.description for k in FWE_KINDS}
PARAMETRIC_LABELS = {"fpr": "uncorrected (fpr)", "fdr": "FDR", "bonferroni": "Bonferroni"}
DPI = 72


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
        return "_".join(f"{k}-{v}" for k, v in self.names.cell)


def _read_json(path):
    return json.loads(Path(path).read_text())


THRESHOLD_ORDER = [*PARAMETRIC_THRESHOLDS, *FWE_BY_LABEL]


def _threshold_rank(name):
    kind = name.get("thresh")
    return THRESHOLD_ORDER.index(kind) if kind in THRESHOLD_ORDER else len(THRESHOLD_ORDER)


def collect(output_dir, model_path):
    """The cells and contrasts of one model, from OUTPUT_DIR (through :mod:`.naming`)."""
    output_dir = Path(output_dir)
    model = _read_json(model_path)
    label = model_of(model_path)
    cells = []
    for node, _ in dataset_node_dirs(output_dir, model):
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
        figure.savefig(path, dpi=DPI, bbox_inches="tight")
        plt.close(figure)
        self.written.append(path)
        return path.relative_to(self.output_dir).as_posix()

    def design(self, cell):
        import matplotlib.pyplot as plt
        from nilearn.plotting import plot_design_matrix, plot_design_matrix_correlation

        width = min(2 + 0.35 * cell.design.shape[1], 14)
        figure, axes = plt.subplots(figsize=(width, 5))
        plot_design_matrix(cell.design, axes=axes)
        design = self._save(figure, cell.names.figure("design"))
        correlation = None
        if cell.design.shape[1] > 1 and cell.design.shape[1] <= 40:
            ax = plot_design_matrix_correlation(cell.design)
            correlation = self._save(ax.figure, cell.names.figure("corrdesign"))
        return design, correlation

    def contrasts(self, cell):
        import matplotlib.pyplot as plt
        from nilearn.plotting import plot_contrast_matrix

        paths = []
        for contrast in cell.contrasts:
            weights = np.atleast_2d(contrast.sidecar["Contrast"]["Weights"])
            ax = plot_contrast_matrix(weights if len(weights) > 1 else weights[0], design_matrix=cell.design)
            ax.set_title(contrast.name, fontsize=9)
            paths.append((contrast.name, self._save(ax.figure, cell.names.figure("contrast", contrast.label))))
            plt.close("all")
        return paths

    def mask(self, cell):
        from nilearn.plotting import plot_roi

        display = plot_roi(str(cell.mask), bg_img=self.background, draw_cross=False, display_mode="ortho")
        return self._save(display.frame_axes.figure, cell.names.figure("mask"))

    def statmap(self, path, figure, threshold=None, title=None):
        """Slices and glass brain of a map; ``threshold`` hides smaller |values|.

        ``figure(kind)`` names the figure of each kind (see :meth:`.CellNames.figure`).
        """
        from nilearn.plotting import plot_glass_brain, plot_stat_map

        kwargs = {"threshold": threshold, "colorbar": True, "title": title}
        img = nib.load(str(path))
        data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float64))
        peak = np.unravel_index(int(np.argmax(np.abs(data))), data.shape)
        cut = nib.affines.apply_affine(img.affine, peak)  # slices through the strongest voxel
        slices = plot_stat_map(img, bg_img=self.background, display_mode="ortho", draw_cross=False,
                               cut_coords=cut, cmap="cold_hot", black_bg=True, **kwargs)
        slices_png = self._save(slices.frame_axes.figure, figure("slices"))
        glass = plot_glass_brain(str(path), plot_abs=False, display_mode="lyrz", **kwargs)
        glass_png = self._save(glass.frame_axes.figure, figure("glass"))
        return slices_png, glass_png

    def viewer(self, path, relpath, threshold, title):
        from nilearn.plotting import view_img

        target = self.output_dir / relpath
        page = view_img(str(path), bg_img=self.background, threshold=threshold, title=title).get_standalone()
        # the page embeds its scripts and images; only nilearn's favicon would need the network
        page = re.sub(r"<link[^>]*rel=\"icon\"[^>]*/?>", "", page, flags=re.S)
        target.write_text(page)
        self.written.append(target)
        return target.relative_to(self.output_dir).as_posix()


def _threshold_text(kind, sidecar):
    if kind in FWE_LABELS:
        return (f"{FWE_LABELS[kind]} p < {sidecar.get('FWEAlpha')} by permutation "
                f"({sidecar.get('NumberOfPermutations')} shufflings, {sidecar.get('Shuffling', {}).get('Scheme')}); "
                f"{sidecar.get('SurvivingVoxels', 0)} voxels survive")
    threshold = (sidecar.get("Threshold") or {}).get("Value")
    value = "no voxel survives" if threshold is None else f"z > {threshold:.3f}"
    label = PARAMETRIC_LABELS.get(sidecar.get("HeightControl"), sidecar.get("HeightControl"))
    extent = sidecar.get("ClusterExtentThreshold", 0)
    return f"{label} α = {sidecar.get('Alpha')}, {value}" + (f", clusters ≥ {extent} voxels" if extent else "")


def _table_html(frame):
    if frame is None or frame.empty:
        return "<p class='empty'>No cluster.</p>"
    return frame.to_html(index=False, classes="clusters", border=0, na_rep="", float_format=lambda v: f"{v:.2f}")


def render_model_report(output_dir, model_path, target_dir=None):
    """Render ``model-<name>_report.html`` and its figures.

    Reads OUTPUT_DIR; writes into ``target_dir`` (default OUTPUT_DIR), whose
    layout mirrors OUTPUT_DIR (a staging folder moved into place later).
    Returns the written paths relative to ``target_dir``.
    """
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    output_dir = Path(output_dir)
    target_dir = Path(target_dir or output_dir)
    model, cells = collect(output_dir, model_path)
    figures = _Figures(target_dir)
    sections = []
    for cell in cells:
        design, correlation = figures.design(cell)
        contrasts = []
        for contrast in cell.contrasts:
            stat = "t" if "t" in contrast.maps else "F"
            unthresholded = figures.statmap(contrast.maps[stat], partial(cell.names.figure, contrast=contrast.label, stat=stat),
                                            title=f"{contrast.name}: {stat} (unthresholded)")
            thresholded = []
            for kind, path, sidecar, clusters in contrast.thresholded:
                survived = bool(np.any(np.asarray(nib.load(str(path)).dataobj)))
                images = figures.statmap(path, partial(cell.names.figure, contrast=contrast.label, thresh=kind), threshold=1e-6,
                                         title=f"{contrast.name}: {kind}") if survived else None
                thresholded.append({
                    "kind": kind, "family": "permutation" if kind in FWE_LABELS else "parametric",
                    "text": _threshold_text(kind, sidecar), "images": images, "table": _table_html(clusters),
                    "atlas": sidecar.get("Atlas"),
                })
            z_threshold = _parametric_z_threshold(contrast)
            viewer = figures.viewer(contrast.maps["z"], cell.names.figure("viewer", contrast.label, "z", extension=".html"), threshold=z_threshold,
                                    title=f"{contrast.name} (z{f' > {z_threshold:.2f}' if z_threshold else ''})")
            contrasts.append({"name": contrast.name, "test": contrast.sidecar["Contrast"]["Test"],
                              "dof": contrast.sidecar.get("DegreesOfFreedom"),
                              "unthresholded": unthresholded, "thresholded": thresholded, "viewer": viewer})
        sections.append({
            "title": f"{cell.node}" + (f" — {cell.prefix}" if cell.prefix else ""),
            "design": design, "correlation": correlation, "contrast_figures": figures.contrasts(cell),
            "mask": figures.mask(cell), "sidecar": cell.sidecar, "contrasts": contrasts,
            "n_maps": cell.sidecar.get("NumberOfMaps"),
        })
    environment = Environment(loader=FileSystemLoader(str(template_dir())),
                              autoescape=select_autoescape(["html", "j2"]))
    config_path = latest_config(output_dir)
    config = _read_json(config_path) if config_path else {}
    page = environment.get_template("report.html.j2").render(
        model=model, model_json=json.dumps(model, indent=2), sections=sections, config=config,
        command=" ".join(html.escape(str(a)) for a in config.get("CommandLine", [])),
        versions=config.get("SoftwareVersions", {}), version=__version__,
        description=_read_json(output_dir / "dataset_description.json") if (output_dir / "dataset_description.json").exists() else {},
    )
    target = target_dir / report_file(model_of(model_path))
    target.write_text(page)
    return [p.relative_to(target_dir) for p in (target, *figures.written)]


def _parametric_z_threshold(contrast):
    """The z threshold of the parametric thresholded map, if one was made."""
    for kind, _, sidecar, _ in contrast.thresholded:
        value = (sidecar.get("Threshold") or {}).get("Value")
        if kind not in FWE_LABELS and value:
            return float(value)
    return None


def write_reports(output_dir, target_dir=None):
    """Render the report of every model in OUTPUT_DIR; returns the written relative paths."""
    written = []
    for model_path in sorted(Path(output_dir).glob("model-*_smdl.json")):
        written.extend(render_model_report(output_dir, model_path, target_dir))
    return written
