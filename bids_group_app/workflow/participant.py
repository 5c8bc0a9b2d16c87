"""The participant level: the Run and Subject (Session) nodes of a BIDS Stats Model, per subject.

For each subject (``--participant-label``, else every subject with a
preprocessed BOLD run in the fMRIPrep derivatives):

1. its runs (:func:`bids_group_app.firstlevel.inputs.find_runs`: preprocessed
   BOLD, brain mask, confounds, raw events, TR), selected by the model's
   ``Input`` and ``--filter``;
2. each run's design from the model's Run node
   (:func:`bids_group_app.firstlevel.design.run_designs`: PyBIDS
   transformations and ``Model.X``, nilearn's HRF, cosine drift), the nilearn
   AR(1) GLM of each run and the node's contrasts
   (:func:`bids_group_app.firstlevel.fit.fit_subject`);
3. the Subject/Session nodes fed by the Run node: fixed effects across the
   runs of each of their GroupBy cells (``Model.Type: meta`` or ``Test:
   FEMA``), as nilearn's multi-run ``FirstLevelModel.compute_contrast``
   combines them (seed 003), or an OLS over the runs (``glm``, ``X: [1]``).

Every map is written as FitLins writes it
(:func:`bids_group_app.outputs.naming.first_level_map`: ``node-<node>/sub-<label>/
sub-<label>_task-<t>_run-<r>_contrast-<c>_stat-<effect|variance|t|F|z|p>_statmap.nii.gz``),
with a sidecar, and each run's design matrix as a TSV; unless ``--no-reports``,
each subject's HTML report ``sub-<label>_report.html``
(:mod:`bids_group_app.reporting.participant`). Files go through the
staging writer and are committed under the OUTPUT_DIR lock, so concurrent
processes (a SLURM array, one subject each) never collide: each writes only
its subjects' folders, and the shared ``dataset_description.json`` is merged.
The group level then reads OUTPUT_DIR as its input.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from dataclasses import replace

import nibabel as nib
import numpy as np

from bids_group_app.errors import NoFilesSelectedError, UsageError
from bids_group_app.inputs.index import load_bids_filter_file, parse_filter_args
from bids_group_app.inputs.participants import strip_sub
from bids_group_app.model.spec import load_model
from bids_group_app.outputs.commit import output_lock, read_existing
from bids_group_app.outputs.dataset import dataset_description, merge_descriptions, software_versions
from bids_group_app.outputs.naming import config_file, first_level_map
from bids_group_app.outputs.writer import OutputWriter, recover
from bids_group_app.stats.fixed_effects import ols_over_runs, t_sf
from bids_group_app.workflow.plan import check_paths, computed_contrast_name, contrast_names

LOGGER = logging.getLogger(__name__)

#: Entities that tell the runs of a subject apart (a Subject/Session node's GroupBy may name them).
RUN_KEYS = ("session", "task", "acquisition", "run")
DESCRIPTION = "participant level: first-level GLMs (nilearn) of the Run and Subject nodes of a BIDS Stats Model"


def _filters(config, document):
    """Entity filters on the BOLD runs: the model's ``Input`` (but ``subject``), then ``--filter``."""
    filters = {k: v for k, v in (document.get("Input") or {}).items() if k != "subject"}
    if config.inputs.bids_filter_file:
        filters.update(load_bids_filter_file(config.inputs.bids_filter_file))
    filters.update(parse_filter_args(list(config.inputs.filter)))
    return {k: (v if isinstance(v, list) else [v]) for k, v in filters.items()}


def _subjects(layout, config, document):
    """The subjects to run: ``--participant-label``, else the model's ``Input.subject``, else all with BOLD."""
    wanted = [strip_sub(s) for s in config.inputs.participant_label]
    if not wanted and (document.get("Input") or {}).get("subject"):
        given = document["Input"]["subject"]
        wanted = [strip_sub(str(s)) for s in (given if isinstance(given, list) else [given])]
    present = sorted(layout.get_subjects(desc="preproc", suffix="bold"))
    if not present:
        raise NoFilesSelectedError("no preprocessed BOLD (desc-preproc_bold) in the fMRIPrep derivatives")
    missing = [s for s in wanted if s not in present]
    if missing:
        raise NoFilesSelectedError(f"no preprocessed BOLD for sub-{', sub-'.join(missing)}; subjects with BOLD: "
                                   f"{', '.join(present)}")
    return wanted or present


