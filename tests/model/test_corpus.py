"""Real published BIDS Stats Models documents, run as written (issue 10).

Each model of ``tests/data/bsm_corpus`` (see its SOURCES.md) is run with
``bids_group_app BIDS_DIR OUT group --model FILE`` on FitLins-layout
derivatives made for it by :func:`corpus_data.make_corpus_dataset`. For a
model that runs, every Dataset-level t and F map is checked:

* its inputs (the sidecar's ``Inputs``) are exactly the maps the model's
  edges select: the source node's folder (every run's maps from a Run
  node), the edge's contrast Filter (every selected contrast when the cell
  is not one contrast), the model's ``Input.subject`` and the cell's
  participants.tsv values;
* where the design is simple enough to build here (``1``, numeric
  participants columns, ``var.LEVEL`` indicators, ``Demean``/``Product``
  outputs, first-level contrast names as indicators), the t and F values
  equal an independent numpy OLS on those maps.

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
    'model-zoo/model-FaceRepParametric_desc-fitlins_smdl.json':
        "bids_group_app: error: the model has no Dataset-level node (levels found: Run); the group level runs Dataset nodes (its Run and Subject nodes are the participant level's)",
    'model-zoo/model-FaceRep_desc-fitlins_smdl.json':
        "bids_group_app: error: the model has no Dataset-level node (levels found: Run); the group level runs Dataset nodes (its Run and Subject nodes are the participant level's)",
    'model-zoo/model-MoAE-desc-fitlins_smdl.json':
        "bids_group_app: error: the model has no Dataset-level node (levels found: Run); the group level runs Dataset nodes (its Run and Subject nodes are the participant level's)",
    'model-zoo/model-MoAE_smdl.json':
        "bids_group_app: error: the model has no Dataset-level node (levels found: Run); the group level runs Dataset nodes (its Run and Subject nodes are the participant level's)",
    'model-zoo/model-ds2799_desc-compcop_smdl.json':
        "bids_group_app: error: the model has no Dataset-level node (levels found: Run); the group level runs Dataset nodes (its Run and Subject nodes are the participant level's)",
    'model-zoo/model-ds2799_desc-scrubbing_smdl.json':
        "bids_group_app: error: the model has no Dataset-level node (levels found: Run); the group level runs Dataset nodes (its Run and Subject nodes are the participant level's)",
    'model-zoo/model-ds2799_desc-simple_smdl.json':
        "bids_group_app: error: the model has no Dataset-level node (levels found: Run); the group level runs Dataset nodes (its Run and Subject nodes are the participant level's)",
    'model-zoo/model-narps_smdl.json':
        "bids_group_app: error: node 'between-groups' has no contrast to compute: contrast 'range_vs_indiference' names C(group)[T.equalRange], C(group)[T.equalIndifference], not design column(s); columns: C(group)[equalIndifference], C(group)[equalRange]",
    'pybids/ds-005_type-interceptonlyrunlevel_model.json':
        "bids_group_app: error: the model has no Dataset-level node (levels found: Run); the group level runs Dataset nodes (its Run and Subject nodes are the participant level's)",
    'pybids/ds-005_type-mfx_model.json':
        'bids_group_app: error: Nodes[1].Model.VarianceComponents is not supported by this app (a key of draft BIDS Stats Models, not of version 1.0); remove it',
    'pybids/ds-005_type-test_model.json':
        "bids_group_app: error: design column 'sex' holds non-numeric values (F, M); encode it with a Factor transformation or use it in a Model.Formula",
    'pybids/ds-005_type-testnodummy_model.json':
        "bids_group_app: error: design column 'sex' holds non-numeric values (F, M); encode it with a Factor transformation or use it in a Model.Formula",
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


def _expected_inputs(truth, source, contrast_labels, subjects, run_level):
    """The FitLins maps of ``source`` for these subjects and contrasts (every run's, from a Run node)."""
    task = truth["task"]
    runs = [(ses, run) for ses in truth["sessions"] for run in truth["runs"]] if run_level else [(None, None)]
    paths = []
    for s in subjects:
        for label in contrast_labels:
            for ses, run in runs:
                stem = "_".join([s] + ([f"ses-{ses}"] if ses else []) + [f"task-{task}"]
                                + ([f"run-{run}"] if run else []) + [f"contrast-{label}"])
                paths.append(f"bids:fitlins:node-{to_alphanum(source)}/{s}/{stem}_stat-effect_statmap.nii.gz")
    return sorted(paths)


# --------------------------------------------------------------------------
# Independent design and OLS
# --------------------------------------------------------------------------
def _column(name, rows, columns, derived):
    """One design column from participants.tsv rows, or None when it is not a simple case.

    A name that is a first-level contrast (as the model writes it, or its
    FitLins label) is the indicator of the maps of that contrast (each row's
    ``_contrast``), as PyBIDS dummy-codes the incoming contrasts.
    """
    if name in ("1", "intercept"):
        return np.ones(len(rows))
    if rows and any(r["_contrast"] in (name, to_alphanum(name)) for r in rows):
        return np.array([float(r["_contrast"] in (name, to_alphanum(name))) for r in rows])
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


def _independent_stat(node, sidecar, rows, columns, data):
    """OLS t (or F) map for the sidecar's contrast, from a design built here; None when not a simple case."""
    model = node.get("Model") or {"X": [1]}  # a pre-1.0 step without Model: an intercept per contrast
    if model.get("Formula") or not model.get("X"):
        return None
    derived = _derived_columns(node, rows, columns)
    if derived is None:
        return None
    x_names = ["intercept" if v in (1, "1") else str(v) for v in _as_list(model["X"])]
    design = [_column(n, rows, columns, derived) for n in x_names]
    if any(c is None for c in design):
        return None
    design = np.column_stack(design)
    contrast = sidecar["Contrast"]
    given = np.atleast_2d(np.asarray(contrast["Weights"], dtype=float))
    weights = np.zeros((given.shape[0], len(x_names)))
    for j, column in enumerate(contrast["Columns"]):
        weights[:, x_names.index(column)] = given[:, j]
    pinv = np.linalg.pinv(design)
    beta = pinv @ data
    dof = design.shape[0] - np.linalg.matrix_rank(design)
    sigma2 = ((data - design @ beta) ** 2).sum(0) / dof
    if contrast["Test"] == "t":
        return (weights[0] @ beta) / np.sqrt(sigma2 * (weights[0] @ pinv @ pinv.T @ weights[0]))
    effect = weights @ beta  # (q, voxels)
    middle = np.linalg.inv(weights @ pinv @ pinv.T @ weights.T)
    return np.einsum("iv,ij,jv->v", effect, middle, effect) / (len(weights) * sigma2)


def _check_node(result, node, source, edge_filter):
    """Check every t and F map the app wrote for one Dataset node.

    Returns
    -------
    tuple of int
        (maps whose inputs were checked, maps also checked against numpy OLS)
    """
    truth, out = result["truth"], result["out"]
    folder = out / f"node-{node['Name']}"
    sidecars = sorted([*out.glob("node-*/*_stat-t_statmap.json"), *out.glob("node-*/*_stat-F_statmap.json")])
    sidecars = [json.loads(p.read_text()) | {"_path": str(p)} for p in sidecars]
    sidecars = [s for s in sidecars if s.get("Node") == node["Name"] and s["Contrast"]["Test"] in ("t", "F")]
    assert sidecars, f"no t or F map written for Dataset node {node['Name']!r} (looked in {folder.parent})"
    contrasts = sorted({to_alphanum(c) for c in _edge_contrasts(truth, source, edge_filter)})
    run_level = level(next(n for n in model_nodes(result["document"]) if n["Name"] == source)) == "run"
    columns = truth["columns"]
    n_ols = 0
    for sidecar in sidecars:
        cell = sidecar["GroupBy"]
        label = cell.get("contrast")
        assert label is None or label in contrasts, \
            f"{sidecar['_path']}: input contrast {label!r} is not selected by the edges ({contrasts})"
        subjects = _selected_subjects(result["document"], truth, cell)
        expected = _expected_inputs(truth, source, [label] if label else contrasts, subjects, run_level)
        assert sorted(sidecar["Inputs"]) == expected, f"{sidecar['_path']}: maps used differ from the edges' selection"
        inputs = sidecar["Inputs"]  # in design-row order
        rows = [{**next(r for r in truth["rows"] if r["participant_id"] == i.split("/")[1]),
                 "_contrast": re.search(r"_contrast-([A-Za-z0-9]+)_", i).group(1)} for i in inputs]
        files = [result["bids"] / "derivatives" / "fitlins" / i.split(":", 2)[2] for i in inputs]
        data = np.stack([nib.load(str(f)).get_fdata().ravel() for f in files])
        mask = np.all(np.isfinite(data) & (data != 0), axis=0)
        expected_stat = _independent_stat(node, sidecar, rows, columns, data[:, mask])
        if expected_stat is None:
            continue
        app_stat = nib.load(re.sub(r"\.json$", ".nii.gz", sidecar["_path"])).get_fdata().ravel()
        np.testing.assert_allclose(app_stat[mask], expected_stat, rtol=1e-4, atol=1e-4,
                                   err_msg=f"{sidecar['_path']}: {sidecar['Contrast']['Test']} differs from numpy OLS")
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
