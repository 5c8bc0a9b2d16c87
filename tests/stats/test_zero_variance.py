"""Voxels with no residual variance are excluded from inference and reported (issue 9).

A voxel whose values the design fits exactly (the same value in every map
for a one-sample test; a voxel collinear with the design in a regression)
has zero residual variance: its t and F are 0/0, and float rounding turned
them into |t| ~ 1e16, z ~ 32, p = 0. Such voxels must leave the analysis
mask (no t/z/p there, unseen by permutations and thresholds) and be counted
in the log, the design sidecar and the methods text; when no voxel is left
the run stops with exit 65 and one line naming the cell.

The workflow cases run the CLI as real processes (exit code, stderr) on a
small nilearn-layout dataset edited here; the t of the remaining voxels is
checked against a plain-numpy OLS on the same files. The engine case checks
that a voxel with zero variance under some shuffling only gives finite
statistics.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_group_app.example_data import make_example_dataset
from bids_group_app.stats.geometry import MaskGeometry
from bids_group_app.stats.permutation import ContrastTest, Settings
from bids_group_app.stats.shuffling import make_shufflings

N_SUBJECTS = 8
DERIV = Path("derivatives") / "nilearn_glm"
PATTERN = "sub-*/*_contrast-motor_stat-effect_statmap.nii.gz"
BLOCK = (slice(6, 9), slice(8, 11), slice(7, 10))   # 27 voxels inside the brain of the example grid
ERROR_PREFIX = "bids_group_app: error: "


def _maps(root):
    return sorted((Path(root) / DERIV).glob(PATTERN))


def _rewrite(path, data):
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), img.affine), str(path))


def _load(path):
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)


def _command(*argv):
    return [sys.executable, "-m", "bids_group_app", *map(str, argv), "--no-reports"]


def _output(out, kind):
    found = sorted(Path(out).rglob(f"*_{kind}"))
    assert len(found) == 1, (kind, found)
    return found[0]


def _statmap(out, stat):
    return _output(out, f"stat-{stat}_statmap.nii.gz")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Three edited copies of one example dataset, run in parallel as real processes.

    ``identical``: every motor map is the first one. ``block``: a block of
    voxels holds 3.0 in every map. ``collinear``: ages are integers and the
    block holds 2·age + 1 (exact in float32), fitted exactly by [1, age].
    """
    root = tmp_path_factory.mktemp("zero-variance")
    base = root / "base"
    make_example_dataset(base, "nilearn", n_subjects=N_SUBJECTS, extra_participant=False)
    cases = {}

    identical = root / "identical"
    shutil.copytree(base, identical)
    first = _load(_maps(identical)[0])
    for path in _maps(identical)[1:]:
        _rewrite(path, first)
    cases["identical"] = (identical, [])

    block = root / "block"
    shutil.copytree(base, block)
    for path in _maps(block):
        data = _load(path)
        data[BLOCK] = 3.0
        _rewrite(path, data)
    cases["block"] = (block, ["--n-perm", "50", "--two-sided"])

    collinear = root / "collinear"
    shutil.copytree(base, collinear)
    participants = pd.read_csv(collinear / "participants.tsv", sep="\t", dtype=str)
    participants["age"] = [str(20 + 3 * i) for i in range(len(participants))]
    participants.to_csv(collinear / "participants.tsv", sep="\t", index=False)
    ages = dict(zip(participants["participant_id"], participants["age"].astype(float)))
    for path in _maps(collinear):
        data = _load(path)
        data[BLOCK] = 2.0 * ages[path.parent.name] + 1.0
        _rewrite(path, data)
    cases["collinear"] = (collinear, ["--covariates", "age", "--contrast", "age=0,1"])

    running = {}
    for name, (bids, options) in cases.items():
        out = root / f"out-{name}"
        argv = _command(bids, out, "group", "--filter", "contrast=motor", *options)
        running[name] = (subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                         bids, out)
    results = {}
    for name, (proc, bids, out) in running.items():
        stdout, stderr = proc.communicate(timeout=600)
        results[name] = dict(code=proc.returncode, stdout=stdout, stderr=stderr, bids=bids, out=out)
    return results


def _numpy_t(bids, X, c):
    """Plain-numpy OLS t of contrast ``c`` on the motor maps (subject order of the files)."""
    Y = np.stack([_load(p) for p in _maps(bids)])
    finite_nonzero = np.isfinite(Y).all(0) & (Y != 0).all(0)
    beta, _, _, _ = np.linalg.lstsq(X, Y.reshape(len(Y), -1), rcond=None)
    resid = Y.reshape(len(Y), -1) - X @ beta
    dof = len(Y) - np.linalg.matrix_rank(X)
    sigma2 = (resid ** 2).sum(0) / dof
    var = c @ np.linalg.pinv(X.T @ X) @ c
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (c @ beta) / np.sqrt(sigma2 * var)
    return t.reshape(Y.shape[1:]), finite_nonzero