def _lower_nodes(model):
    """The Run node and the Subject/Session nodes it feeds (refusing graphs this level cannot run)."""
    graph = model.graph
    runs = [n for n in graph.lower.values() if n.level == "run"]
    if len(runs) != 1:
        raise UsageError(f"the participant level runs a model with one Run node; this one has {len(runs)}")
    run = runs[0]
    fed = []
    for node in graph.lower.values():
        if node.level == "run":
            continue
        edge = graph.incoming(node.name)
        if edge is None or edge.source != run.name:
            raise UsageError(f"node '{node.name}' ({node.level}) is not fed by the Run node '{run.name}'; the "
                             "participant level computes Subject/Session nodes from the Run node's maps")
        if node.problem:
            raise UsageError(f"node '{node.name}' cannot be computed at the participant level: {node.problem}")
        unknown = sorted(set(edge.filters) - {"contrast", *RUN_KEYS})
        if unknown:
            raise UsageError(f"{edge.describe()}: Filter on {', '.join(unknown)}; the participant level filters "
                             f"the runs' maps on contrast, {', '.join(RUN_KEYS)}")
        fed.append((node, edge))
    return run, fed


#: ``Model`` keys of a Run node the participant level runs (others are refused by name: nothing silently ignored).
RUN_MODEL_KEYS = {"X", "Type", "Formula", "HRF", "Options", "Description", "Software"}
RUN_OPTIONS = {"HighPassFilterCutoffHz", "Mask", "Description"}
#: ``Model.Software.bids_group_app`` keys a Run node may give.
RUN_SOFTWARE = {"SmoothingFWHM"}


def _check_run_node(document, name):
    """Refuse (64, naming the key) what the Run node asks that the participant level does not do."""
    raw = next(n for i, n in enumerate(document["Nodes"]) if str(n.get("Name", f"node{i}")) == name)  # as graph names
    model = raw.get("Model") or {}
    where = f"node '{name}' Model"
    for key in sorted(set(model) - RUN_MODEL_KEYS):
        raise UsageError(f"{where}.{key} is not supported at the participant level yet; remove it")
    for key in sorted(set(model.get("Options") or {}) - RUN_OPTIONS):
        raise UsageError(f"{where}.Options.{key} is not supported at the participant level yet (supported: "
                         f"{', '.join(sorted(RUN_OPTIONS - {'Description'}))}); remove it")
    mask = (model.get("Options") or {}).get("Mask")
    if mask is not None and (not isinstance(mask, dict) or not mask):
        raise UsageError(f"{where}.Options.Mask must be BIDS entities of a mask file, e.g. "
                         '{"desc": "brain", "suffix": "mask"}')
    software = (model.get("Software") or {}).get("bids_group_app") or {}
    for key in sorted(set(software) - RUN_SOFTWARE):
        raise UsageError(f"{where}.Software.bids_group_app.{key} is not a Run-node setting (supported: "
                         f"{', '.join(sorted(RUN_SOFTWARE))}); remove it")
    if str(model.get("Type", "glm")).lower() != "glm":
        raise UsageError(f"{where}.Type is {model.get('Type')!r}; a Run node is a 'glm'")
    if model.get("Formula"):
        raise UsageError(f"{where}.Formula is not supported at the participant level yet; list the columns in X")


