"""Finding a subject's runs: files, TR, and one-line errors for what is missing."""

import json
import shutil
import warnings
from pathlib import Path

import pytest

from bids_group_app.errors import MissingInputError, NoFilesSelectedError, UsageError
from bids_group_app.firstlevel.inputs import (
    MissingRunInputError,
    MixedSpacesError,
    NoRunsError,
    find_runs,
    load_layout,
)

from .conftest import SPACE

RUN2 = "sub-01/func/sub-01_task-faces_run-2"
DERIV = "derivatives/fmriprep/"


@pytest.fixture
def copy_ds(fmriprep_ds, tmp_path):
    """A writable copy of the example dataset (sub-01 and sub-02 only)."""
    root = tmp_path / "ds"
    shutil.copytree(fmriprep_ds["root"], root,
                    ignore=shutil.ignore_patterns("sub-03*", "sub-04*"))
    return root


def layout(root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_layout(root)


def test_runs_of_a_subject(fmriprep_layout, fmriprep_ds):
    runs = find_runs(fmriprep_layout, "02")
    assert [r.entities["run"] for r in runs] == [1, 2]
    assert [r.label for r in runs] == ["sub-02_task-faces_run-1", "sub-02_task-faces_run-2"]
    for r in runs:
        assert r.tr == 2.0 and r.n_volumes == fmriprep_ds["n_volumes"] == 120
        assert r.entities["space"] == SPACE
        assert r.bold.name.endswith("_desc-preproc_bold.nii.gz")
        assert r.mask.name.endswith("_desc-brain_mask.nii.gz")
        assert r.confounds.name.endswith("_desc-confounds_timeseries.tsv")
        assert r.events.name == f"sub-02_task-faces_run-{r.entities['run']}_events.tsv"
        assert "derivatives" not in str(r.events)


def test_missing_events(copy_ds):
    (copy_ds / f"{RUN2}_events.tsv").unlink()
    with pytest.raises(MissingRunInputError, match=r"sub-01_task-faces_run-2: no events TSV found; "
                       r"events TSV files there: sub-01_task-faces_run-1_events.tsv") as err:
        find_runs(layout(copy_ds), "01")
    assert isinstance(err.value, MissingInputError) and err.value.exit_code == 66
    assert "\n" not in str(err.value)


def test_missing_confounds(copy_ds):
    (copy_ds / DERIV / f"{RUN2}_desc-confounds_timeseries.tsv").unlink()
    with pytest.raises(MissingRunInputError, match=r"run-2: no confounds TSV .*"
                       r"sub-01_task-faces_run-1_desc-confounds_timeseries.tsv"):
        find_runs(layout(copy_ds), "01")


def test_missing_mask(copy_ds):
    (copy_ds / DERIV / f"{RUN2}_space-{SPACE}_desc-brain_mask.nii.gz").unlink()
    with pytest.raises(MissingRunInputError, match=r"run-2: no brain mask"):
        find_runs(layout(copy_ds), "01")


def test_missing_repetition_time(copy_ds):
    for sidecar in [copy_ds / "task-faces_bold.json",
                    *(copy_ds / DERIV / "sub-01" / "func").glob("*_bold.json")]:
        meta = json.loads(sidecar.read_text())
        meta.pop("RepetitionTime")
        sidecar.write_text(json.dumps(meta))
    with pytest.raises(MissingRunInputError, match=r"run-1: no RepetitionTime in the sidecars of "
                       r"sub-01_task-faces_run-1_space-.*_desc-preproc_bold.nii.gz or of the raw BOLD "
                       r"\(sub-01_task-faces_run-1_bold.nii.gz\)"):
        find_runs(layout(copy_ds), "01")


def test_runs_in_two_spaces(copy_ds):
    func = copy_ds / DERIV / "sub-01" / "func"
    for path in list(func.glob(f"*run-2_space-{SPACE}_*")):
        shutil.copy(path, func / path.name.replace(f"space-{SPACE}", "space-T1w"))
    lay = layout(copy_ds)
    with pytest.raises(MixedSpacesError, match=rf"sub-01: preprocessed runs in 2 spaces "
                       rf"\({SPACE}, T1w\); choose one space") as err:
        find_runs(lay, "01")
    assert isinstance(err.value, UsageError) and err.value.exit_code == 64
    assert [r.entities["space"] for r in find_runs(lay, "01", space="T1w")] == ["T1w"]
    assert len(find_runs(lay, "01", space=SPACE)) == 2


def test_subject_without_runs(fmriprep_layout):
    with pytest.raises(NoRunsError, match=r"sub-99: no preprocessed BOLD run") as err:
        find_runs(fmriprep_layout, "99")
    assert isinstance(err.value, NoFilesSelectedError) and err.value.exit_code == 18
    with pytest.raises(NoRunsError, match=r"task=rest.*BOLD files there: sub-01_task-faces_run-1_space"):
        find_runs(fmriprep_layout, "01", task="rest")


def test_missing_folders(tmp_path):
    with pytest.raises(MissingInputError, match="BIDS dataset folder .* does not exist"):
        load_layout(tmp_path / "nope")
    (tmp_path / "raw").mkdir()
    with pytest.raises(MissingInputError, match="fMRIPrep derivatives folder .*derivatives/fmriprep"):
        load_layout(tmp_path / "raw")
    assert Path(tmp_path / "raw").is_dir()
