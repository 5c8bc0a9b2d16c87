"""Execution: load the maps of each planned cell, fit, run the permutations,
threshold, and write everything through a staging folder that is committed
(under a lock on OUTPUT_DIR) only when every cell succeeded.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_group_app.inference import nonparametric
from bids_group_app.inference.atlas import COLUMN_DESCRIPTIONS
from bids_group_app.inference.parametric import atlas_provenance, threshold_contrast, threshold_table
from bids_group_app.inputs.data_matrix import build_data_matrix
from bids_group_app.outputs.commit import model_file, output_lock, read_existing
from bids_group_app.outputs.dataset import (
    bidsignore,
    dataset_description,
    merge_descriptions,
    merge_models,
    software_versions,
)
from bids_group_app.outputs.naming import join_name, sanitize_label
from bids_group_app.outputs.writer import OutputWriter
from bids_group_app.stats.glm import contrast_maps, fit_ols
from bids_group_app.workflow.reports import publish_reports
from bids_group_app.workflow.sidecars import contrast_about, design_sidecar

LOGGER = logging.getLogger(__name__)


def _cell_key(cell):
    return join_name(f"node-{sanitize_label(cell.node.name)}", cell.prefix)


def _write_thresholded(writer, prefix, img, info, clusters, sidecar):
    """A thresholded statistic map, its cluster table, and their sidecars."""
    stat_name, thresh = info
    writer.image(f"{prefix}_stat-{stat_name}_thresh-{thresh}_statmap.nii.gz", img)
    writer.json(f"{prefix}_stat-{stat_name}_thresh-{thresh}_statmap.json", sidecar)
    writer.table(f"{prefix}_thresh-{thresh}_clusters.tsv", clusters)
    writer.json(f"{prefix}_thresh-{thresh}_clusters.json", {
        "Description": "Clusters and sub-peaks (nilearn get_clusters_table) of the thresholded map, with "
                       "anatomical labels; X/Y/Z in mm",
        "Columns": COLUMN_DESCRIPTIONS,
        **{k: v for k, v in sidecar.items() if k not in ("Inputs", "Subjects")},
    })


def _write_parametric(writer, cell, dm, labels, results, contrast, common, options):
    design = cell.design
    node_dir = f"node-{sanitize_label(cell.node.name)}"
    maps = contrast_maps(labels, results, contrast.vector, contrast.test)
    base = f"{node_dir}/" + join_name(cell.prefix, f"contrast-{sanitize_label(contrast.name)}")
    about = contrast_about(contrast, design, maps)
    for stat, values in maps.as_dict().items():
        writer.image(f"{base}_stat-{stat}_statmap.nii.gz", dm.masker.inverse_transform(values.astype(np.float32)))
        writer.json(f"{base}_stat-{stat}_statmap.json", {"Statistic": stat, **about, **common})
    z_img = dm.masker.inverse_transform(maps.z.astype(np.float32))
    thresholded = threshold_contrast(
        z_img, dm.mask_img, height_control=options.height_control, alpha=options.alpha,
        cluster_threshold=options.cluster_threshold, two_sided=options.two_sided and contrast.test == "t",
        connectivity=options.connectivity,
    )
    if thresholded is not None:
        img = nib.Nifti1Image(np.asarray(thresholded.img.dataobj, dtype=np.float32), dm.mask_img.affine)
        _write_thresholded(writer, base, img, ("z", sanitize_label(options.height_control)), thresholded.clusters,
                           {"Statistic": "z", **about, **thresholded.describe(), **common})
    return base, about, maps


FWE_KINDS = (("maxt", "voxel-level FWE (maximum statistic)"), ("maxtfce", "TFCE FWE"),
             ("maxsize", "cluster-size FWE"), ("maxmass", "cluster-mass FWE"))


def _write_permutation(writer, dm, contrast, test, null, parametric, base, about, common, options, shufflings, blocks):
    settings = nonparametric.settings_from_options(options)
    perm_about = nonparametric.describe(test, shufflings, blocks, settings, options.seed)
    maps, p = nonparametric.permutation_maps(test, null)
    for stat, values in maps.items():
        writer.image(f"{base}_stat-{stat}_statmap.nii.gz", dm.masker.inverse_transform(values))
        writer.json(f"{base}_stat-{stat}_statmap.json", {"Statistic": stat, **about, **perm_about, **common})
    writer.table(f"{base}_nulldist.tsv", nonparametric.null_table(test, null))
    writer.json(f"{base}_nulldist.json", {
        "Description": "Null distribution of the maximum statistic over the mask, one row per shuffling "
                       "(the unpermuted data excluded)", **about, **perm_about})
    stat_name = contrast.test
    for kind, description in FWE_KINDS:
        if f"p{kind}" not in p:
            continue
        keep = p[f"p{kind}"] <= options.fwe_alpha
        values = np.where(keep, parametric.stat, 0.0).astype(np.float32)  # the values of the stat-t/F map
        img = dm.masker.inverse_transform(values)
        clusters = threshold_table(img, connectivity=options.connectivity)
        _write_thresholded(writer, base, img, (stat_name, kind), clusters, {
            "Statistic": stat_name, "Thresholding": description, "FWEAlpha": options.fwe_alpha,
            "Atlas": atlas_provenance(),
            "SurvivingVoxels": int(keep.sum()), **about, **perm_about, **common})


def _data_matrix(cell, options):
    return build_data_matrix(list(cell.design.rows["path"]), mask=options.mask, smoothing_fwhm=options.smoothing_fwhm)


def _write_cell(writer, cell, plan_, options, versions):
    design = cell.design
    node_dir = f"node-{sanitize_label(cell.node.name)}"
    dm = _data_matrix(cell, options)
    labels, results = fit_ols(dm.Y, design.matrix.to_numpy())
    common = {**design_sidecar(cell, plan_, dm, options), "SoftwareVersions": versions}
    writer.table(f"{node_dir}/{join_name(cell.prefix, 'design.tsv')}", design.matrix)
    writer.json(f"{node_dir}/{join_name(cell.prefix, 'design.json')}", common)
    writer.image(f"{node_dir}/{join_name(cell.prefix, 'mask.nii.gz')}", dm.mask_img)
    if options.n_perm:
        blocks = nonparametric.resolve_blocks(cell, options)
        shufflings = nonparametric.cell_shufflings(cell, options, blocks)
    for contrast in design.contrasts:
        base, about, parametric = _write_parametric(writer, cell, dm, labels, results, contrast, common, options)
        if options.n_perm:
            test, null = nonparametric.run_contrast(dm, cell, contrast, shufflings, blocks, options, _cell_key(cell))
            _write_permutation(writer, dm, contrast, test, null, parametric, base, about, common, options,
                               shufflings, blocks)
    return len(design.contrasts)


def compute_shards(plan_, options):
    """``--perm-shard K/N``: compute and save this shard of every contrast's null."""
    saved = 0
    for cell in plan_.cells:
        dm = _data_matrix(cell, options)
        blocks = nonparametric.resolve_blocks(cell, options)
        shufflings = nonparametric.cell_shufflings(cell, options, blocks)
        for contrast in cell.design.contrasts:
            nonparametric.run_contrast(dm, cell, contrast, shufflings, blocks, options, _cell_key(cell))
            saved += 1
    return saved


