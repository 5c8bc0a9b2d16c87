"""Shared fixtures: one small fMRIPrep-layout example dataset and a seed-003-like model."""

import copy
import warnings

import pytest

from bids_group_app.example_data import FMRIPREP_MODEL, make_example_dataset

SPACE = "MNI152NLin2009cAsym"
CONFOUNDS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
             "framewise_displacement", "a_comp_cor_00", "a_comp_cor_01", "a_comp_cor_02",
             "a_comp_cor_03", "a_comp_cor_04", "a_comp_cor_05"]
#: Seed 003 as a BIDS Stats Model: the Run node of the fmriprep example's model (spm + derivative, cosine drift
#: 0.01 Hz, motion, FD and aCompCor confounds; faces-scrambled, scrambled-faces (t), effects_of_interest (F)).
SEED003_MODEL = {"Name": "seed003", "BIDSModelVersion": "1.0.0", "Input": {"task": ["faces"]},
                 "Nodes": [copy.deepcopy(FMRIPREP_MODEL["Nodes"][0])]}


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
