"""Run designs: n/a in confounds, Model.X columns that do not exist, PyBIDS' own Convolve."""

import copy
import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from bids_group_app.errors import DataError, MissingInputError
from bids_group_app.firstlevel.design import build_graph, fill_missing, run_designs

from .conftest import SEED003_MODEL, SPACE


def designs(layout, model, subject="01", **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_designs(build_graph(layout, model, subject, space=SPACE), subject, **kwargs)


def test_framewise_displacement_na_is_filled_with_zero_and_logged(fmriprep_layout, caplog):
    model = copy.deepcopy(SEED003_MODEL)
    with caplog.at_level(logging.WARNING, logger="bids_group_app.firstlevel.design"):
        runs = designs(fmriprep_layout, model)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"sub-01_task-faces_run-{r}: missing values (n/a) replaced by 0 in "
                        "framewise_displacement (1 row)" for r in (1, 2)]
    for run in runs:
        assert run.filled == {"framewise_displacement": 1}
        fd = run.matrix["framewise_displacement"]
        assert fd.iloc[0] == 0.0 and (fd.iloc[1:] > 0).all()
        assert not run.matrix.isna().any().any()


def test_na_can_be_refused(fmriprep_layout):
    with pytest.raises(DataError, match=r"sub-01_task-faces_run-1: missing values \(n/a\) in design "
                       r"columns framewise_displacement \(1 row\)"):
        designs(fmriprep_layout, copy.deepcopy(SEED003_MODEL), missing="error")


def test_no_na_no_log(caplog):
    frame = pd.DataFrame({"a": [1.0, 2.0]})
    with caplog.at_level(logging.WARNING):
        filled, counts = fill_missing(frame, "run")
    assert counts == {} and filled is frame and not caplog.records


def test_design_columns_and_drift(fmriprep_layout):
    run = designs(fmriprep_layout, copy.deepcopy(SEED003_MODEL))[0]
    cols = list(run.matrix.columns)
    assert cols[:4] == ["trial_type.faces", "trial_type.faces_derivative", "trial_type.scrambled",
                        "trial_type.scrambled_derivative"]
    assert cols[-1] == "intercept" and cols.count("intercept") == 1
    # 120 volumes x 2 s, 0.01 Hz: nilearn keeps floor(2 * 240 * 0.01) - 1 = 3 ... 4 cosines
    assert [c for c in cols if c.startswith("drift_")] == ["drift_1", "drift_2", "drift_3", "drift_4"]
    assert {f"a_comp_cor_0{i}" for i in range(6)} <= set(cols) and "trans_x" in cols
    np.testing.assert_array_equal(run.frame_times, np.arange(120) * 2.0)


def test_without_high_pass_there_is_no_drift(fmriprep_layout):
    model = copy.deepcopy(SEED003_MODEL)
    del model["Nodes"][0]["Model"]["Options"]
    run = designs(fmriprep_layout, model)[0]
    assert not [c for c in run.matrix.columns if c.startswith("drift")]
    assert list(run.matrix.columns)[-1] == "intercept"


def test_model_names_a_confound_the_tsv_lacks(fmriprep_layout):
    model = copy.deepcopy(SEED003_MODEL)
    model["Nodes"][0]["Model"]["X"].append("std_dvars")
    with pytest.raises(MissingInputError, match=r"sub-01_task-faces_run-1: Model.X names std_dvars, "
                       r"which .* available: .*framewise_displacement"):
        designs(fmriprep_layout, model)


def test_contrast_weights_follow_the_design_columns(fmriprep_layout):
    run = designs(fmriprep_layout, copy.deepcopy(SEED003_MODEL))[0]
    con = {c["name"]: c for c in run.contrasts}
    t = run.contrast_matrix(con["faces-scrambled"]["weights"])
    assert t.shape == (run.matrix.shape[1],) and t[0] == 1 and t[2] == -1 and np.abs(t).sum() == 2
    f = run.contrast_matrix(con["effects_of_interest"]["weights"])
    assert f.shape == (2, run.matrix.shape[1]) and con["effects_of_interest"]["test"] == "F"
    with pytest.raises(DataError, match="contrast weights name nope, not in the run design"):
        run.contrast_matrix([{"nope": 1.0}])


def test_pybids_own_convolve_differs_from_nilearn(fmriprep_layout):
    """Why Convolve is replaced: PyBIDS' kernel (10 Hz grid, min_onset 0, resampled to the TR)
    is far from nilearn's make_first_level_design_matrix at the frame times."""
    from bids.modeling import BIDSStatsModelsGraph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = BIDSStatsModelsGraph(fmriprep_layout, copy.deepcopy(SEED003_MODEL))
        graph.load_collections(subject=["01"], space=SPACE)
        native = graph.root_node.run(subject="01", missing_values="ignore")[0].X
    ours = designs(fmriprep_layout, copy.deepcopy(SEED003_MODEL))[0].matrix
    diff = np.abs(native["trial_type.faces"].to_numpy() - ours["trial_type.faces"].to_numpy())
    assert diff.max() > 0.1 * np.abs(ours["trial_type.faces"]).max()