def _check_excluded(result, X, c):
    assert result["code"] == 0, result["stderr"]
    out = result["out"]
    mask = _load(_output(out, "mask.nii.gz")).astype(bool)
    n_block = mask[BLOCK].size
    assert not mask[BLOCK].any(), "voxels without residual variance are in the mask"

    design = json.loads(_output(out, "design.json").read_text())
    assert design["Mask"]["ExcludedZeroVariance"] == n_block
    assert design["Mask"]["NumberOfVoxels"] == int(mask.sum())
    warning = [line for line in result["stderr"].splitlines() if "[WARNING]" in line and "residual variance" in line]
    assert len(warning) == 1 and f" {n_block} voxels" in warning[0], result["stderr"]

    for path in Path(out).rglob("*_statmap.nii.gz"):
        values = _load(path)
        assert np.all(values[BLOCK] == 0), path.name           # as every other out-of-mask voxel
        assert np.all(np.abs(values[np.isfinite(values)]) < 1e6), path.name

    t_ref, finite_nonzero = _numpy_t(result["bids"], X, c)
    expected_mask = finite_nonzero.copy()
    expected_mask[BLOCK] = False
    assert np.array_equal(mask, expected_mask)
    t = _load(_statmap(out, "t"))
    np.testing.assert_allclose(t[mask], t_ref[mask], rtol=1e-5, atol=1e-6)
    return design


def test_identical_maps_exit_65_one_line(datasets):
    result = datasets["identical"]
    assert result["code"] == 65, result["stderr"]
    errors = [line for line in result["stderr"].splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, result["stderr"]
    assert "residual variance" in errors[0] and "oneSample" in errors[0] and "motor" in errors[0]
    assert "Traceback" not in result["stderr"]
    assert not list(Path(result["out"]).rglob("*_statmap.nii.gz"))


def test_constant_block_is_excluded_and_reported(datasets):
    result = datasets["block"]
    X = np.ones((N_SUBJECTS, 1))
    _check_excluded(result, X, np.array([1.0]))
    citation = (Path(result["out"]) / "logs" / "CITATION.md").read_text()
    assert "27 voxels" in citation and "residual variance" in citation
    null = pd.read_csv(_output(result["out"], "nulldist.tsv"), sep="\t")
    assert np.isfinite(null.select_dtypes("number").to_numpy()).all()
    assert null.select_dtypes("number").abs().to_numpy().max() < 1e3


def test_collinear_block_is_excluded_in_regression(datasets):
    result = datasets["collinear"]
    participants = pd.read_csv(result["bids"] / "participants.tsv", sep="\t").set_index("participant_id")
    ages = participants.loc[[p.parent.name for p in _maps(result["bids"])], "age"].to_numpy(float)
    X = np.column_stack([np.ones(N_SUBJECTS), ages])
    _check_excluded(result, X, np.array([0.0, 1.0]))


# --------------------------------------------------------------------------
# The detection rule on arrays
# --------------------------------------------------------------------------
def test_zero_variance_voxels_rule():
    from bids_group_app.stats.glm import zero_variance_voxels

    rng = np.random.default_rng(0)
    n = 12
    age = rng.uniform(20, 80, n)
    X = np.column_stack([np.ones(n), age, rng.normal(size=n)])
    normal = rng.normal(100.0, 5.0, size=(n, 50)).astype(np.float32).astype(np.float64)
    constant = np.full((n, 1), np.float32(0.1), dtype=np.float64)
    fitted = (X @ np.array([1.5, 0.25, -2.0]))[:, None]      # exactly in the column space
    one_ulp = constant.copy()
    one_ulp[3] = np.nextafter(np.float32(0.1), np.float32(1))  # one map differs by one float32 step
    zeros = np.zeros((n, 1))
    Y = np.column_stack([normal, constant, fitted, one_ulp, zeros])
    flags = zero_variance_voxels(Y, X)
    assert not flags[:50].any()
    assert flags[50] and flags[51] and flags[53]
    assert not flags[52]                                    # a real (if tiny) difference is data


def test_zero_variance_voxels_rank_deficient_design():
    from bids_group_app.stats.glm import zero_variance_voxels

    # repeated measures: condition columns plus one indicator per subject (rank < columns)
    subjects, conditions = 5, 3
    rows = [(s, c) for s in range(subjects) for c in range(conditions)]
    X = np.array([[float(c == k) for k in range(conditions)] + [float(s == k) for k in range(subjects)]
                  for s, c in rows])
    rng = np.random.default_rng(1)
    offsets = rng.normal(size=subjects)
    fitted = np.array([offsets[s] + 0.3 * c for s, c in rows])
    Y = np.column_stack([rng.normal(size=len(rows)), fitted])
    assert np.array_equal(zero_variance_voxels(Y, X), [False, True])


# --------------------------------------------------------------------------
# The permutation engine: zero variance under a shuffling only
# --------------------------------------------------------------------------
def test_engine_finite_when_a_shuffling_fits_exactly():
    """``y = ±c``: the sign-flip that makes every value ``c`` leaves no residual.

    The engine floors ``1 - ||g||²`` (no division by zero): the statistic
    of that shuffling is large but finite, the observed one is the OLS t.
    """
    n = 8
    y = np.array([2.0, -2.0, 2.0, 2.0, -2.0, 2.0, -2.0, 2.0])
    rng = np.random.default_rng(2)
    Y = np.column_stack([y, rng.normal(size=(n, 3))])
    X = np.ones((n, 1))
    shufflings = make_shufflings(X, "signflip", n_perm=1000, seed=0)
    assert shufflings.exhaustive
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(divide="raise", invalid="raise"):
            test = ContrastTest(Y, X, np.array([1.0]), "t", MaskGeometry(np.ones((4, 1, 1), dtype=bool)),
                                shufflings, Settings(two_sided=True))
            null = test.null()
    expected = y.mean() / (y.std(ddof=1) / np.sqrt(n))
    np.testing.assert_allclose(test.observed.stat[0], expected, rtol=1e-5)
    assert np.isfinite(null.max_stat).all()
