"""Shared fixtures: one small fMRIPrep-layout example dataset and a seed-003-like model."""

import warnings

import pytest

from bids_group_app.example_data import make_example_dataset

SPACE = "MNI152NLin2009cAsym"
CONFOUNDS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
             "framewise_displacement", "a_comp_cor_00", "a_comp_cor_01", "a_comp_cor_02",
             "a_comp_cor_03", "a_comp_cor_04", "a_comp_cor_05"]
#: Seed 003 as a BIDS Stats Model: spm + derivative, cosine drift 0.01 Hz, motion,
#: FD and aCompCor confounds; faces-scrambled, scrambled-faces (t), effects_of_interest (F).
SEED003_MODEL = {
    "Name": "seed003", "BIDSModelVersion": "1.0.0", "Input": {"task": ["faces"]},
    "Nodes": [{
        "Level": "Run", "Name": "run", "GroupBy": ["run", "subject"],
        "Transformations": {"Transformer": "pybids-transforms-v1", "Instructions": [
            {"Name": "Factor", "Input": ["trial_type"]},
            {"Name": "Convolve", "Input": ["trial_type.faces", "trial_type.scrambled"],
             "Model": "spm", "Derivative": True}]},
        "Model": {"Type": "glm",
                  "X": ["trial_type.faces", "trial_type.faces_derivative", "trial_type.scrambled",
                        "trial_type.scrambled_derivative", "trans_*", "rot_*",
                        "framewise_displacement", "a_comp_cor_0[0-5]", 1],
                  "Options": {"HighPassFilterCutoffHz": 0.01}},
        "Contrasts": [
            {"Name": "faces-scrambled", "ConditionList": ["trial_type.faces", "trial_type.scrambled"],
             "Weights": [1, -1], "Test": "t"},
            {"Name": "scrambled-faces", "ConditionList": ["trial_type.faces", "trial_type.scrambled"],
             "Weights": [-1, 1], "Test": "t"},
            {"Name": "effects_of_interest",
             "ConditionList": ["trial_type.faces", "trial_type.scrambled"],
             "Weights": [[1, 0], [0, 1]], "Test": "F"}]}]}


@pytest.fixture(scope="session")
def fmriprep_ds(tmp_path_factory):
    """4 subjects x 2 runs in the fMRIPrep layout (about 2 s)."""
    return make_example_dataset(tmp_path_factory.mktemp("fmriprep") / "ds", "fmriprep",
                                extra_participant=False)


@pytest.fixture(scope="session")
def fmriprep_layout(fmriprep_ds):
    """The PyBIDS layout of :func:`fmriprep_ds`."""
    from bids_group_app.firstlevel.inputs import load_layout

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_layout(fmriprep_ds["root"])