def _smoothing(config, document, name):
    """Run-level smoothing FWHM (mm): ``--smoothing-fwhm``, else the Run node's ``SmoothingFWHM``, else none."""
    if config.estimation.smoothing_fwhm is not None:
        return float(config.estimation.smoothing_fwhm)
    raw = next(n for i, n in enumerate(document["Nodes"]) if str(n.get("Name", f"node{i}")) == name)
    value = (((raw.get("Model") or {}).get("Software") or {}).get("bids_group_app") or {}).get("SmoothingFWHM")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise UsageError(f"node '{name}' Model.Software.bids_group_app.SmoothingFWHM={value!r} is not valid; "
                         "expected a number of mm >= 0")
    return float(value)


def _run_entities(run):
    """The entities that name a run's maps (those of its preprocessed BOLD: space included, as FitLins names them)."""
    return {k: run.entities[k] for k in ("subject", *RUN_KEYS, "space") if run.entities.get(k) is not None}


def _match_runs(runs, designs):
    """Pair each run's files with its design (PyBIDS' order may differ from the files')."""
    def key(entities):
        return tuple(str(entities.get(k, "")) for k in RUN_KEYS)
    by_key = {key(r.entities): r for r in runs}
    pairs = []
    for design in designs:
        run = by_key.get(key(design.entities))
        if run is None:
            raise UsageError(f"no preprocessed BOLD for the design of run {design.entities}; runs found: "
                             f"{', '.join(r.label for r in runs)}")
        pairs.append((run, design))
    return pairs


def _write_maps(writer, masker_img, node, entities, contrast, maps, sidecar):
    """The stat maps of one contrast (a :class:`~bids_group_app.firstlevel.fit.ContrastMaps`)."""
    stats = {"z": maps.z, "p": maps.p}
    if maps.stat_type == "t":
        stats = {"effect": maps.effect, "variance": maps.variance, "t": maps.stat, **stats}
    else:
        stats = {"F": maps.stat, **stats}
    mask = np.asarray(masker_img.dataobj) != 0
    for stat, values in stats.items():
        volume = np.zeros(mask.shape, dtype=np.float32)
        volume[mask] = values
        relpath = first_level_map(node, entities, contrast, stat)
        writer.image(relpath, nib.Nifti1Image(volume, masker_img.affine))
        writer.json(relpath[: -len(".nii.gz")] + ".json",
                    {"Statistic": stat, "Contrast": contrast, "Test": maps.stat_type,
                     "DegreesOfFreedom": float(maps.dof), **sidecar})


def _scaled(maps, weight):
    """The maps of ``weight`` times a t contrast (the Subject node's contrast on the intercept)."""
    if weight == 1.0:
        return maps
    if maps.stat_type != "t":
        raise UsageError(f"a Subject-node weight of {weight} on an F contrast has no meaning; weigh t contrasts only")
    sign = float(np.sign(weight))
    return replace(maps, effect=maps.effect * weight, variance=maps.variance * weight ** 2, stat=maps.stat * sign,
                   z=maps.z * sign, p=maps.p if sign > 0 else 1.0 - maps.p)


def _ols_maps(run_maps):
    """An OLS over the runs' effects (``glm``, ``X: [1]``), as ContrastMaps."""
    from bids_group_app.firstlevel.fit import ContrastMaps

    combined = ols_over_runs(np.stack([m.effect for m in run_maps]))
    return ContrastMaps(combined.effect, combined.variance, combined.t, t_sf(combined.t, combined.dof),
                        combined.z, combined.dof, "t")


def _keep(name, wanted):
    """Whether a contrast passes an edge's contrast Filter (model name, FitLins or nilearn label)."""
    return wanted is None or name in contrast_names(wanted)


