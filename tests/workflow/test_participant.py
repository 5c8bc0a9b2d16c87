"""The participant level (issue 11): Run and Subject nodes per subject from fMRIPrep outputs, then the group.

Seed 003 through the command line: the subject-level maps the participant level writes equal nilearn's two-run
``FirstLevelModel`` fit on designs nilearn makes from the same files; participants run as concurrent processes
(a SLURM array) and the group level, reading OUTPUT_DIR, finds the planted group effect.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest

from bids_group_app.example_data import FMRIPREP_MODEL, make_example_dataset
from tests.firstlevel.test_seed003 import nilearn_design

SPACE = "MNI152NLin2009cAsym"


def _dataset(tmp_path_factory, n_subjects):
    root = tmp_path_factory.mktemp("participant") / "ds"
    truth = make_example_dataset(root, "fmriprep", n_subjects=n_subjects, extra_participant=False)
    return {**truth, "model": root / "models" / "model-faces_smdl.json"}


@pytest.fixture(scope="module")
def fmriprep(tmp_path_factory):
    """4 subjects x 2 runs, fMRIPrep layout, with its model in models/ (about 2 s)."""
    return _dataset(tmp_path_factory, 4)


def _cli(*args):
    """``bids_group_app ARGS`` in-process: (exit code, stderr)."""
    import contextlib
    import io

    from bids_group_app.cli.run import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([str(a) for a in args])
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def single(fmriprep, tmp_path_factory):
    """The participant level for sub-01 (the seed-003 check), in-process."""
    out = tmp_path_factory.mktemp("participant-one") / "out"
    code, stderr = _cli(fmriprep["root"], out, "participant", "--model", fmriprep["model"],
                        "--participant-label", "01", "--quiet", "--no-reports")  # reports: tests/reporting
    assert code == 0, stderr
    return out


@pytest.fixture(scope="module")
def concurrent(tmp_path_factory):
    """8 subjects, each as its own concurrent process (like an array task), then the group level on OUTPUT_DIR."""
    fmriprep = _dataset(tmp_path_factory, 8)
    out = tmp_path_factory.mktemp("participant-out") / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    jobs = [subprocess.Popen([sys.executable, "-m", "bids_group_app", fmriprep["root"], str(out), "participant",
                              "--model", str(fmriprep["model"]), "--participant-label", sub, "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for sub in fmriprep["subjects"]]
    results = [(job.wait(timeout=600), job.stderr.read()) for job in jobs]
    group = subprocess.run([sys.executable, "-m", "bids_group_app", fmriprep["root"], str(out), "group", "--model",
                            str(fmriprep["model"]), "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    return {"out": out, "participants": results, "group": group, "truth": fmriprep}


def _nilearn_reference(truth, subject):
    """nilearn's two-run FirstLevelModel (seed 003's script) on the subject's files, designs made by nilearn."""
    from nilearn.glm.first_level import FirstLevelModel

    from bids_group_app.firstlevel.inputs import find_runs, load_layout

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = find_runs(load_layout(truth["root"]), subject, space=SPACE)
        designs = [nilearn_design(r) for r in runs]
        model = FirstLevelModel(mask_img=str(runs[0].mask)).fit([str(r.bold) for r in runs], design_matrices=designs)
        eye = np.eye(designs[0].shape[1])
        basic = {c: eye[i] for i, c in enumerate(designs[0].columns)}
        t_maps = model.compute_contrast(basic["faces"] - basic["scrambled"], output_type="all")
        f_maps = model.compute_contrast(np.vstack([basic["faces"], basic["scrambled"]]), output_type="all")
    return t_maps, f_maps, np.asarray(nib.load(str(runs[0].mask)).dataobj) != 0


def _subject_map(out, sub, contrast, stat):
    return out / "node-subject" / f"sub-{sub}" / (
        f"sub-{sub}_task-faces_space-{SPACE}_contrast-{contrast}_stat-{stat}_statmap.nii.gz")


def test_seed003_subject_maps_equal_nilearn_first_level_model(single, fmriprep):
    """Seed 003: effect, variance, t and z of faces-scrambled and F and z of effects_of_interest, as written by the
    participant level, equal nilearn FirstLevelModel on both runs (same HRF, drift, confounds, AR(1)) to 1e-5."""
    out = single
    t_maps, f_maps, mask = _nilearn_reference(fmriprep, "01")
    pairs = [("facesScrambled", "effect", t_maps["effect_size"]), ("facesScrambled", "variance", t_maps["effect_variance"]),
             ("facesScrambled", "t", t_maps["stat"]), ("facesScrambled", "z", t_maps["z_score"]),
             ("effectsOfInterest", "F", f_maps["stat"]), ("effectsOfInterest", "z", f_maps["z_score"])]
    for contrast, stat, reference in pairs:
        ours = np.asarray(nib.load(str(_subject_map(out, "01", contrast, stat))).dataobj)[mask]
        ref = np.asarray(reference.dataobj)[mask]
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=f"{contrast} {stat}")
    sidecar = json.loads(_subject_map(out, "01", "facesScrambled", "t").with_suffix("").with_suffix(".json").read_text())
    assert sidecar["Node"] == "subject" and sidecar["Level"] == "Subject" and len(sidecar["Runs"]) == 2


