"""The group analysis, top to bottom.

model spec → inputs → design → data matrix → GLM → permutation →
inference → outputs → report. :func:`plan` does every check that needs no
image data (inputs, model, designs, contrasts) so that most bad input fails
before anything is computed; :func:`execute` loads the maps, fits, runs the
permutations, and writes through a staging folder that is committed (under
a lock on OUTPUT_DIR) only when every cell succeeded; the report and the
methods text are then rendered from OUTPUT_DIR.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from . import inputs as inputs_stage
from . import nonparametric
from .data_matrix import build_data_matrix
from .design import build_design
from .errors import (
    DataError,
    MissingInputError,
    NoFilesSelectedError,
    OutputError,
    UnknownAnalysisLevelError,
    UsageError,
)
from .glm import contrast_maps, fit_ols
from .atlas import COLUMN_DESCRIPTIONS
from .inference import atlas_provenance, threshold_contrast, threshold_table
from .model_spec import auto_group_by, load_model, model_from_options, parse_model
from .outputs import (
    OutputWriter,
    merge_descriptions,
    merge_models,
    output_lock,
    bidsignore,
    cell_prefix,
    dataset_description,
    join_name,
    sanitize_label,
    software_versions,
)
from .participants import MATCHED, join_participants, levels, read_participants, strip_sub

LOGGER = logging.getLogger(__name__)
SHORT_DESIGN_OPTIONS = ("one_sample", "two_sample", "paired", "rm_anova", "covariates", "demean", "contrast", "group_by")


@dataclass
class Cell:
    """One model fit: a node and the GroupBy values it was fit for."""

    node: object
    group_values: dict
    design: object
    prefix: str


@dataclass
class Plan:
    """Everything decided before any image is loaded."""

    bids_dir: Path
    output_dir: Path
    derivatives: list
    document: dict
    filters: dict
    cells: list = field(default_factory=list)
    participants_report: dict = field(default_factory=dict)


def _check_paths(options):
    if options.analysis_level != "group":
        raise UnknownAnalysisLevelError(
            f"analysis level '{options.analysis_level}' is not supported; this app runs the 'group' level"
        )
    bids_dir = options.bids_dir.expanduser().resolve()
    if not bids_dir.is_dir():
        raise MissingInputError(f"BIDS_DIR {options.bids_dir} does not exist or is not a directory")
    output_dir = options.output_dir.expanduser().resolve()
    if output_dir == bids_dir or bids_dir.is_relative_to(output_dir):
        raise UsageError(f"OUTPUT_DIR {output_dir} would overwrite BIDS_DIR {bids_dir}; choose another folder (e.g. BIDS_DIR/derivatives/group)")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"OUTPUT_DIR {output_dir} exists and is not a directory; give a folder path")
    if not options.skip_bids_validation:
        description = bids_dir / "dataset_description.json"
        if not description.is_file():
            raise MissingInputError(f"{bids_dir} is not a BIDS dataset: dataset_description.json is missing (or pass --skip-bids-validation)")
        try:
            json.loads(description.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{description} is not valid JSON: {err}") from None
    return bids_dir, output_dir


def _derivatives(options, bids_dir, output_dir):
    derivatives = [Path(d).resolve() for d in inputs_stage.resolve_derivatives(bids_dir, options.derivatives)]
    for deriv in derivatives:
        if output_dir == deriv or output_dir.is_relative_to(deriv) or deriv.is_relative_to(output_dir):
            raise UsageError(f"OUTPUT_DIR {output_dir} overlaps the input derivative dataset {deriv}; choose a separate folder")
    return derivatives


def _merge_filters(*sources):
    merged = {}
    for source in sources:
        for key, values in source.items():
            merged[key] = list(values)
    return merged


def _cli_filters(options):
    from_file = inputs_stage.load_bids_filter_file(options.bids_filter_file) if options.bids_filter_file else {}
    return _merge_filters(from_file, inputs_stage.parse_filter_args(options.filter))


def _value_matches(series, wanted):
    if None in wanted:
        return series.isna()
    as_text = series.map(lambda v: v if pd.isna(v) else levels(pd.Series([v]))[0])
    return as_text.isin([str(w) for w in wanted])


def _apply_node_filters(table, node):
    rows = table
    for key, wanted in node.filters.items():
        if key not in rows.columns:
            raise DataError(f"node '{node.name}' Filter names '{key}', which is neither an entity nor a participants.tsv column")
        kept = rows[_value_matches(rows[key], wanted)]
        if kept.empty:
            raise NoFilesSelectedError(
                f"node '{node.name}' Filter {key}={','.join(map(str, wanted))} selects no map; values present: {', '.join(levels(rows[key]))}"
            )
        rows = kept
    return rows


def _cells(table, node, entity_columns):
    for key in node.group_by:
        if key not in table.columns:
            available = [c for c in table.columns if c not in ("path", MATCHED) and table[c].notna().any()]
            raise DataError(f"node '{node.name}' GroupBy names '{key}', not an entity or participants.tsv column; available: {', '.join(available)}")
    if not node.group_by:
        yield {}, table
        return
    keys = list(node.group_by)
    grouped = table.dropna(subset=keys).groupby(keys, sort=True)
    for values, rows in grouped:
        values = values if isinstance(values, tuple) else (values,)
        yield {k: (levels(pd.Series([v]))[0] if not isinstance(v, str) else v) for k, v in zip(keys, values)}, rows


def _check_collisions(rows, node, group_values, entity_columns):
    def in_design(entity):
        return entity in node.x or any(str(v) in node.x for v in rows[entity].dropna().unique())

    within = [e for e in entity_columns if e != "subject" and e in rows.columns and e not in node.group_by and in_design(e)]
    keys = ["subject"] + [k for k in node.group_by if k in rows.columns and k != "subject"] + within
    collisions = inputs_stage.find_collisions(rows, keys)
    if collisions:
        first = collisions[0]
        where = ", ".join(f"{k}={v}" for k, v in group_values.items()) or "the model"
        varying = [c for c in entity_columns if c in rows.columns and rows[rows["path"].isin(first)][c].nunique(dropna=False) > 1]
        raise DataError(
            f"{len(collisions)} subject(s) have more than one map in {where} (one map per subject per cell is needed), "
            f"e.g. {', '.join(Path(p).name for p in first)}; they differ by {', '.join(varying) or 'path'}: select one with --filter, or add it to GroupBy"
        )


def plan(options):
    """Check inputs and model and build every cell's design.

    Raises
    ------
    AppError subclasses, each with its exit code.
    """
    bids_dir, output_dir = _check_paths(options)
    if options.model and any(getattr(options, o) for o in SHORT_DESIGN_OPTIONS):
        given = [f"--{o.replace('_', '-')}" for o in SHORT_DESIGN_OPTIONS if getattr(options, o)]
        raise UsageError(f"--model and the short design options ({', '.join(given)}) exclude each other; put the design in the model file")
    model = load_model(options.model) if options.model else None
    derivatives = _derivatives(options, bids_dir, output_dir)
    table = inputs_stage.index_maps(bids_dir, derivatives, database_dir=options.bids_database_dir)
    if table.empty:
        raise MissingInputError(f"no image with a sub-<label> entity in {', '.join(map(str, derivatives))}")
    participants = read_participants(bids_dir)
    cli_filters = _cli_filters(options)
    labels = [strip_sub(p) for p in options.participant_label or []]

    if model is None:
        pre = _merge_filters(inputs_stage.default_filters(table), cli_filters)
        selected = inputs_stage.select_maps(table, pre, labels or None)
        document = model_from_options(options, selected, participants)
        model_filters = document["Input"]
    else:
        document = json.loads(json.dumps(model.document))
        model_filters = model.input_filters
    subject_filter = model_filters.get("subject")
    explicit = _merge_filters({k: v for k, v in model_filters.items() if k != "subject"}, cli_filters)
    filters = _merge_filters({k: v for k, v in inputs_stage.default_filters(table).items() if k not in explicit}, explicit)
    selected = inputs_stage.select_maps(table, filters, labels or subject_filter or None)
    if model is None and not options.group_by:
        document["Nodes"][0]["GroupBy"] = auto_group_by(selected, exclude=list(document["Input"]))
    document["Input"] = {**filters, **({"subject": sorted(selected["subject"].unique())} if labels or subject_filter else {})}
    model = parse_model(document)

    entity_columns = [c for c in table.columns if c not in ("path", "dataset")]
    joined, report = join_participants(selected, participants, entity_columns)
    result = Plan(bids_dir, output_dir, derivatives, document, filters, participants_report=report)
    prefixes = set()
    for node in model.nodes:
        rows = _apply_node_filters(joined, node)
        for group_values, cell_rows in _cells(rows, node, entity_columns):
            _check_collisions(cell_rows, node, group_values, entity_columns)
            design = build_design(cell_rows.reset_index(drop=True), node, entity_columns)
            prefix = cell_prefix(group_values)
            names = [sanitize_label(c.name) for c in design.contrasts]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise UsageError(f"contrast names of node '{node.name}' collide once made BIDS labels: {', '.join(duplicates)}; rename them")
            key = (sanitize_label(node.name), prefix)
            if key in prefixes:
                raise UsageError(f"two nodes are named '{key[0]}' once made BIDS labels; rename one")
            prefixes.add(key)
            result.cells.append(Cell(node, group_values, design, prefix))
    LOGGER.info("planned %d model cell(s) from %d maps", len(result.cells), len(selected))
    return result


def _relative_input(path, derivatives):
    for root in derivatives:
        if Path(path).is_relative_to(root):
            return f"bids:{root.name}:{Path(path).relative_to(root)}"
    return str(path)


def _design_sidecar(cell, plan_, dm, options):
    design = cell.design
    return {
        "Node": cell.node.name,
        "GroupBy": cell.group_values,
        "Columns": list(design.matrix.columns),
        "Rank": design.rank,
        "DegreesOfFreedom": design.dof,
        "NumberOfMaps": len(design.rows),
        "Subjects": sorted(design.rows["subject"].unique()),
        "Inputs": [_relative_input(p, plan_.derivatives) for p in design.rows["path"]],
        "DroppedSubjects": [
            {"subject": d["subject"], "input": _relative_input(d["path"], plan_.derivatives), "reason": d["reason"]}
            for d in design.dropped
        ],
        "ParticipantsWithoutMaps": plan_.participants_report.get("without_maps", []),
        "SubjectsWithoutParticipantsRow": plan_.participants_report.get("without_row", []),
        "Mask": {"Source": options.mask or "voxels finite and non-zero in every map", "NumberOfVoxels": int(dm.Y.shape[1])},
        "SmoothingFWHM": options.smoothing_fwhm,
        "ResampledInputs": [_relative_input(p, plan_.derivatives) for p in dm.resampled],
    }


def _cell_key(cell):
    return join_name(f"node-{sanitize_label(cell.node.name)}", cell.prefix)


def _contrast_about(contrast, design, maps):
    return {
        "Contrast": {"Name": contrast.name, "Test": contrast.test,
                     "Weights": contrast.weights.tolist() if contrast.test == "F" else contrast.weights[0].tolist(),
                     "Columns": list(design.matrix.columns)},
        "DegreesOfFreedom": maps.dof,
        **({"NumeratorDegreesOfFreedom": maps.df_num} if contrast.test == "F" else {}),
        "PValue": "one-sided, upper tail of the t/F distribution (nilearn convention)",
        "ZScore": "standard-normal quantile of the one-sided p-value",
    }


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
    about = _contrast_about(contrast, design, maps)
    for stat, values in maps.as_dict().items():
        writer.image(f"{base}_stat-{stat}_statmap.nii.gz", dm.masker.inverse_transform(values.astype(np.float32)))
        writer.json(f"{base}_stat-{stat}_statmap.json", {"Statistic": stat, **about, **common})
    z_img = dm.masker.inverse_transform(maps.z.astype(np.float32))
    thresholded = threshold_contrast(
        z_img, dm.mask_img, height_control=options.height_control, alpha=options.alpha,
        cluster_threshold=options.cluster_threshold, two_sided=options.two_sided and contrast.test == "t",
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
        clusters = threshold_table(img, two_sided=test.two_sided)
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
    common = {**_design_sidecar(cell, plan_, dm, options), "SoftwareVersions": versions}
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
            model_file = _model_file(plan_.output_dir, plan_.document)
            writer.json(model_file.name, merge_models(_read_existing(model_file), plan_.document))
            description = plan_.output_dir / "dataset_description.json"
            writer.json(description.name, merge_descriptions(
                _read_existing(description), dataset_description([plan_.bids_dir, *plan_.derivatives])))
            written = list(writer.written)
            writer.commit()
            written += publish_reports(plan_.output_dir, html_reports=not options.no_reports)
    except BaseException:
        writer.abort()
        raise
    return [plan_.output_dir / p for p in written]


def _read_existing(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _model_file(output_dir, document):
    """Where a model is saved: ``model-<name>_smdl.json``, or with a hash when
    another model of the same name but a different design is there."""
    name = sanitize_label(document.get("Name", "model"))
    path = Path(output_dir) / f"model-{name}_smdl.json"
    existing = _read_existing(path)
    if existing is None or merge_models(existing, document) is not None:
        return path
    digest = uuid.uuid5(uuid.NAMESPACE_OID, json.dumps(document, sort_keys=True)).hex[:8]
    LOGGER.warning("OUTPUT_DIR holds another model named %s; saving this one as model-%s%s_smdl.json", name, name, digest)
    return Path(output_dir) / f"model-{name}{digest}_smdl.json"


def publish_reports(output_dir, html_reports=True):
    """Render the methods boilerplate and the HTML reports from OUTPUT_DIR.

    They are staged and moved into place like the results. Returns the
    written paths relative to OUTPUT_DIR.
    """
    from .boilerplate import write_boilerplate
    from .report import write_reports

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


def reports_only(options):
    """``--reports-only``: re-render reports from an existing OUTPUT_DIR."""
    output_dir = options.output_dir.expanduser().resolve()
    if not any(output_dir.glob("model-*_smdl.json")):
        raise MissingInputError(f"{output_dir} holds no results of bids_group_app (no model-*_smdl.json); run the analysis first")
    return [output_dir / p for p in publish_reports(output_dir)]


def _prepare_work_dir(work_dir):
    if work_dir is None:
        return
    try:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"work directory {work_dir} cannot be created: {err.strerror or err}") from None
    tempfile.tempdir = str(Path(work_dir).resolve())


def run(options, argv=None):
    """Plan and execute a group analysis; returns the written paths.

    ``--n-cpus`` caps the BLAS/OpenMP threads of the numerical work;
    ``--work-dir`` becomes the folder for temporary files. With
    ``--perm-shard`` only the shard is computed and saved in the work
    directory; nothing is written to OUTPUT_DIR.
    """
    previous_tempdir = tempfile.tempdir
    try:
        _prepare_work_dir(options.work_dir)
        with threadpool_limits(limits=options.n_cpus):
            if options.reports_only:
                return reports_only(options)
            planned = plan(options)
            if options.perm_shard:
                compute_shards(planned, options)
                return []
            return execute(planned, options, argv)
    finally:
        tempfile.tempdir = previous_tempdir
