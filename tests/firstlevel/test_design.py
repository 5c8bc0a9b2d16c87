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


def _hrf_model(hrf):
    """Seed 003's Run node with Model.HRF instead of its Convolve transformation."""
    from bids_group_app.firstlevel.design import with_model_hrf

    model = copy.deepcopy(SEED003_MODEL)
    node = model["Nodes"][0]
    node["Transformations"]["Instructions"] = [{"Name": "Factor", "Input": ["trial_type"]}]
    node["Model"]["X"] = ["trial_type.faces", "trial_type.scrambled"] + [
        x for x in node["Model"]["X"] if not str(x).startswith("trial_type")]
    node["Model"]["HRF"] = {"Variables": ["trial_type.faces", "trial_type.scrambled"], **hrf}
    if hrf["Model"] == "fir":
        node["Contrasts"] = [{"Name": "faces0", "ConditionList": ["trial_type.faces_delay_0"], "Weights": [1],
                              "Test": "t"}]
    return with_model_hrf(model, node["Name"]), model


@pytest.mark.parametrize("hrf, columns", [
    ({"Model": "glover + derivative"}, ["faces", "faces_derivative", "scrambled", "scrambled_derivative"]),
    ({"Model": "SPM + derivative + dispersion"}, ["faces", "faces_derivative", "faces_dispersion", "scrambled",
                                                  "scrambled_derivative", "scrambled_dispersion"]),
    ({"Model": "fir", "Parameters": {"fir_delays": [0, 1, 2]}},
     ["faces_delay_0", "faces_delay_1", "faces_delay_2", "scrambled_delay_0", "scrambled_delay_1",
      "scrambled_delay_2"]),
])
def test_model_hrf_columns_equal_nilearn(fmriprep_layout, hrf, columns):
    """Model.HRF convolves its Variables with nilearn's HRF model (derivatives and FIR delays as nilearn names
    and computes them), as nilearn's make_first_level_design_matrix does from the events alone."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    from bids_group_app.firstlevel.inputs import find_runs

    rewritten, original = _hrf_model(hrf)
    assert "HRF" in original["Nodes"][0]["Model"] and "HRF" not in rewritten["Nodes"][0]["Model"]
    run = designs(fmriprep_layout, rewritten)[0]
    assert list(run.matrix.columns[:len(columns)]) == [f"trial_type.{c}" for c in columns]
    files = find_runs(fmriprep_layout, "01", space=SPACE)[0]
    events = pd.read_csv(files.events, sep="\t")[["onset", "duration", "trial_type"]]
    model = hrf["Model"].lower()
    reference = make_first_level_design_matrix(run.frame_times, events, hrf_model=model, drift_model=None,
                                               fir_delays=(hrf.get("Parameters") or {}).get("fir_delays", [0]))
    for c in columns:
        np.testing.assert_allclose(run.matrix[f"trial_type.{c}"], reference[c], rtol=0, atol=1e-12, err_msg=c)


@pytest.mark.parametrize("change, message", [
    (lambda n: n["Model"]["HRF"].update(Model="afni"), "HRF.Model 'afni' is not supported; valid: spm"),
    (lambda n: n["Model"]["HRF"].update(Variables=["rt"]), "HRF.Variables names rt, not in Model.X"),
    (lambda n: n["Model"]["HRF"].update(Model="fir"), "'fir' needs Parameters.fir_delays"),
    (lambda n: n["Model"]["HRF"].update(Parameters={"PeakDelay": 6}), "HRF.Parameters.PeakDelay is not supported"),
    (lambda n: n["Model"]["HRF"].update(Parameters={"fir_delays": [0, 1]}), "fir_delays is for the 'fir' model"),
    (lambda n: n["Model"]["HRF"].update(Delay=1), "HRF.Delay is not a Model.HRF key"),
    (lambda n: n["Model"]["HRF"].update(Model="fir", Parameters={"fir_delays": [0, 1]}),
     "a contrast names trial_type.faces, trial_type.scrambled, which Model.HRF 'fir' replaces"),
    (lambda n: n["Transformations"]["Instructions"].append(
        {"Name": "Convolve", "Input": ["trial_type.faces"], "Model": "spm"}),
     "convolves trial_type.faces, which a Convolve transformation already convolves"),
])
def test_model_hrf_refusals_name_the_problem(change, message):
    from bids_group_app.errors import UsageError
    from bids_group_app.firstlevel.design import with_model_hrf

    model = copy.deepcopy(SEED003_MODEL)
    node = model["Nodes"][0]
    node["Transformations"]["Instructions"] = [{"Name": "Factor", "Input": ["trial_type"]}]
    node["Model"]["X"] = ["trial_type.faces", "trial_type.scrambled", 1]
    node["Model"]["HRF"] = {"Variables": ["trial_type.faces", "trial_type.scrambled"], "Model": "spm"}
    change(node)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(".", r"\.")):
        with_model_hrf(model, node["Name"])
