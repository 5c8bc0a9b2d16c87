"""Two models and two cells written by concurrent tasks into one OUTPUT_DIR,
then ``--reports-only``: every map intact, both reports render in Chromium.

The job-array recipe of the README, as real concurrent processes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from bids_group_app.outputs.naming import parse

TASKS = [
    ["--filter", "contrast=motor"],
    ["--filter", "contrast=language"],
    ["--covariates", "age", "--filter", "contrast=motor"],
    ["--covariates", "age", "--filter", "contrast=language"],
]


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.nii.gz"))}


@pytest.mark.slow  # 40 s; tests/outputs/test_concurrency.py covers concurrent tasks in the default run
def test_concurrent_models_and_cells_then_reports_only(nilearn_dataset, tmp_path, chromium):
    ds, out = nilearn_dataset["root"], tmp_path / "out"
    command = [sys.executable, "-m", "bids_group_app", ds, str(out), "group", "--no-reports", "--quiet"]
    processes = [subprocess.Popen(command + task, stderr=subprocess.PIPE, text=True) for task in TASKS]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()
    # each task alone, one after the other, in a reference folder: the same maps
    reference = tmp_path / "reference"
    for task in TASKS:
        assert subprocess.run(command[:4] + [str(reference)] + command[5:] + task).returncode == 0
    maps = _digests(out)
    assert maps == _digests(reference)
    assert {parse(k).get("model") for k in maps} == {"oneSample", "regression"}
    assert {parse(k).get("input") for k in maps} == {"motor", "language"}

    result = subprocess.run([sys.executable, "-m", "bids_group_app", ds, str(out), "group", "--reports-only"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert _digests(out) == maps  # nothing refitted or touched
    reports = sorted(out.glob("model-*_report.html"))
    assert [r.name for r in reports] == ["model-oneSample_report.html", "model-regression_report.html"]
    for report in reports:
        chromium.load(report.resolve().as_uri(), settle=2.0)
        assert chromium.errors() == []
        images = chromium.images()
        assert len(images) >= 8
        assert all(complete and width > 0 for _, complete, width in images), images
        # both cells of this model, and only this model's figures
        label = parse(report.name).get("model")
        assert {parse(src).get("model") for src, _, _ in images} == {label}
        assert {parse(src).get("input") for src, _, _ in images} == {"motor", "language"}