@pytest.mark.slow
def test_concurrent_participants_write_every_subject_and_the_group_finds_the_planted_effect(concurrent):
    fmriprep = concurrent["truth"]
    assert [code for code, _ in concurrent["participants"]] == [0] * len(fmriprep["subjects"]), \
        concurrent["participants"]
    out = concurrent["out"]
    for sub in fmriprep["subjects"]:
        runs = sorted((out / "node-run" / f"sub-{sub}").glob("*_stat-effect_statmap.nii.gz"))
        assert len(runs) == 2 * 2, runs  # 2 runs x 2 t contrasts
        assert len(list((out / "node-run" / f"sub-{sub}").glob("*_design.tsv"))) == 2
        assert _subject_map(out, sub, "facesScrambled", "effect").is_file()
    assert not list(out.glob(".bids_group_app-staging-*")), "a staging folder was left behind"
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert len(list((out / "logs").glob("config-*.json"))) == len(fmriprep["subjects"]) + 1
    assert concurrent["group"].returncode == 0, concurrent["group"].stderr
    design = json.loads(next((out / "node-group").glob("*_design.json")).read_text())
    assert design["NumberOfMaps"] == len(fmriprep["subjects"])
    assert all(i.startswith("bids::node-subject/") and "contrast-facesScrambled" in i for i in design["Inputs"])
    t_img = next((out / "node-group").glob("*_stat-t_statmap.nii.gz"))
    t = np.asarray(nib.load(str(t_img)).dataobj)
    blob = next(b for b in fmriprep["blobs"] if b["name"] == "faces_vs_scrambled")
    other = next(b for b in fmriprep["blobs"] if b["name"] == "effects_of_interest")
    # the planted faces > scrambled effect survives the parametric p < 0.001 (z > 3.09) at its centre; where
    # both conditions were raised equally there is no difference
    i, j, k = blob["ijk"]
    z = np.asarray(nib.load(str(next((out / "node-group").glob("*_stat-z_thresh-fpr_statmap.nii.gz")))).dataobj)
    assert z[i, j, k] > 3.09, (t[i, j, k], z[i, j, k])
    around = (slice(i - 1, i + 2), slice(j - 1, j + 2), slice(k - 1, k + 2))
    a, b, c = other["ijk"]
    assert t[around].mean() > 3 and abs(t[a - 1:a + 2, b - 1:b + 2, c - 1:c + 2].mean()) < 1.5
    # the group's methods text and report say which nodes the participant level fit
    n = len(fmriprep["subjects"])
    text = (out / "logs" / "CITATION.md").read_text()
    assert (f"Node `run` was fitted by this application at the participant level: {n * 2 * 3} contrast maps of "
            f"{n} subjects") in text
    assert f"Node `subject` was fitted by this application at the participant level: {n * 3} contrast maps" in text
    assert "not fitted by this application" not in text
    assert f"fit at the participant level: {n * 3} contrast maps of {n} subjects" in \
        (out / "model-faces_report.html").read_text()


def test_participant_errors_are_one_line_with_bids_exit_codes(fmriprep, tmp_path):
    out = tmp_path / "out"
    code, err = _cli(fmriprep["root"], out, "participant", "--model", fmriprep["model"], "--participant-label", "09")
    assert code == 18 and "sub-09" in err and "01, 02" in err
    assert len(err.strip().splitlines()) == 1, err
    two_runs = json.loads(json.dumps(FMRIPREP_MODEL))
    two_runs["Nodes"].insert(1, {**two_runs["Nodes"][0], "Name": "run2"})
    (tmp_path / "two.json").write_text(json.dumps(two_runs))
    code, err = _cli(fmriprep["root"], out, "participant", "--model", tmp_path / "two.json")
    assert code == 64 and "one Run node" in err
    # what the participant level does not do is refused by name, not ignored
    for key, value, fragment in [
            ("HRF", {"Variables": ["trial_type.faces"], "Model": "afni"}, "Model.HRF.Model 'afni' is not supported"),
            ("HRF", {"Variables": ["rt"], "Model": "spm"}, "Model.HRF.Variables names rt, not in Model.X"),
            ("Options", {"HighPassFilterCutoffHz": 0.01, "LowPassFilterCutoffHz": 0.1},
             "Model.Options.LowPassFilterCutoffHz is not supported at the participant level"),
            ("Software", {"bids_group_app": {"TFCE": True}}, "Software.bids_group_app.TFCE is not a Run-node setting")]:
        document = json.loads(json.dumps(FMRIPREP_MODEL))
        document["Nodes"][0]["Model"][key] = value
        (tmp_path / "bad.json").write_text(json.dumps(document))
        code, err = _cli(fmriprep["root"], out, "participant", "--model", tmp_path / "bad.json")
        assert code == 64 and fragment in err and len(err.strip().splitlines()) == 1, err
    # a run without its events: 66, naming the run; nothing written
    root = tmp_path / "ds"
    shutil.copytree(fmriprep["root"], root)
    next((root / "sub-02" / "func").glob("*run-1_events.tsv")).unlink()
    code, err = _cli(root, out, "participant", "--model", fmriprep["model"], "--participant-label", "02")
    assert code == 66 and "events" in err and "run-1" in err, err
    assert not out.exists() or not list(out.rglob("*.nii.gz"))


