"""Job-array tasks writing into one OUTPUT_DIR at the same time.

The end-to-end test makes the tasks' critical sections overlap for certain:
the test-only hook ``BIDS_GROUP_APP_TEST_COMMIT_DELAY`` makes every run wait
between staging the merged shared files and moving them into place, so
without the lock on OUTPUT_DIR each task would read the shared files before
any other had written them, and the last one would drop the others' entries.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_group_app.outputs.commit import output_lock
from bids_group_app.outputs.dataset import bidsignore, merge_descriptions, merge_models


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


def test_output_lock_is_held_on_bidsignore_rewritten_in_place(tmp_path):
    (tmp_path / ".bidsignore").write_text("mine/\n")
    inode = (tmp_path / ".bidsignore").stat().st_ino
    with output_lock(tmp_path):
        assert (tmp_path / ".bidsignore").read_text() == bidsignore()
    assert (tmp_path / ".bidsignore").stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == [".bidsignore"]


# seconds each run waits in its critical section: far more than the spread of
# the tasks' arrival at it (they start together and do the same work)
COMMIT_DELAY = 4


def test_concurrent_tasks_leave_a_valid_output_dir(example_dataset, tmp_path, run_cli):
    truth = example_dataset("nilearn")
    # a second copy of the dataset, so that each task adds its own source datasets
    copy = tmp_path / "copy"
    shutil.copytree(truth["root"], copy)
    out = tmp_path / "out"
    tasks = [[truth["root"], "--filter", "contrast=motor"], [copy, "--filter", "contrast=language"],
             [truth["root"], "--filter", "contrast=motor", "--covariates", "age"]]
    env = {**os.environ, "BIDS_GROUP_APP_TEST_COMMIT_DELAY": str(COMMIT_DELAY)}
    processes = [
        subprocess.Popen([sys.executable, "-m", "bids_group_app", str(task[0]), str(out), "group", "--quiet",
                          "--no-reports", *task[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
        for task in tasks
    ]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()

    # every task's entries survive in the files they share
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    sources = {Path(root).resolve().as_uri() for root in (truth["root"], copy)}
    sources |= {f"{uri}/derivatives/nilearn_glm" for uri in sources}
    assert sorted(s["URL"] for s in description["SourceDatasets"]) == sorted(sources)
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
    # no staging folder and no lock file left: .bidsignore is the only hidden entry
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".bidsignore"]
    # the merged model reproduces both one-sample tasks
    again = tmp_path / "again"
    assert run_cli([truth["root"], again, "group", "--model", out / "model-oneSample_smdl.json"]) == 0
    for path in (out / "node-oneSample").glob("*_statmap.nii.gz"):
        assert np.array_equal(np.asarray(nib.load(path).dataobj),
                              np.asarray(nib.load(again / "node-oneSample" / path.name).dataobj)), path.name


def test_merge_models_refuses_other_subject_selections():
    """Issue 9: the union of two runs' participants would reproduce neither run."""
    a = {"Name": "m", "Nodes": [], "Input": {"contrast": ["motor"], "subject": ["01", "02"]}}
    b = {"Name": "m", "Nodes": [], "Input": {"contrast": ["language"], "subject": ["02", "03"]}}
    assert merge_models(a, b) is None
    same = {"Name": "m", "Nodes": [], "Input": {"contrast": ["language"], "subject": ["01", "02"]}}
    assert merge_models(a, same)["Input"] == {"contrast": ["language", "motor"], "subject": ["01", "02"]}