def execute(plan_, options, argv=None):
    """Fit every cell and write the derivative dataset; returns written paths.

    On failure nothing is left behind: staged files are dropped, and the
    folders this run created are removed again if they are still empty (a
    concurrent run may have written into them meanwhile).
    """
    created = []
    for folder in (plan_.output_dir, *plan_.output_dir.parents):
        if folder.exists():
            break
        created.append(folder)
    try:
        return _execute(plan_, options, argv)
    except BaseException:
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _execute(plan_, options, argv):
    writer = OutputWriter(plan_.output_dir)
    versions = software_versions()
    try:
        for cell in plan_.cells:
            LOGGER.info("fitting node %s %s (%d maps)", cell.node.name, cell.group_values or "", len(cell.design.rows))
            _write_cell(writer, cell, plan_, options, versions)
        writer.json(f"logs/config-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.json", {
            "CommandLine": ["bids_group_app"] + list(sys.argv[1:] if argv is None else argv),
            "Options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
            "Filters": plan_.filters,
            "SoftwareVersions": versions,
        })
        writer.text(".bidsignore", bidsignore())
        # files that concurrent runs into the same OUTPUT_DIR share are merged
        # with what is there, under the lock, so no run clobbers another's
        with output_lock(plan_.output_dir):
            saved_model = model_file(plan_.output_dir, plan_.document)
            writer.json(saved_model.name, merge_models(read_existing(saved_model), plan_.document))
            description = plan_.output_dir / "dataset_description.json"
            writer.json(description.name, merge_descriptions(
                read_existing(description), dataset_description([plan_.bids_dir, *plan_.derivatives])))
            written = list(writer.written)
            writer.commit()
            written += publish_reports(plan_.output_dir, html_reports=not options.no_reports)
    except BaseException:
        writer.abort()
        raise
    return [plan_.output_dir / p for p in written]