def test_model_hrf_options_mask_and_smoothing_equal_nilearn(fmriprep, tmp_path):
    """Model.HRF (instead of a Convolve transformation), Model.Options.Mask (a mask file of the fMRIPrep
    derivatives, found by its entities) and --smoothing-fwhm give the subject maps of nilearn's
    FirstLevelModel(mask_img=that mask, smoothing_fwhm=6) on both runs, to 1e-5; nothing outside the mask."""
    from nilearn.glm.first_level import FirstLevelModel

    from bids_group_app.firstlevel.inputs import find_runs, load_layout

    root = tmp_path / "ds"
    shutil.copytree(fmriprep["root"], root)
    brain = nib.load(str(next((root / "derivatives" / "fmriprep" / "sub-01" / "func").glob("*run-1*_mask.nii.gz"))))
    roi = np.zeros(brain.shape, dtype=np.uint8)
    roi[: brain.shape[0] // 2] = np.asarray(brain.dataobj)[: brain.shape[0] // 2] != 0  # the left half of the brain
    roi_path = root / "derivatives" / "fmriprep" / f"space-{SPACE}_desc-roi_mask.nii.gz"
    nib.Nifti1Image(roi, brain.affine).to_filename(str(roi_path))
    document = json.loads(json.dumps(FMRIPREP_MODEL))
    run = document["Nodes"][0]
    run["Transformations"]["Instructions"] = [{"Name": "Factor", "Input": ["trial_type"]}]
    run["Model"]["X"] = ["trial_type.faces", "trial_type.scrambled"] + [
        x for x in run["Model"]["X"] if not str(x).startswith("trial_type")]
    run["Model"]["HRF"] = {"Variables": ["trial_type.faces", "trial_type.scrambled"], "Model": "spm + derivative"}
    run["Model"]["Options"]["Mask"] = {"desc": "roi", "suffix": "mask"}
    (tmp_path / "model.json").write_text(json.dumps(document))
    out = tmp_path / "out"
    code, err = _cli(root, out, "participant", "--model", tmp_path / "model.json", "--participant-label", "01",
                     "--smoothing-fwhm", "6", "--no-reports", "--quiet")
    assert code == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = find_runs(load_layout(root), "01", space=SPACE)
        designs = [nilearn_design(r) for r in runs]
        reference = FirstLevelModel(mask_img=str(roi_path), smoothing_fwhm=6).fit(
            [str(r.bold) for r in runs], design_matrices=designs)
        columns = list(designs[0].columns)
        weights = np.zeros(len(columns))
        weights[columns.index("faces")], weights[columns.index("scrambled")] = 1, -1
        maps = reference.compute_contrast(weights, output_type="all")
    inside = roi != 0
    for stat, key in (("effect", "effect_size"), ("variance", "effect_variance"), ("z", "z_score")):
        path = _subject_map(out, "01", "facesScrambled", stat)
        ours = np.asarray(nib.load(str(path)).dataobj)
        ref = np.asarray(maps[key].dataobj)[inside]
        np.testing.assert_allclose(ours[inside], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=stat)
        assert not ours[~inside].any(), f"{stat}: values outside Options.Mask"
    sidecar = json.loads(_subject_map(out, "01", "facesScrambled", "t").with_suffix("").with_suffix(".json").read_text())
    assert sidecar["SmoothingFWHM"] == 6.0 and sidecar["Mask"] == [str(roi_path)]
    # a Mask that names no file: 66, naming the entities and the run
    run["Model"]["Options"]["Mask"] = {"desc": "nothing", "suffix": "mask"}
    (tmp_path / "model.json").write_text(json.dumps(document))
    code, err = _cli(root, tmp_path / "out2", "participant", "--model", tmp_path / "model.json",
                     "--participant-label", "01")
    assert code == 66 and "desc=nothing" in err and "run-1" in err and len(err.strip().splitlines()) == 1, err
