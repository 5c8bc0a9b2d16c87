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


def test_edge_from_run_node_fits_the_runs_as_rows(run_cli, both_levels, tmp_path, caplog):
    """A Dataset node fed run-level maps directly fits every run as a row, as PyBIDS builds it (ds000030's
    FitLins model); it says so, and permutations sign-flip each subject's runs together."""
    code, out = _run(run_cli, both_levels, tmp_path, _model(dataset_source="runLevel"), "--n-perm", "50")
    assert code == 0
    subjects = both_levels["subjects"]
    runs = [_fitlins(both_levels, "runLevel", s, "motor", "effect", r) for s in subjects for r in (1, 2, 3)]
    cell = _check_group_t(out, runs)
    assert cell.sidecar["NumberOfMaps"] == 3 * SUBJECTS and cell.sidecar["DegreesOfFreedom"] == 3 * SUBJECTS - 1
    assert f"{3 * SUBJECTS} maps of {SUBJECTS} subjects enter as separate rows" in caplog.text
    assert cell.sidecar["RepeatedMeasures"].startswith(f"{3 * SUBJECTS} maps of {SUBJECTS} subjects")
    perm = json.loads(statmap(cell, "intercept", "t", "maxt").with_suffix("").with_suffix(".json").read_text())
    assert perm["ExchangeabilityBlocks"] == {"Variable": "subject", "WholeBlock": True}
    assert perm["Shuffling"]["Scheme"] == "signflip"
    # 2**5 whole-subject flips (not 2**15 per run): all of them are enumerated
    assert perm["Shuffling"]["Exhaustive"] and perm["NumberOfPermutations"] == 2 ** SUBJECTS - 1


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
    (lambda d: d["Nodes"][2].update(DummyContrasts=False, Contrasts=[
        {"Name": "f", "ConditionList": [1], "Weights": [[1]], "Test": "F"}])
     or d["Nodes"].insert(3, {"Level": "Dataset", "Name": "second", "Model": {"X": [1]}, "DummyContrasts": True})
     or d["Edges"].append({"Source": "group", "Destination": "second"}), 64, "outputs no effect map"),
    (lambda d: d["Nodes"].extend([
        {"Level": "Dataset", "Name": "a", "Model": {"X": [1]}, "DummyContrasts": True},
        {"Level": "Dataset", "Name": "b", "Model": {"X": [1]}, "DummyContrasts": True}])
     or d["Edges"].extend([{"Source": "a", "Destination": "b"}, {"Source": "b", "Destination": "a"}]),
     64, "form a cycle"),
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


# --------------------------------------------------------------------------
# FEMA and pass at the Dataset level
# --------------------------------------------------------------------------
def _nilearn_ffx(effects, variances):
    """nilearn's compute_fixed_effects (effect, variance, t, z) over in-memory maps."""
    from nilearn.glm import compute_fixed_effects

    affine = np.eye(4)
    mask = nib.Nifti1Image(np.ones(effects[0].shape, dtype=np.uint8), affine)
    images = [[nib.Nifti1Image(np.asarray(a, dtype=np.float64), affine) for a in maps] for maps in (effects, variances)]
    return [np.asarray(img.dataobj) for img in compute_fixed_effects(*images, mask)]


def _fema_model():
    document = _model()
    document["Nodes"][2:] = [
        {"Level": "Dataset", "Name": "fixed", "GroupBy": ["contrast"], "Model": {"X": [1], "Type": "glm"},
         "Contrasts": [{"Name": "mean", "ConditionList": [1], "Weights": [1], "Test": "FEMA"},
                       {"Name": "negMean", "ConditionList": [1], "Weights": [-2], "Test": "FEMA"},
                       {"Name": "passed", "ConditionList": [1], "Weights": [1], "Test": "pass"}]},
        {"Level": "Dataset", "Name": "byGroup", "GroupBy": ["contrast"],
         "Transformations": {"Transformer": "pybids-transforms-v1",
                             "Instructions": [{"Name": "Factor", "Input": ["group"]}]},
         "Model": {"X": ["group.control", "group.patient"], "Type": "meta"},
         "Contrasts": [{"Name": "patientVsControl", "ConditionList": ["group.patient", "group.control"],
                        "Weights": [1, -1], "Test": "t"}]},
    ]
    document["Edges"] = [{"Source": "runLevel", "Destination": "subjectLevel"},
                         {"Source": "subjectLevel", "Destination": "fixed"},
                         {"Source": "subjectLevel", "Destination": "byGroup"}]
    return document


