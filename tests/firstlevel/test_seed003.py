"""Seed 003 reproduced: our run designs (PyBIDS + nilearn HRF/drift), run fits and fixed
effects equal nilearn's two-run ``FirstLevelModel`` with designs made independently by
``make_first_level_design_matrix``."""

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import FirstLevelModel, make_first_level_design_matrix
from nilearn.masking import apply_mask

from bids_group_app.firstlevel.design import build_graph, run_designs
from bids_group_app.firstlevel.fit import fit_subject, masked_data
from bids_group_app.firstlevel.inputs import find_runs

from .conftest import CONFOUNDS, SEED003_MODEL, SPACE

TOL = 1e-5
CONDITIONS = ["faces", "faces_derivative", "scrambled", "scrambled_derivative"]


def nilearn_design(run):
    """Seed 003's design of one run, made by nilearn from the files alone."""
    events = pd.read_csv(run.events, sep="\t")[["onset", "duration", "trial_type"]]
    confounds = pd.read_csv(run.confounds, sep="\t", na_values="n/a")[CONFOUNDS].fillna(0.0)
    frame_times = np.arange(run.n_volumes) * run.tr
    return make_first_level_design_matrix(
        frame_times, events, hrf_model="spm + derivative", drift_model="cosine",
        high_pass=0.01, add_regs=confounds.to_numpy(), add_reg_names=CONFOUNDS)


@pytest.fixture(scope="module")
def subject01(fmriprep_layout):
    """Our designs and maps for sub-01, and the runs' files."""
    runs = find_runs(fmriprep_layout, "01", space=SPACE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = build_graph(fmriprep_layout, copy.deepcopy(SEED003_MODEL), "01", space=SPACE)
        designs = run_designs(graph, "01")
        data = [masked_data(r.bold, r.mask) for r in runs]
        maps = fit_subject(data, designs, designs[0].contrasts)
    return {"runs": runs, "designs": designs, "maps": maps}


@pytest.fixture(scope="module")
def reference(subject01):
    """nilearn's two-run FirstLevelModel on the same files (seed 003's script)."""
    runs = subject01["runs"]
    designs = [nilearn_design(r) for r in runs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = FirstLevelModel(mask_img=str(runs[0].mask)).fit(
            [str(r.bold) for r in runs], design_matrices=designs)
    eye = np.eye(designs[0].shape[1])
    basic = {c: eye[i] for i, c in enumerate(designs[0].columns)}
    contrasts = {"faces-scrambled": basic["faces"] - basic["scrambled"],
                 "scrambled-faces": basic["scrambled"] - basic["faces"],
                 "effects_of_interest": np.vstack([basic["faces"], basic["scrambled"]])}
    out = {}
    for name, con in contrasts.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imgs = model.compute_contrast(con, output_type="all")
        out[name] = {k: apply_mask(v, str(runs[0].mask)) for k, v in imgs.items()
                     if k != "effect_size" or con.ndim == 1}
    return {"designs": designs, "maps": out}


def test_condition_regressors_equal_nilearn(subject01, reference):
    for ours, ref in zip(subject01["designs"], reference["designs"]):
        for c in CONDITIONS:
            np.testing.assert_allclose(ours.matrix[f"trial_type.{c}"], ref[c], rtol=0, atol=1e-12)
        drifts = [c for c in ref.columns if c.startswith("drift")]
        np.testing.assert_allclose(ours.matrix[drifts], ref[drifts], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours.matrix[CONFOUNDS], ref[CONFOUNDS], rtol=0, atol=1e-12)
        assert ours.matrix.shape == ref.shape


@pytest.mark.parametrize("name", ["faces-scrambled", "scrambled-faces"])
def test_t_contrasts_equal_nilearn_two_run_model(subject01, reference, name):
    ours, ref = subject01["maps"][name]["subject"], reference["maps"][name]
    np.testing.assert_allclose(ours.effect, ref["effect_size"], rtol=0, atol=TOL)
    np.testing.assert_allclose(ours.variance, ref["effect_variance"], rtol=0, atol=TOL)
    np.testing.assert_allclose(ours.stat, ref["stat"], rtol=0, atol=TOL)
    np.testing.assert_allclose(ours.z, ref["z_score"], rtol=0, atol=TOL)
    np.testing.assert_allclose(ours.p, ref["p_value"], rtol=0, atol=TOL)


def test_f_contrast_equals_nilearn_two_run_model(subject01, reference):
    ours, ref = subject01["maps"]["effects_of_interest"]["subject"], reference["maps"]["effects_of_interest"]
    assert ours.stat_type == "F" and ours.dim == 2
    np.testing.assert_allclose(ours.variance, ref["effect_variance"], rtol=0, atol=TOL)
    np.testing.assert_allclose(ours.stat, ref["stat"], rtol=0, atol=TOL)
    np.testing.assert_allclose(ours.z, ref["z_score"], rtol=0, atol=TOL)
    np.testing.assert_allclose(ours.p, ref["p_value"], rtol=0, atol=TOL)


def test_combination_is_the_unweighted_mean_of_runs(subject01):
    """Not precision weighted: the subject effect is the plain mean of the run effects."""
    maps = subject01["maps"]["faces-scrambled"]
    runs = maps["runs"]
    np.testing.assert_allclose(maps["subject"].effect, (runs[0].effect + runs[1].effect) / 2)
    np.testing.assert_allclose(maps["subject"].variance, (runs[0].variance + runs[1].variance) / 4)
    assert maps["subject"].dof == runs[0].dof + runs[1].dof


def test_planted_effect_is_found(subject01, fmriprep_ds):
    """Sanity: faces-scrambled peaks in the planted blob, near its planted size."""
    from nilearn.maskers import NiftiMasker

    blob = next(b for b in fmriprep_ds["blobs"] if b["name"] == "faces_vs_scrambled")
    masker = NiftiMasker(mask_img=str(subject01["runs"][0].mask)).fit()
    z = masker.inverse_transform(subject01["maps"]["faces-scrambled"]["subject"].z).get_fdata()
    assert z[tuple(blob["ijk"])] > 5
    effect = masker.inverse_transform(subject01["maps"]["faces-scrambled"]["subject"].effect).get_fdata()
    planted = fmriprep_ds["planted_contrasts"]["faces-scrambled"]["peak_per_subject"]["01"]
    assert abs(effect[tuple(blob["ijk"])] - planted) < 0.5 * planted


def test_subject_mask_is_the_intersection_of_run_masks(subject01, tmp_path):
    import nibabel as nib

    from bids_group_app.firstlevel.fit import subject_mask

    first = nib.load(subject01["runs"][0].mask)
    data = first.get_fdata().astype(bool)
    cut = data.copy()
    cut[:, :, :6] = False
    other = nib.Nifti1Image(cut.astype("uint8"), first.affine)
    both = subject_mask([subject01["runs"][0].mask, other]).get_fdata().astype(bool)
    np.testing.assert_array_equal(both, data & cut)
    assert 0 < both.sum() < data.sum()
