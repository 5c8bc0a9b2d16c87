"""Real published BIDS Stats Models documents, run as written (issue 10).

Each model of ``tests/data/bsm_corpus`` (see its SOURCES.md) is run with
``bids_group_app BIDS_DIR OUT group --model FILE`` on FitLins-layout
derivatives made for it by :func:`corpus_data.make_corpus_dataset`. For a
model that runs, every Dataset-level t map is checked:

* its inputs (the sidecar's ``Inputs``) are exactly the maps the model's
  edges select: the source node's folder, the edge's contrast Filter, the
  model's ``Input.subject`` and the cell's participants.tsv values;
* where the design is simple enough to build here (``1``, numeric
  participants columns, ``var.LEVEL`` indicators, ``Demean``/``Product``
  outputs), the t values equal an independent numpy OLS on those maps.

Models that do not run today are strict xfails whose reason is the app's
error line; the test fails (not xfails) when the error line changes, so a
fix or a new cause shows up. ``scripts/corpus_status.py`` reruns the corpus,
writes ``tests/data/bsm_corpus/STATUS.md`` and prints :data:`KNOWN_FAILURES`
afresh.
"""

from __future__ import annotations

import json
from pathlib import Path
import re

import nibabel as nib
import numpy as np
import pytest

from corpus_data import (corpus_models, level, model_nodes, node_sources, run_corpus_model,
                         to_alphanum, _as_list, _instructions)

# Fast representatives run by default; the rest are marked slow.
REPRESENTATIVE = {
    "stats-models/model-example_smdl.json",
    "model-zoo/model-narps_smdl.json",
    "model-zoo/model-ds0005_altered_two_grp_diff_adj_age_smdl.json",
    "pybids/ds-005_type-test_model.json",
    "fitlins/ds000003_model-001_smdl.json",
    "fitlins/ds000117_model-001_smdl.json",
}

# The app's error line for each model that does not run today (paths as
# BIDS_DIR / OUTPUT_DIR / MODEL); regenerate with scripts/corpus_status.py.
#: Models that run, whose inputs this harness cannot predict independently (the reason says why).
RAN_UNCHECKED = {
    "fitlins/ds000117_model-001_smdl.json":
        "runs: its pre-1.0 subject step has no Model, so the app computes the subject maps by fixed effects "
        "(FEMA) from the run maps (tests/stats/test_fixed_effects.py checks them against nilearn); the harness's "
        "generator writes no subject maps for such a step, so it cannot list the expected inputs",
}

