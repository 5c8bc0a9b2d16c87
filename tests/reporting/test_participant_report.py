"""The participant level's per-subject report (issue 11, item 6): QC numbers against the files, the
variance inflation factor against an independent computation, the links from the group report, --no-reports."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_group_app.example_data import make_example_dataset
from bids_group_app.firstlevel.qc import condition_columns, displacement_summary, variance_inflation
from tests.workflow.test_participant import _cli

SUBJECTS = ("01",)  # with a report; sub-02 is fit without one (the group report links only reports that exist)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """4 subjects x 2 runs; the participant level for two of them (sub-01 with its report, sub-02 without), then
    the group level on OUTPUT_DIR."""
    root = tmp_path_factory.mktemp("participant-report") / "ds"
    make_example_dataset(root, "fmriprep", n_subjects=4, extra_participant=False)
    model = root / "models" / "model-faces_smdl.json"
    out = root.parent / "out"
    code, stderr = _cli(root, out, "participant", "--model", model, "--participant-label", *SUBJECTS, "--quiet")
    assert code == 0, stderr
    code, stderr = _cli(root, out, "participant", "--model", model, "--participant-label", "02", "--quiet",
                        "--no-reports")
    assert code == 0, stderr
    code, stderr = _cli(root, out, "group", "--model", model, "--quiet")
    assert code == 0, stderr
    return root, out


def _runs(page):
    """``{run label: {QC cell class: text}}`` and the VIF cells of each run section of a subject report."""
    runs = {}
    for label, body in re.findall(r'<h2>Run (\S+)</h2>(.*?)</section>', page, flags=re.S):
        cells = dict(re.findall(r'<td class="([\w-]+)">([^<]*)</td>', body))
        vif = {k: float(v) for k, v in re.findall(r'<td class="vif" data-column="([^"]+)">([^<]+)</td>', body)}
        runs[label] = (cells, vif)
    return runs


def _fmriprep_file(root, label, suffix):
    subject = label.split("_")[0]
    (path,) = (root / "derivatives" / "fmriprep" / subject / "func").glob(f"{label}*{suffix}")
    return path


def test_report_qc_numbers_equal_the_files(chain):
    root, out = chain
    tr = json.loads((root / "task-faces_bold.json").read_text())["RepetitionTime"]
    for subject in SUBJECTS:
        runs = _runs((out / f"sub-{subject}_report.html").read_text())
        assert sorted(runs) == [f"sub-{subject}_task-faces_run-{r}" for r in (1, 2)]
        for label, (cells, _) in runs.items():
            confounds = pd.read_csv(_fmriprep_file(root, label, "desc-confounds_timeseries.tsv"), sep="\t",
                                    na_values="n/a")
            fd = confounds["framewise_displacement"].to_numpy(float)
            assert np.isnan(fd[0])  # fMRIPrep's n/a on the first volume, which the report must exclude
            assert abs(float(cells["fd-mean"]) - np.nanmean(fd)) < 5e-5
            assert abs(float(cells["fd-max"]) - np.nanmax(fd)) < 5e-5
            bold = nib.load(_fmriprep_file(root, label, "desc-preproc_bold.nii.gz"))
            assert int(cells["scans"]) == bold.shape[3]
            assert float(cells["tr"]) == tr
            design = pd.read_csv(next((out / "node-run" / f"sub-{subject}").glob(f"{label}_*design.tsv")), sep="\t")
            used = len(set(design.columns) & set(confounds.columns))
            assert cells["confounds"] == f"{used} (of {confounds.shape[1]} in the confounds TSV)"


def _vif_by_inverse_correlation(design):
    """VIF as the diagonal of the inverse correlation matrix of the non-constant columns (intercept in the model)."""
    varying = design[:, np.ptp(design, axis=0) > 0]
    return np.diag(np.linalg.inv(np.corrcoef(varying, rowvar=False)))


def test_variance_inflation_equals_the_inverse_correlation_diagonal():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((80, 4))
    x[:, 2] = 0.8 * x[:, 0] + 0.3 * rng.standard_normal(80)  # a correlated column: VIF well above 1
    design = np.column_stack([x, np.ones(80)])
    np.testing.assert_allclose(variance_inflation(design, range(4)), _vif_by_inverse_correlation(design), rtol=1e-10)
    assert variance_inflation(design, [2])[0] > 3
    # no intercept column given: R² is still about the mean (the intercept is always among the regressors)
    np.testing.assert_allclose(variance_inflation(x + 5.0), _vif_by_inverse_correlation(x), rtol=1e-10)
    # a column that is a combination of the others, and a constant one
    collinear = np.column_stack([x, x[:, 0] - 2 * x[:, 1], np.ones(80)])
    vif = variance_inflation(collinear)
    assert np.isinf(vif[4]) and np.isnan(vif[5])


def test_report_vif_equals_an_independent_computation_on_the_design(chain):
    root, out = chain
    for subject in SUBJECTS:
        for label, (_, vif) in _runs((out / f"sub-{subject}_report.html").read_text()).items():
            design = pd.read_csv(next((out / "node-run" / f"sub-{subject}").glob(f"{label}_*design.tsv")), sep="\t")
            expected = dict(zip([c for c in design.columns if np.ptp(design[c]) > 0],
                                _vif_by_inverse_correlation(design.to_numpy(float))))
            assert sorted(vif) == sorted(c for c in design.columns if c.startswith("trial_type."))
            for column, value in vif.items():
                assert abs(value - expected[column]) < 5e-4, column


def test_displacement_summary_excludes_missing_values():
    assert displacement_summary([np.nan, 0.1, 0.3]) == pytest.approx((0.2, 0.3))
    assert np.isnan(displacement_summary([np.nan])[0])
    columns = ["a", "trans_x", "cosine00", "intercept"]
    values = np.column_stack([np.arange(5.0), np.ones(5) * [0, 1, 0, 1, 0], np.arange(5.0) ** 2, np.ones(5)])
    assert condition_columns(columns, {"trans_x"}, values) == [0]


def test_report_figures_exist_and_the_group_report_links_every_subject(chain):
    _, out = chain
    for subject in SUBJECTS:
        page = (out / f"sub-{subject}_report.html").read_text()
        sources = re.findall(r'<img src="([^"]+)"', page)
        # 2 design matrices, then slices and glass brain of the Subject node's 3 contrasts
        assert len(sources) == 2 + 2 * 3
        assert all(s.startswith(f"figures/sub-{subject}_node-") for s in sources)
        assert all((out / s).stat().st_size > 0 for s in sources)
    (group,) = out.glob("model-*_report.html")
    links = re.findall(r'<a href="(sub-[^"]+_report\.html)"', group.read_text())
    assert links == [f"sub-{s}_report.html" for s in SUBJECTS]
    assert not list(out.glob(".bids_group_app-staging-*"))


def test_no_reports_writes_no_subject_report(chain, tmp_path):
    root, _ = chain
    out = tmp_path / "out"
    code, stderr = _cli(root, out, "participant", "--model", root / "models" / "model-faces_smdl.json",
                        "--participant-label", "01", "--no-reports", "--quiet")
    assert code == 0, stderr
    assert list((out / "node-subject" / "sub-01").glob("*_stat-z_statmap.nii.gz"))
    assert not list(out.glob("*.html")) and not (out / "figures").exists()