def _subject_level(writer, mask_img, node, edge, pairs, fits, sidecar):
    """Write one Subject/Session node's maps for one subject; returns the number of maps written."""
    from bids_group_app.firstlevel.fit import combine_runs

    keys = [k for k in node.group_by if k in RUN_KEYS]
    wanted = edge.filters.get("contrast")
    run_filters = {k: [str(v) for v in vals] for k, vals in edge.filters.items() if k in RUN_KEYS}
    selected = [i for i, (run, _) in enumerate(pairs)
                if all(str(run.entities.get(k)) in vals for k, vals in run_filters.items())]
    cells = {}
    for i in selected:
        cells.setdefault(tuple(str(pairs[i][0].entities.get(k)) for k in keys), []).append(i)
    written = 0
    for values, indices in sorted(cells.items()):
        runs = [pairs[i][0] for i in indices]
        entities = {"subject": runs[0].entities["subject"],
                    **{k: runs[0].entities[k] for k in (*RUN_KEYS, "space") if k != "run"
                       and runs[0].entities.get(k) is not None and len({str(r.entities.get(k)) for r in runs}) == 1}}
        for incoming, per_run in fits.items():
            if not _keep(incoming, wanted):
                continue
            chosen = [per_run["runs"][i] for i in indices]
            if node.fixed_effects:
                combined = combine_runs(chosen)
            elif chosen[0].stat_type != "t":
                LOGGER.warning("node '%s' (OLS over runs) takes t contrasts; F contrast '%s' is not passed on",
                               node.name, incoming)
                continue
            elif len(chosen) < 2:
                raise UsageError(f"node '{node.name}' is an OLS over runs, but sub-{entities['subject']} has one run; "
                                 "use Model.Type 'meta' (fixed effects) or select more runs")
            else:
                combined = _ols_maps(chosen)
            for name, weight in node.contrasts:
                _write_maps(writer, mask_img, node.name, entities, computed_contrast_name(name, incoming),
                            _scaled(combined, weight), {
                                **sidecar, "Node": node.name, "Level": node.level.capitalize(),
                                "Method": ("fixed effects across runs (nilearn FirstLevelModel)" if node.fixed_effects
                                           else "OLS over runs"),
                                "ContrastWeight": weight, "Runs": [str(r.bold) for r in runs]})
                written += 1
    return written


def _subjects_inputs(layout, document, subjects, filters, mask=None):
    """Every subject's runs (files, TR) and one graph with all their run variables loaded.

    One pass over the layout's files and one ``load_collections`` for all
    ``subjects`` of the process (a process with one subject pays for one).
    ``mask``: the Run node's ``Options.Mask`` entities, whose file replaces
    each run's fMRIPrep brain mask.

    Returns
    -------
    (dict, bids.modeling.BIDSStatsModelsGraph)
        Subject -> list of :class:`~bids_group_app.firstlevel.inputs.RunInputs`, and the graph.
    """
    from bids_group_app.firstlevel.design import build_graph
    from bids_group_app.firstlevel.inputs import find_subjects_runs, model_mask

    runs = find_subjects_runs(layout, subjects, **filters)
    if mask:
        runs = {s: [replace(run, mask=model_mask(layout, run, mask)) for run in found] for s, found in runs.items()}
    return runs, build_graph(layout, json.loads(json.dumps(document)), subjects, **filters)