KNOWN_FAILURES = {
    'fitlins/ds000003_model-001_smdl.json':
        'bids_group_app: error: 10 subject(s) have more than one map in the model (one map per subject per cell is needed), e.g. sub-01_task-rhymejudgment_contrast-trialTypePseudoword_stat-effect_statmap.nii.gz, sub-01_task-rhymejudgment_contrast-trialTypeWord_stat-effect_statmap.nii.gz; they differ by contrast: select one with --filter, or add it to GroupBy',
    'fitlins/ds000030_model-001_smdl.json':
        'bids_group_app: error: 10 subject(s) have more than one map in contrast=acceptVsExplode (one map per subject per cell is needed), e.g. sub-01_task-bart_run-1_contrast-acceptVsExplode_stat-effect_statmap.nii.gz, sub-01_task-bart_run-2_contrast-acceptVsExplode_stat-effect_statmap.nii.gz; they differ by run: select one with --filter, or add it to GroupBy',
    'model-zoo/model-001_smdl.json':
        'bids_group_app: error: 10 subject(s) have more than one map in the model (one map per subject per cell is needed), e.g. sub-01_task-rhymejudgment_contrast-trialTypePseudoword_stat-effect_statmap.nii.gz, sub-01_task-rhymejudgment_contrast-trialTypeWord_stat-effect_statmap.nii.gz; they differ by contrast: select one with --filter, or add it to GroupBy',
    'model-zoo/model-FaceRepParametric_desc-fitlins_smdl.json':
        'bids_group_app: error: the model has no Dataset-level node (levels found: Run); this app runs Dataset nodes',
    'model-zoo/model-FaceRep_desc-fitlins_smdl.json':
        'bids_group_app: error: the model has no Dataset-level node (levels found: Run); this app runs Dataset nodes',
    'model-zoo/model-MoAE-desc-fitlins_smdl.json':
        'bids_group_app: error: the model has no Dataset-level node (levels found: Run); this app runs Dataset nodes',
    'model-zoo/model-MoAE_smdl.json':
        'bids_group_app: error: the model has no Dataset-level node (levels found: Run); this app runs Dataset nodes',
    'model-zoo/model-ds0005_altered_anova_2_by_4_cell_means_smdl.json':
        "bids_group_app: error: contrast 'main sex effect f-test' is not estimable with this design (rank 4 of 8 columns); its columns fake_patient_grp.1:sex.M, fake_patient_grp.1:sex.F, fake_patient_grp.2:sex.M, fake_patient_grp.2:sex.F, fake_patient_grp.3:sex.M, fake_patient_grp.3:sex.F, fake_patient_grp.4:sex.M, fake_patient_grp.4:sex.F are confounded with others",
    'model-zoo/model-ds0005_altered_two_by_two_bs_anova_smdl.json':
        "bids_group_app: error: contrast 'main sex effect f-test' is not estimable with this design (rank 2 of 4 columns); its columns m_task1, m_task2, f_task1, f_task2 are confounded with others",
    'model-zoo/model-ds2799_desc-compcop_smdl.json':
        'bids_group_app: error: the model has no Dataset-level node (levels found: Run); this app runs Dataset nodes',
    'model-zoo/model-ds2799_desc-scrubbing_smdl.json':
        'bids_group_app: error: the model has no Dataset-level node (levels found: Run); this app runs Dataset nodes',
    'model-zoo/model-ds2799_desc-simple_smdl.json':
        'bids_group_app: error: the model has no Dataset-level node (levels found: Run); this app runs Dataset nodes',
    'model-zoo/model-narps_smdl.json':
        "bids_group_app: error: node 'between-groups' has no contrast to compute: contrast 'range_vs_indiference' names C(group)[T.equalRange], C(group)[T.equalIndifference], not design column(s); columns: C(group)[equalIndifference], C(group)[equalRange]",
    'pybids/ds-005_type-interceptonlyrunlevel_model.json':
        'bids_group_app: error: the model has no Dataset-level node (levels found: Run); this app runs Dataset nodes',
    'pybids/ds-005_type-mfx_model.json':
        'bids_group_app: error: Nodes[1].Model.VarianceComponents is not supported by this app (a key of draft BIDS Stats Models, not of version 1.0); remove it',
    'pybids/ds-005_type-test_model.json':
        "bids_group_app: error: design column 'sex' holds non-numeric values (F, M); encode it with a Factor transformation or use it in a Model.Formula",
    'pybids/ds-005_type-testnodummy_model.json':
        "bids_group_app: error: Nodes[2].Contrasts[0] '1': Test 'FEMA' (fixed-effects meta-analysis) needs the first-level variance maps, which this app does not use yet; use Test 't' or 'F' (random effects over the maps)",
}


class CorpusFailure(AssertionError):
    """The model failed with the error line recorded in :data:`KNOWN_FAILURES`."""


def _params():
    params = []
    for rel in corpus_models():
        marks = [] if rel in REPRESENTATIVE else [pytest.mark.slow]
        if rel in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(strict=True, raises=CorpusFailure, reason=KNOWN_FAILURES[rel]))
        params.append(pytest.param(rel, marks=marks, id=rel))
    return params


# --------------------------------------------------------------------------
# What the model's edges select
# --------------------------------------------------------------------------
def _edge_contrasts(truth, source, edge_filter):
    """The source node's contrasts that pass the edge's ``contrast`` Filter (names or FitLins labels)."""
    contrasts = truth["node_contrasts"].get(source, [])
    wanted = [str(v) for v in _as_list(edge_filter.get("contrast"))] if "contrast" in edge_filter else None
    if wanted is None:
        return contrasts
    return [c for c in contrasts if c in wanted or to_alphanum(c) in wanted]