def test_dataset_fema_and_pass_equal_nilearn_and_numpy(run_cli, runs_only, tmp_path):
    """FEMA at the Dataset level is nilearn's compute_fixed_effects of the subject maps (themselves nilearn's
    fixed effects of the runs, computed here independently); a weight scales it; a Model.Type meta 't'
    contrast of two Factor levels is the difference of the levels' fixed effects; 'pass' writes the OLS
    effect and variance and no test."""
    code, out = _run(run_cli, runs_only, tmp_path, _fema_model(), "--n-perm", "20")
    assert code == 0
    subjects = runs_only["subjects"]
    subject_maps = {s: _fixed_effects_reference(runs_only, s, (1, 2, 3)) for s in subjects}
    effects = [subject_maps[s][0] for s in subjects]
    variances = [subject_maps[s][1] for s in subjects]
    cell = find_cell_of(out, "fixed", "motor")
    reference = _nilearn_ffx(effects, variances)
    for stat, ref in zip(("effect", "variance", "t", "z"), reference):
        got = array(statmap(cell, "mean", stat))
        np.testing.assert_allclose(got[cell.mask], ref[cell.mask], rtol=1e-5, atol=1e-5, err_msg=f"FEMA {stat}")
    np.testing.assert_allclose(array(statmap(cell, "negMean", "effect"))[cell.mask], -2 * reference[0][cell.mask],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(array(statmap(cell, "negMean", "variance"))[cell.mask], 4 * reference[1][cell.mask],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(array(statmap(cell, "negMean", "t"))[cell.mask], -reference[2][cell.mask],
                               rtol=1e-5, atol=1e-5)
    sidecar = json.loads(statmap(cell, "mean", "t").with_suffix("").with_suffix(".json").read_text())
    assert sidecar["Contrast"]["Test"] == "FEMA" and sidecar["DegreesOfFreedom"] == 100.0 * len(subjects)  # nilearn's and FitLins' 100 per input map
    assert not list(cell.dir.glob(f"{cell.stem}contrast-mean_*logp*")), "a FEMA contrast is not permuted"
    # pass: OLS effect (the mean of the subject effects) and its variance; no t, z, p
    Y = np.stack([e[cell.mask] for e in effects])
    np.testing.assert_allclose(array(statmap(cell, "passed", "effect"))[cell.mask], Y.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(array(statmap(cell, "passed", "variance"))[cell.mask], Y.var(0, ddof=1) / len(Y),
                               rtol=1e-4, atol=1e-6)
    assert sorted(p.name.split("_stat-")[1] for p in cell.dir.glob(f"{cell.stem}contrast-passed_stat-*.nii.gz")) == \
        ["effect_statmap.nii.gz", "variance_statmap.nii.gz"]
    # meta node: a t contrast is FEMA per Factor level
    rows = {r.split("\t")[0][4:]: r.split("\t") for r in (Path(runs_only["root"]) / "participants.tsv").read_text().splitlines()[1:]}
    by = find_cell_of(out, "byGroup", "motor")
    groups = {g: [i for i, s in enumerate(subjects) if rows[s][3] == g] for g in ("control", "patient")}
    parts = {g: _nilearn_ffx([effects[i] for i in idx], [variances[i] for i in idx]) for g, idx in groups.items()}
    np.testing.assert_allclose(array(statmap(by, "patientVsControl", "effect"))[by.mask],
                               (parts["patient"][0] - parts["control"][0])[by.mask], rtol=1e-5, atol=1e-5)
    variance = parts["patient"][1] + parts["control"][1]
    np.testing.assert_allclose(array(statmap(by, "patientVsControl", "variance"))[by.mask], variance[by.mask],
                               rtol=1e-5, atol=1e-6)


def find_cell_of(out, node, contrast):
    """The cell of Dataset node ``node`` for first-level contrast ``contrast``."""
    hits = [p for p in sorted(Path(out).glob(f"node-{node}/*design.json"))
            if json.loads(p.read_text())["GroupBy"].get("contrast") == contrast]
    assert len(hits) == 1, hits
    path = hits[0]
    sidecar = json.loads(path.read_text())
    stem = path.name[: -len("design.json")]
    from types import SimpleNamespace
    return SimpleNamespace(dir=path.parent, stem=stem, sidecar=sidecar,
                           mask=np.asarray(nib.load(str(path.with_name(f"{stem}mask.nii.gz"))).dataobj) != 0)


def test_dataset_fema_needs_the_variance_maps(run_cli, both_levels, tmp_path, capsys):
    """FEMA over FitLins subject maps whose variance map is gone: exit 65 naming it."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(both_levels["root"], root)
    truth = {**both_levels, "root": str(root), "derivatives": str(root / Path(both_levels["derivatives"]).relative_to(both_levels["root"]))}
    gone = _fitlins(truth, "subjectLevel", truth["subjects"][1], "motor", "variance")
    gone.unlink()
    code, _ = _run(run_cli, truth, tmp_path, _fema_model())
    assert code == 65
    err = capsys.readouterr().err
    assert "FEMA contrast(s) mean, negMean need the stat-variance map" in err and gone.name in err


def test_dataset_to_dataset_chain_fits_the_first_nodes_outputs(run_cli, runs_only, both_levels, tmp_path, capsys):
    """A Dataset node fed by another fits its outputs (one row per cell and contrast), as PyBIDS passes them:
    FEMA over the per-group one-sample maps equals nilearn's compute_fixed_effects of those maps, computed
    here from numpy OLS per group; a t over them equals numpy OLS on the group effects."""
    document = _model()
    document["Nodes"][2:] = [
        {"Level": "Dataset", "Name": "perGroup", "GroupBy": ["contrast", "group"], "Model": {"X": [1]},
         "DummyContrasts": {"Test": "t"}},
        {"Level": "Dataset", "Name": "pooled", "GroupBy": ["contrast"], "Model": {"X": [1], "Type": "meta"},
         "DummyContrasts": {"Test": "FEMA"}},
        {"Level": "Dataset", "Name": "groupMean", "GroupBy": ["contrast"], "Model": {"X": [1]},
         "DummyContrasts": {"Test": "t"}},
    ]
    document["Edges"] = [{"Source": "runLevel", "Destination": "subjectLevel"},
                         {"Source": "subjectLevel", "Destination": "perGroup"},
                         {"Source": "perGroup", "Destination": "pooled"},
                         {"Source": "perGroup", "Destination": "groupMean"}]
    code, out = _run(run_cli, runs_only, tmp_path, document)
    assert code == 0
    subjects = runs_only["subjects"]
    rows = {r.split("\t")[0][4:]: r.split("\t") for r in
            (Path(runs_only["root"]) / "participants.tsv").read_text().splitlines()[1:]}
    effects = {s: _fixed_effects_reference(runs_only, s, (1, 2, 3))[0] for s in subjects}
    group_effect, group_variance = [], []
    for group in ("control", "patient"):
        Y = np.stack([effects[s] for s in subjects if rows[s][3] == group])
        group_effect.append(Y.mean(0))
        group_variance.append(Y.var(0, ddof=1) / len(Y))
    pooled = find_cell_of(out, "pooled", "motor")
    assert sorted(pooled.sidecar["Inputs"]) == sorted(
        f"bids::node-perGroup/model-graph_input-motor_group-{g}_contrast-intercept_stat-effect_statmap.nii.gz"
        for g in ("control", "patient")), pooled.sidecar["Inputs"]
    reference = _nilearn_ffx(group_effect, group_variance)
    for stat, ref in zip(("effect", "variance", "t"), reference):
        np.testing.assert_allclose(array(statmap(pooled, "intercept", stat))[pooled.mask], ref[pooled.mask],
                                   rtol=1e-4, atol=1e-5, err_msg=stat)
    mean = find_cell_of(out, "groupMean", "motor")
    assert mean.sidecar["NumberOfMaps"] == 2 and mean.sidecar["DegreesOfFreedom"] == 1
    Y = np.stack(group_effect)[:, mean.mask]
    t = Y.mean(0) / (Y.std(0, ddof=1) / np.sqrt(2))
    # with the subject maps in the derivatives (nothing computed), sharding is refused for the chained node
    assert run_cli([both_levels["root"], tmp_path / "sharded", "group", "--model", tmp_path / "model.json",
                    "--n-perm", "10", "-w", tmp_path / "work", "--perm-shard", "1/2"]) == 64
    assert "fit on another Dataset node's outputs, which exist in the full run only" in capsys.readouterr().err
    # the group maps pass through float32 files: a t of 1100 (two near-equal maps, 1 dof) moves by 1e-4
    np.testing.assert_allclose(array(statmap(mean, "intercept", "t"))[mean.mask], t, rtol=1e-3, atol=1e-4)
