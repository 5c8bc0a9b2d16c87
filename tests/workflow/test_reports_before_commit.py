"""Reports and methods text are rendered before the commit; one model's
damaged files never break another model's run; a full disk is exit 73.

Real processes throughout: exit code, one stderr line, and OUTPUT_DIR
compared file by file with its state before the run.
"""

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bids_group_app.outputs.writer import STAGING_PREFIX

ERROR = "bids_group_app: error: "


def snapshot(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def one_message(lines):
    """The last stderr line, checked to be the only one from the app (the others are log lines)."""
    assert [line for line in lines if line.startswith("bids_group_app:")] == lines[-1:], lines
    return lines[-1]


def run(argv, preexec_fn=None):
    proc = subprocess.run([sys.executable, "-m", "bids_group_app", *map(str, argv)], capture_output=True, text=True,
                          preexec_fn=preexec_fn, timeout=600)
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def two_models(nilearn_dataset, tmp_path_factory):
    """An OUTPUT_DIR with two models: oneSample (motor) and regression (age)."""
    out = tmp_path_factory.mktemp("two-models") / "out"
    root = nilearn_dataset["root"]
    for extra in ([], ["--covariates", "age"]):
        code, lines = run([root, out, "group", "--quiet", "--filter", "contrast=motor", *extra])
        assert code == 0, lines
    assert (out / "model-oneSample_smdl.json").is_file() and (out / "model-regression_smdl.json").is_file()
    return out


def copy_of(two_models, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(two_models, out)
    return out


def test_another_models_damaged_file_does_not_break_a_run(two_models, nilearn_dataset, tmp_path):
    out = copy_of(two_models, tmp_path)
    (out / "model-regression_smdl.json").write_text("{ not json")
    code, lines = run([nilearn_dataset["root"], out, "group", "--filter", "contrast=language"])
    assert code == 0, lines
    assert any("leaves out model-regression_smdl.json" in line for line in lines), lines
    assert (out / "model-regression_smdl.json").read_text() == "{ not json"  # left as it was
    model = json.loads((out / "model-oneSample_smdl.json").read_text())
    assert model["Input"]["contrast"] == ["language", "motor"]
    assert "language" in (out / "model-oneSample_report.html").read_text()
    assert "oneSample" in (out / "logs" / "CITATION.md").read_text()


def test_a_damaged_file_of_the_runs_own_model_fails_before_the_commit(two_models, nilearn_dataset, tmp_path):
    out = copy_of(two_models, tmp_path)
    (design,) = (out / "node-oneSample").glob("model-oneSample_*input-motor_design.json")
    design.write_text("")
    before = snapshot(out)
    code, lines = run([nilearn_dataset["root"], out, "group", "--quiet", "--filter", "contrast=language"])
    assert code == 65, lines
    assert one_message(lines).startswith(ERROR) and design.name in lines[-1], lines
    assert not any("leaves out" in line for line in lines)  # the run's own model is not left out, it fails
    assert snapshot(out) == before


def test_reports_only_with_a_damaged_model_is_exit_65_and_writes_nothing(two_models, nilearn_dataset, tmp_path):
    out = copy_of(two_models, tmp_path)
    (out / "model-regression_smdl.json").write_text("[1, 2")
    before = snapshot(out)
    code, lines = run([nilearn_dataset["root"], out, "group", "--reports-only", "--quiet"])
    assert code == 65, lines
    assert len(lines) == 1 and lines[0].startswith(ERROR) and "model-regression_smdl.json" in lines[0], lines
    assert snapshot(out) == before


def test_each_report_shows_the_command_of_its_own_model(two_models):
    one_sample = (two_models / "model-oneSample_report.html").read_text()
    regression = (two_models / "model-regression_report.html").read_text()
    assert "--covariates" in regression and "--covariates" not in one_sample


def _limit_file_size():
    """A file-size limit: writing past it fails with EFBIG, as a full disk fails with ENOSPC."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_full_disk_on_output_dir_is_exit_73_and_writes_nothing(two_models, nilearn_dataset, tmp_path):
    out = copy_of(two_models, tmp_path)
    before = snapshot(out)
    code, lines = run([nilearn_dataset["root"], out, "group", "--quiet", "--filter", "contrast=language"],
                      preexec_fn=_limit_file_size)
    assert code == 73, lines
    assert one_message(lines).startswith(ERROR + "cannot write ") and str(out) in lines[-1], lines
    assert snapshot(out) == before
    assert not list(out.glob(f"{STAGING_PREFIX}*"))


@pytest.mark.slow  # --reports-only is also run by tests/reporting (test_graph, test_report)
def test_reports_only_completes_and_rewrites_every_report(two_models, nilearn_dataset, tmp_path):
    out = copy_of(two_models, tmp_path)
    for report in out.glob("model-*_report.html"):
        report.unlink()
    code, lines = run([nilearn_dataset["root"], out, "group", "--reports-only", "--quiet"])
    assert code == 0, lines
    assert sorted(p.name for p in out.glob("model-*_report.html")) == [
        "model-oneSample_report.html", "model-regression_report.html"]
    assert not list(out.glob(f"{STAGING_PREFIX}*"))
    assert os.listdir(out / "logs")