def _selected_subjects(document, truth, cell):
    """Subjects in ``Input.subject`` whose participants.tsv row matches the cell's column values."""
    allowed = [f"sub-{s}" for s in _as_list((document.get("Input") or {}).get("subject"))] or truth["subjects"]
    rows = {r["participant_id"]: r for r in truth["rows"]}
    columns = {k: v for k, v in cell.items() if k in truth["columns"]}
    return [s for s in truth["subjects"] if s in allowed
            and all(str(rows[s][k]) == str(v) for k, v in columns.items())]


def _expected_inputs(truth, source, contrast_label, subjects):
    task = truth["task"]
    return sorted(f"bids:fitlins:node-{to_alphanum(source)}/{s}/{s}_task-{task}_contrast-{contrast_label}"
                  "_stat-effect_statmap.nii.gz" for s in subjects)


# --------------------------------------------------------------------------
# Independent design and OLS
# --------------------------------------------------------------------------
def _column(name, rows, columns, derived):
    """One design column from participants.tsv rows, or None when it is not a simple case."""
    if name in ("1", "intercept"):
        return np.ones(len(rows))
    if name in derived:
        return derived[name]
    if name in columns and columns[name] is None:
        return np.array([float(r[name]) for r in rows])
    if "." in name:
        base, value = name.split(".", 1)
        if base in columns and columns[base] is not None:
            return np.array([float(str(r[base]) == value) for r in rows])
    return None


def _derived_columns(node, rows, columns):
    """Outputs of Demean and Product instructions (the only transformations rebuilt here)."""
    derived = {}
    for instruction in _instructions(node):
        name = str(instruction.get("Name")).lower()
        inputs = [str(v) for v in _as_list(instruction.get("Input"))]
        outputs = [str(v) for v in _as_list(instruction.get("Output"))] or inputs
        values = [_column(i, rows, columns, derived) for i in inputs]
        if name == "factor":
            continue
        if any(v is None for v in values):
            return None
        if name == "demean":
            derived.update({o: v - v.mean() for o, v in zip(outputs, values)})
        elif name == "product":
            derived[outputs[0]] = np.prod(values, axis=0)
        else:
            return None
    return derived


def _independent_t(node, sidecar, rows, columns, data):
    """OLS t map for the sidecar's contrast, from a design built here; None when not a simple case."""
    model = node.get("Model") or {}
    if model.get("Formula") or not model.get("X"):
        return None
    derived = _derived_columns(node, rows, columns)
    if derived is None:
        return None
    x_names = ["intercept" if v in (1, "1") else str(v) for v in _as_list(node["Model"]["X"])]
    design = [_column(n, rows, columns, derived) for n in x_names]
    if any(c is None for c in design):
        return None
    design = np.column_stack(design)
    contrast = sidecar["Contrast"]
    weights = np.zeros(len(x_names))
    for column, weight in zip(contrast["Columns"], np.ravel(contrast["Weights"])):
        weights[x_names.index(column)] = weight
    pinv = np.linalg.pinv(design)
    beta = pinv @ data
    dof = design.shape[0] - np.linalg.matrix_rank(design)
    sigma2 = ((data - design @ beta) ** 2).sum(0) / dof
    return (weights @ beta) / np.sqrt(sigma2 * (weights @ pinv @ pinv.T @ weights))