def _fit_one_subject(writer, graph, document, nodes, subject, runs, versions, report=True, smoothing_fwhm=None):
    """Fit and stage every map of one subject (``nodes``: :func:`_lower_nodes`; ``graph`` and ``runs``:
    :func:`_subjects_inputs`), and its report unless ``report`` is False; returns the number of contrasts
    written. ``smoothing_fwhm``: mm, before fitting."""
    from bids_group_app.firstlevel.design import run_designs
    from bids_group_app.firstlevel.fit import fit_subject, masked_data, subject_mask

    run_node, fed = nodes
    designs = run_designs(graph, subject, node=run_node.name)
    if not designs:
        raise NoFilesSelectedError(f"sub-{subject}: the Run node '{run_node.name}' has no run to fit "
                                   f"(runs found: {', '.join(r.label for r in runs)})")
    pairs = _match_runs(runs, designs)
    mask_img = subject_mask([run.mask for run, _ in pairs])
    data = [masked_data(run.bold, mask_img, smoothing_fwhm) for run, _ in pairs]
    contrasts = designs[0].contrasts
    fits = fit_subject(data, [d for _, d in pairs], contrasts)
    sidecar = {"SoftwareVersions": versions, "SmoothingFWHM": smoothing_fwhm,
               "Mask": sorted({str(run.mask) for run, _ in pairs})}
    written, design_files = 0, []
    for index, (run, design) in enumerate(pairs):
        entities = _run_entities(run)
        design_files.append(first_level_map(run_node.name, entities, suffix="design", extension=".tsv"))
        writer.table(design_files[-1], design.matrix)
        for name, per_run in fits.items():
            _write_maps(writer, mask_img, run_node.name, entities, name, per_run["runs"][index], {
                **sidecar, "Node": run_node.name, "Level": "Run", "Method": "nilearn GLM, AR(1) noise model",
                "Sources": [str(run.bold), str(run.confounds), str(run.events)]})
            written += 1
    for node, edge in fed:
        written += _subject_level(writer, mask_img, node, edge, pairs, fits, sidecar)
    if report:
        from bids_group_app.reporting.participant import stage_participant_report

        stage_participant_report(writer, subject, [(run, design, rel) for (run, design), rel in zip(pairs, design_files)],
                                 [node.name for node, _ in fed] or [run_node.name], document.get("Name", ""))
    LOGGER.info("sub-%s: %d runs, %d contrast maps", subject, len(pairs), written)
    return written


def run_participant(config, argv=None):
    """Fit the Run and Subject nodes of ``--model`` for each subject; returns the written paths.

    Parameters
    ----------
    config : bids_group_app.config.Config
        ``inputs.derivatives`` (the fMRIPrep folder; default
        ``BIDS_DIR/derivatives/fmriprep``), ``inputs.participant_label``,
        ``inputs.filter``, ``model.model``.
    argv : list of str, optional
        The command line, recorded in the log.
    """
    from bids_group_app.firstlevel.inputs import load_layout

    bids_dir, output_dir = check_paths(config.inputs)
    from bids_group_app.firstlevel.design import with_model_hrf

    model = load_model(config.model.model, require_dataset=False)
    document = model.document
    nodes = _lower_nodes(model)
    _check_run_node(document, nodes[0].name)
    fitted = with_model_hrf(document, nodes[0].name)
    run_raw = next(n for i, n in enumerate(document["Nodes"]) if str(n.get("Name", f"node{i}")) == nodes[0].name)
    mask = ((run_raw.get("Model") or {}).get("Options") or {}).get("Mask")
    smoothing_fwhm = _smoothing(config, document, nodes[0].name)
    derivatives = list(config.inputs.derivatives)
    if len(derivatives) > 1:
        raise UsageError("the participant level reads one fMRIPrep folder: give one --derivatives DIR")
    layout = load_layout(bids_dir, derivatives[0] if derivatives else None)
    filters = _filters(config, document)
    subjects = _subjects(layout, config, document)
    versions = software_versions()
    runs, graph = _subjects_inputs(layout, fitted, subjects, filters, mask)
    with OutputWriter(output_dir) as writer:
        for subject in subjects:
            _fit_one_subject(writer, graph, fitted, nodes, subject, runs[subject], versions,
                             report=not config.reports.no_reports, smoothing_fwhm=smoothing_fwhm)
        with output_lock(output_dir):
            recover(output_dir)
            writer.json(config_file(time.strftime("%Y%m%d-%H%M%S"), uuid.uuid4().hex[:6]), {
                "CommandLine": ["bids_group_app"] + list(sys.argv[1:] if argv is None else argv),
                "Level": "participant", "Subjects": subjects, "Model": document, "Filters": filters,
                "Config": config.to_dict(), "SoftwareVersions": versions})
            description = output_dir / "dataset_description.json"
            ours = dataset_description([bids_dir, *(derivatives or [bids_dir / "derivatives" / "fmriprep"])])
            ours["Name"] = "bids_group_app results"
            ours["GeneratedBy"][0]["Description"] = DESCRIPTION
            writer.json(description.name, merge_descriptions(read_existing(description), ours))
            return writer.commit()
