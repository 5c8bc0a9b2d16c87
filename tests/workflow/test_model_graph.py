"""BIDS Stats Models graphs on FitLins layouts (issue 10).

The edge into the Dataset node picks its maps (``node-<Source>/``); a Subject
node the derivatives lack is computed from the run-level maps (fixed effects,
checked against nilearn's ``compute_fixed_effects``); the group t map is
checked against a plain numpy OLS on the maps the edge selected.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_group_app.example_data import make_example_dataset
from tests.workflow.test_statistics import array, find_cell, numpy_ols, numpy_t, statmap

SUBJECTS = 5


def _model(inputs=None, subject_model=None, edges=True, dataset_source="subjectLevel"):
    subject = {"Level": "Subject", "Name": "subjectLevel", "GroupBy": ["subject", "contrast"],
               "Model": subject_model or {"X": [1], "Type": "meta"}, "DummyContrasts": {"Test": "FEMA"}}
    document = {"Name": "graph", "BIDSModelVersion": "1.0.0", "Input": inputs or {},
                "Nodes": [{"Level": "Run", "Name": "runLevel", "GroupBy": ["run", "subject"],
                           "Model": {"X": ["motor"], "Type": "glm"}, "DummyContrasts": {"Test": "t"}},
                          subject,
                          {"Level": "Dataset", "Name": "group", "GroupBy": ["contrast"],
                           "Model": {"X": [1], "Type": "glm"}, "DummyContrasts": {"Test": "t"}}]}
    if edges:
        document["Edges"] = [{"Source": "runLevel", "Destination": "subjectLevel"},
                             {"Source": dataset_source, "Destination": "group"}]
    return document


@pytest.fixture(scope="module")
def both_levels(tmp_path_factory):
    root = tmp_path_factory.mktemp("fitlins-runs")
    return make_example_dataset(root, "fitlins", n_subjects=SUBJECTS, n_runs=3)


@pytest.fixture(scope="module")
def runs_only(tmp_path_factory):
    root = tmp_path_factory.mktemp("fitlins-runs-only")
    return make_example_dataset(root, "fitlins", n_subjects=SUBJECTS, n_runs=3, subject_level=False)


def _run(run_cli, truth, tmp_path, document, *extra):
    model = tmp_path / "model.json"
    model.write_text(json.dumps(document))
    out = tmp_path / "out"
    return run_cli([truth["root"], out, "group", "--model", model, *extra]), out


def _fitlins(truth, node, sub, contrast, stat, run=None):
    run_part = f"_run-{run}" if run else ""
    return (Path(truth["derivatives"]) / f"node-{node}" / f"sub-{sub}"
            / f"sub-{sub}_task-localizer{run_part}_contrast-{contrast}_stat-{stat}_statmap.nii.gz")


def _check_group_t(out, paths, contrast="motor"):
    """The group t map equals a numpy one-sample OLS on ``paths`` (in the cell's mask)."""
    cell = find_cell(out, contrast=contrast)
    Y = np.stack([array(p)[cell.mask] for p in paths]).astype(np.float64)
    fit = numpy_ols(Y, np.ones((len(paths), 1)))
    expected = numpy_t(fit, np.array([1.0]))
    got = array(statmap(cell, "intercept", "t"))[cell.mask]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    return cell


def test_edge_from_subject_node_selects_its_folder(run_cli, both_levels, tmp_path):
    """Run and Subject maps both present: the Subject node's maps, no 'more than one map per subject'."""
    code, out = _run(run_cli, both_levels, tmp_path, _model())
    assert code == 0
    subjects = both_levels["subjects"]
    cell = _check_group_t(out, [_fitlins(both_levels, "subjectLevel", s, "motor", "effect") for s in subjects])
    assert all("node-subjectLevel/" in p for p in cell.sidecar["Inputs"])
    assert not (out / "node-subjectLevel").exists()  # nothing computed: FitLins wrote them


def test_implicit_chaining_without_edges(run_cli, both_levels, tmp_path):
    code, out = _run(run_cli, both_levels, tmp_path, _model(edges=False))
    assert code == 0
    _check_group_t(out, [_fitlins(both_levels, "subjectLevel", s, "motor", "effect") for s in both_levels["subjects"]])


def test_edge_from_run_node_keeps_one_map_per_subject_rule(run_cli, both_levels, tmp_path, capsys):
    code, _ = _run(run_cli, both_levels, tmp_path, _model(dataset_source="runLevel"))
    assert code == 65
    assert "more than one map" in capsys.readouterr().err


def _fixed_effects_reference(truth, sub, runs, contrast="motor"):
    from nilearn.glm import compute_fixed_effects

    effects = [str(_fitlins(truth, "runLevel", sub, contrast, "effect", r)) for r in runs]
    variances = [str(_fitlins(truth, "runLevel", sub, contrast, "variance", r)) for r in runs]
    first = nib.load(effects[0])
    mask = nib.Nifti1Image(np.ones(first.shape, dtype=np.uint8), first.affine)
    return [np.asarray(img.dataobj) for img in compute_fixed_effects(effects, variances, mask)]


def _computed(out, sub, contrast, stat):
    return out / "node-subjectLevel" / f"sub-{sub}" / (
        f"model-graph_sub-{sub}_task-localizer_contrast-{contrast}_stat-{stat}_statmap.nii.gz")


def test_subject_node_computed_by_fixed_effects(run_cli, runs_only, tmp_path):
    code, out = _run(run_cli, runs_only, tmp_path, _model())
    assert code == 0
    subjects = runs_only["subjects"]
    for sub in subjects:
        reference = _fixed_effects_reference(runs_only, sub, (1, 2, 3))
        for stat, ref in zip(("effect", "variance", "t", "z"), reference):
            np.testing.assert_allclose(array(_computed(out, sub, "motor", stat)), ref, rtol=1e-6, atol=1e-6,
                                       err_msg=f"sub-{sub} {stat}")
    sidecar = json.loads(_computed(out, subjects[0], "motor", "effect").with_suffix("").with_suffix(".json").read_text())
    assert sidecar["Method"] == "fixed effects" and len(sidecar["Sources"]) == 6
    _check_group_t(out, [_computed(out, s, "motor", "effect") for s in subjects])


def test_input_run_filter_applies_to_run_maps(run_cli, runs_only, tmp_path):
    code, out = _run(run_cli, runs_only, tmp_path, _model(inputs={"run": [1, 2]}))
    assert code == 0
    sub = runs_only["subjects"][0]
    reference = _fixed_effects_reference(runs_only, sub, (1, 2))
    np.testing.assert_allclose(array(_computed(out, sub, "motor", "effect")), reference[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(array(_computed(out, sub, "motor", "variance")), reference[1], rtol=1e-6, atol=1e-6)


def test_input_run_filter_does_not_empty_subject_maps(run_cli, both_levels, tmp_path, caplog):
    code, out = _run(run_cli, both_levels, tmp_path, _model(inputs={"run": [1, 2]}))
    assert code == 0
    assert "does not apply to the maps of node-subjectLevel/" in caplog.text
    _check_group_t(out, [_fitlins(both_levels, "subjectLevel", s, "motor", "effect") for s in both_levels["subjects"]])


def test_subject_node_glm_is_an_ols_over_runs(run_cli, runs_only, tmp_path):
    document = _model(subject_model={"X": [1], "Type": "glm"})
    document["Nodes"][1]["DummyContrasts"] = {"Test": "t"}
    code, out = _run(run_cli, runs_only, tmp_path, document)
    assert code == 0
    sub = runs_only["subjects"][1]
    runs = np.stack([array(_fitlins(runs_only, "runLevel", sub, "motor", "effect", r)) for r in (1, 2, 3)]).astype(float)
    np.testing.assert_allclose(array(_computed(out, sub, "motor", "effect")), runs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(array(_computed(out, sub, "motor", "variance")), runs.var(0, ddof=1) / 3,
                               rtol=1e-5, atol=1e-6)


def test_missing_variance_map_is_named(run_cli, runs_only, tmp_path_factory, tmp_path, capsys):
    root = tmp_path_factory.mktemp("fitlins-no-variance")
    truth = make_example_dataset(root, "fitlins", n_subjects=4, n_runs=2, subject_level=False)
    gone = _fitlins(truth, "runLevel", truth["subjects"][0], "motor", "variance", 2)
    gone.unlink()
    code, _ = _run(run_cli, truth, tmp_path, _model())
    assert code == 65
    err = capsys.readouterr().err
    assert "stat-variance map; missing" in err and gone.name in err


@pytest.mark.parametrize("mutate, code, fragment", [
    (lambda d: d["Nodes"].insert(3, {"Level": "Dataset", "Name": "second", "Model": {"X": [1]},
                                     "DummyContrasts": True})
     or d["Edges"].append({"Source": "group", "Destination": "second"}), 64, "edge group -> second"),
    (lambda d: d["Edges"].__setitem__(0, {"Source": "runLevel", "Destination": "group"})
     or d["Edges"].pop(1), 65, "more than one map"),
    (lambda d: d["Nodes"][0].update(Name="otherRuns") or d["Edges"].__setitem__(
        0, {"Source": "otherRuns", "Destination": "subjectLevel"}), 18, "node-subjectLevel/"),
    (lambda d: d.update(Input={"run": [9]}), 18, "run=9"),
    (lambda d: d["Nodes"][1]["Model"].update(X=[1, "x"]), 64, "only X: [1]"),
])
def test_refusals(run_cli, runs_only, tmp_path, capsys, mutate, code, fragment):
    document = _model()
    mutate(document)
    got, _ = _run(run_cli, runs_only, tmp_path, document)
    assert got == code
    assert fragment in capsys.readouterr().err