def _check_node(result, node, source, edge_filter):
    """Check every t map the app wrote for one Dataset node.

    Returns
    -------
    tuple of int
        (t maps whose inputs were checked, t maps also checked against numpy OLS)
    """
    truth, out = result["truth"], result["out"]
    folder = out / f"node-{node['Name']}"
    sidecars = sorted(out.glob("node-*/*_stat-t_statmap.json"))
    sidecars = [json.loads(p.read_text()) | {"_path": str(p)} for p in sidecars]
    sidecars = [s for s in sidecars if s.get("Node") == node["Name"]]
    assert sidecars, f"no t map written for Dataset node {node['Name']!r} (looked in {folder.parent})"
    contrasts = {to_alphanum(c) for c in _edge_contrasts(truth, source, edge_filter)}
    columns = truth["columns"]
    n_ols = 0
    for sidecar in sidecars:
        cell = sidecar["GroupBy"]
        label = cell.get("contrast")
        assert label in contrasts, f"{sidecar['_path']}: input contrast {label!r} is not selected by the edges ({sorted(contrasts)})"
        subjects = _selected_subjects(result["document"], truth, cell)
        expected = _expected_inputs(truth, source, label, subjects)
        assert sorted(sidecar["Inputs"]) == expected, f"{sidecar['_path']}: maps used differ from the edges' selection"
        rows = [next(r for r in truth["rows"] if r["participant_id"] == s) for s in subjects]
        files = [result["bids"] / "derivatives" / "fitlins" / i.split(":", 2)[2] for i in expected]
        data = np.stack([nib.load(str(f)).get_fdata().ravel() for f in files])
        mask = np.all(np.isfinite(data) & (data != 0), axis=0)
        expected_t = _independent_t(node, sidecar, rows, columns, data[:, mask])
        if expected_t is None:
            continue
        app_t = nib.load(re.sub(r"\.json$", ".nii.gz", sidecar["_path"])).get_fdata().ravel()
        np.testing.assert_allclose(app_t[mask], expected_t, rtol=1e-4, atol=1e-4,
                                   err_msg=f"{sidecar['_path']}: t differs from numpy OLS")
        n_ols += 1
    return len(sidecars), n_ols


@pytest.mark.parametrize("relpath", _params())
def test_corpus_model(relpath, tmp_path, run_cli):
    """The published model runs on data made for it, and its Dataset-level t maps are right."""
    result = run_corpus_model(relpath, tmp_path, run_cli)
    if result["code"] != 0:
        if KNOWN_FAILURES.get(relpath) == result["error"]:
            raise CorpusFailure(result["error"])
        pytest.fail(f"exit {result['code']}: {result['error']}\n(recorded: {KNOWN_FAILURES.get(relpath)!r})")
    document = result["document"]
    if relpath in RAN_UNCHECKED:  # the maps are right by other tests; here only that it runs as published
        assert list(Path(result["out"]).glob("node-*/*_stat-t_statmap.nii.gz")), "the run wrote no t map"
        pytest.skip(RAN_UNCHECKED[relpath])
    sources = node_sources(document)
    checked = 0
    for node in model_nodes(document):
        if level(node) == "dataset":
            source, edge_filter = sources[node["Name"]]
            checked += _check_node(result, node, source, edge_filter)[0]
    assert checked, "the run wrote no Dataset-level t map"


def test_checker_on_subject_node_maps(tmp_path, run_cli):
    """The harness's own check, on what the app runs today: Subject-node maps only.

    With the Run node's folder removed, the stats-models example (and a
    model-zoo covariate model with Factor and Demean) run, and every t map
    is checked against numpy OLS, so the checker is exercised before the
    corpus models run as written.
    """
    import shutil

    from corpus_data import CORPUS_DIR, make_corpus_dataset

    for rel, run_node in [("stats-models/model-example_smdl.json", "run"),
                          ("model-zoo/model-ds0005_altered_two_grp_diff_adj_age_smdl.json", "runWithinSubject")]:
        work = tmp_path / rel.replace("/", "_")
        document = json.loads((CORPUS_DIR / rel).read_text())
        truth = make_corpus_dataset(work / "bids", document)
        shutil.rmtree(work / "bids" / "derivatives" / "fitlins" / f"node-{run_node}")
        assert run_cli([work / "bids", work / "out", "group", "--model", CORPUS_DIR / rel]) == 0
        result = {"truth": truth, "out": work / "out", "bids": work / "bids", "document": document}
        node = next(n for n in model_nodes(document) if level(n) == "dataset")
        n_maps, n_ols = _check_node(result, node, *node_sources(document)[node["Name"]])
        assert n_maps == n_ols > 0
