"""Job-array tasks writing into one OUTPUT_DIR at the same time."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np

from bids_group_app.outputs.dataset import merge_descriptions, merge_models


def test_merge_models_unions_input_filters_and_refuses_other_designs():
    base = {"Name": "m", "Nodes": [{"Level": "Dataset", "Model": {"X": [1]}}]}
    a = {**base, "Input": {"contrast": ["motor"], "stat": ["effect"]}}
    b = {**base, "Input": {"contrast": ["language"], "stat": ["effect"]}}
    assert merge_models(a, b)["Input"] == {"contrast": ["language", "motor"], "stat": ["effect"]}
    assert merge_models(None, b) == b
    other = {**b, "Nodes": [{"Level": "Dataset", "Model": {"X": [1, "age"]}}]}
    assert merge_models(a, other) is None


def test_merge_descriptions_keeps_every_source():
    a = {"Name": "x", "SourceDatasets": [{"URL": "file:///a"}]}
    b = {"Name": "x", "SourceDatasets": [{"URL": "file:///b"}, {"URL": "file:///a"}]}
    assert merge_descriptions(a, b)["SourceDatasets"] == [{"URL": "file:///a"}, {"URL": "file:///b"}]


def test_concurrent_tasks_leave_a_valid_output_dir(example_dataset, tmp_path, run_cli):
    truth = example_dataset("nilearn")
    out = tmp_path / "out"
    tasks = [["--filter", "contrast=motor"], ["--filter", "contrast=language"],
             ["--filter", "contrast=motor", "--covariates", "age"]]
    processes = [
        subprocess.Popen([sys.executable, "-m", "bids_group_app", truth["root"], str(out), "group", "--quiet",
                          "--no-reports", *task], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for task in tasks
    ]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["SourceDatasets"]
    model = json.loads((out / "model-oneSample_smdl.json").read_text())
    assert model["Input"]["contrast"] == ["language", "motor"]
    assert (out / "model-regression_smdl.json").is_file()
    maps = sorted(p.name for p in out.rglob("*_stat-t_statmap.nii.gz"))
    assert maps == [
        "model-oneSample_task-localizer_input-language_contrast-intercept_stat-t_statmap.nii.gz",
        "model-oneSample_task-localizer_input-motor_contrast-intercept_stat-t_statmap.nii.gz",
        "model-regression_task-localizer_input-motor_contrast-age_stat-t_statmap.nii.gz",
        "model-regression_task-localizer_input-motor_contrast-intercept_stat-t_statmap.nii.gz",
    ]
    assert len(list(out.glob("logs/config-*.json"))) == 3
    assert not list(out.glob(".bids_group_app-staging-*"))
    # the merged model reproduces both one-sample tasks
    again = tmp_path / "again"
    assert run_cli([truth["root"], again, "group", "--model", out / "model-oneSample_smdl.json"]) == 0
    for path in (out / "node-oneSample").glob("*_statmap.nii.gz"):
        assert np.array_equal(np.asarray(nib.load(path).dataobj),
                              np.asarray(nib.load(again / "node-oneSample" / path.name).dataobj)), path.name
