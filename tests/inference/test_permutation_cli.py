"""Permutation inference end to end through the CLI, on generated datasets.

Covers the fixed output names and sidecars of ``--n-perm/--tfce/
--cluster-forming-p``, the planted effect against the null region under FWE,
p-value bounds and their recomputation from the written null distribution,
bit-identical results across ``--n-cpus`` and seeds, HPC shards run as
concurrent processes (a simulated SLURM array) and merged, the usage and
missing-input errors of the shard options, the shuffling scheme and
exchangeability blocks chosen per design, and exhaustive enumeration.

Runs are small (``--n-perm`` 200-300, one first-level contrast); each
module fixture runs the CLI once and the tests read its outputs.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

N_PERM = 300
CLUSTER_P = 0.001
FWE = -math.log10(0.05)
SPATIAL = ["--n-perm", str(N_PERM), "--tfce", "--cluster-forming-p", str(CLUSTER_P)]
NODE = "node-oneSample"
BASE = "model-oneSample_task-localizer_input-motor_contrast-intercept"
PERM_STATS = ("tfce", "size", "mass", "logpmaxt", "logpmaxtfce", "logpmaxsize", "logpmaxmass", "logp")
FWE_KINDS = ("maxt", "maxtfce", "maxsize", "maxmass")
NULL_COLUMNS = ["shuffling", "max_t", "max_tfce", "max_size", "max_mass"]
ERROR_PREFIX = "bids_group_app: error: "
RM_ANOVA = [
    "--rm-anova", "desc=IniFF,ImmFF,DelFF,IniUF,ImmUF,DelUF,IniSF,ImmSF,DelSF",
    "--contrast", "FacesScrambled=1/6,1/6,1/6,1/6,1/6,1/6,-1/3,-1/3,-1/3",
    "--contrast", "FamousUnfamiliar=1/3,1/3,1/3,-1/3,-1/3,-1/3",
    "--contrast", "StimulusXImmediateRepetition=F:1/2,-1/2,0,1/2,-1/2,0,-1,1,0;1,-1,0,-1,1,0,0,0,0",
]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def cli(run_cli, *argv):
    """Run the CLI in-process; restore ``tempfile.tempdir`` (``-w`` sets it process-wide)."""
    saved = tempfile.tempdir
    try:
        return run_cli([str(a) for a in argv])
    finally:
        tempfile.tempdir = saved


def ok(run_cli, *argv):
    code = cli(run_cli, *argv)
    assert code == 0, f"bids_group_app {' '.join(map(str, argv))} exited {code}"


def cli_command(*argv):
    """The CLI as a real process (the interpreter of this test session)."""
    return [sys.executable, "-m", "bids_group_app", *map(str, argv), "--no-reports"]


def load(path):
    return np.asarray(nib.load(str(path)).dataobj)


def sidecar(path):
    return json.loads(Path(str(path).replace(".nii.gz", ".json").replace(".tsv", ".json")).read_text())


def statmaps(out):
    return sorted(p.relative_to(out).as_posix() for p in Path(out).rglob("*_statmap.nii.gz"))


def assert_identical_outputs(a, b):
    """Every statmap array and every null-distribution/cluster table identical, bit for bit."""
    names = statmaps(a)
    assert names and names == statmaps(b)
    for name in names:
        img_a, img_b = nib.load(str(Path(a) / name)), nib.load(str(Path(b) / name))
        assert img_a.get_data_dtype() == img_b.get_data_dtype(), name
        assert np.array_equal(np.asarray(img_a.dataobj), np.asarray(img_b.dataobj), equal_nan=True), name
    for pattern in ("*_nulldist.tsv", "*_clusters.tsv"):
        tables = sorted(p.relative_to(a).as_posix() for p in Path(a).rglob(pattern))
        assert tables == sorted(p.relative_to(b).as_posix() for p in Path(b).rglob(pattern))
        for name in tables:
            assert (Path(a) / name).read_bytes() == (Path(b) / name).read_bytes(), name
    assert list(Path(a).rglob("*_nulldist.tsv"))


def blob(truth, name):
    return next(b for b in truth["blobs"] if b["name"] == name)


def ball(shape, ijk, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, ijk)) <= radius ** 2


def fwe_p(observed, maxima, n_perm):
    """(1 + #{null max >= observed}) / (1 + n_perm), computed here."""
    maxima = np.sort(np.asarray(maxima, dtype=float))
    exceed = len(maxima) - np.searchsorted(maxima, np.asarray(observed, dtype=float), side="left")
    return (1.0 + exceed) / (1.0 + n_perm)


def near_tie(observed, maxima, rtol=1e-5):
    """Voxels whose value is within ``rtol`` of some null maximum (float32 rounding could flip them)."""
    maxima = np.sort(np.asarray(maxima, dtype=float))
    observed = np.asarray(observed, dtype=float)
    idx = np.clip(np.searchsorted(maxima, observed), 1, len(maxima) - 1)
    gap = np.minimum(np.abs(maxima[idx] - observed), np.abs(maxima[idx - 1] - observed))
    return gap <= rtol * np.maximum(np.abs(observed), 1e-12)


# --------------------------------------------------------------------------
# Module fixtures: each runs the CLI once
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_sample(nilearn_dataset):
    """Arguments of the one-sample run with TFCE and clusters (first-level contrast motor)."""
    return [nilearn_dataset["root"], "OUT", "group", "--filter", "contrast=motor", *SPATIAL, "--one-sided", "--quiet"]


def with_out(argv, out, *extra):
    return [out if a == "OUT" else a for a in argv] + [str(e) for e in extra]


@pytest.fixture(scope="module")
def base_run(one_sample, run_cli, tmp_path_factory):
    """Reference single run: ``--n-cpus 1``, seed 0, its own ``-w``."""
    root = tmp_path_factory.mktemp("perm-base")
    out = root / "out"
    ok(run_cli, *with_out(one_sample, out, "--n-cpus", 1, "-w", root / "work"))
    return out


@pytest.fixture(scope="module")
def base_files(base_run):
    folder = base_run / NODE
    return {
        "folder": folder,
        **{stat: folder / f"{BASE}_stat-{stat}_statmap.nii.gz" for stat in (*PERM_STATS, "t", "z", "p")},
        "nulldist": folder / f"{BASE}_nulldist.tsv",
    }


# --------------------------------------------------------------------------
# 1. Output names, sidecars, planted effect, p-value bounds
# --------------------------------------------------------------------------
@pytest.mark.parametrize("stat", PERM_STATS)
def test_permutation_map_and_sidecar(base_files, stat):
    path = base_files[stat]
    assert path.is_file(), f"missing {path.name}"
    about = sidecar(path)
    assert about["Statistic"] == stat
    assert about["NumberOfPermutations"] == N_PERM
    assert about["Shuffling"]["Scheme"] == "signflip"
    assert about["Shuffling"]["Seed"] == 0
    assert about["Shuffling"]["Exhaustive"] is False
    assert about["ExchangeabilityBlocks"]["Variable"] is None
    assert about["ExchangeabilityBlocks"]["WholeBlock"] is False
    assert about["TFCE"]["E"] == 0.5 and about["TFCE"]["H"] == 2.0 and about["TFCE"]["Connectivity"] == 6
    assert about["ClusterForming"]["P"] == CLUSTER_P
    dof = about["DegreesOfFreedom"]
    assert dof == 15
    assert about["ClusterForming"]["StatisticThreshold"] == pytest.approx(stats.t.isf(CLUSTER_P, dof), rel=1e-9)
    assert "NumberOfPermutations" in about["PValueConvention"]
    assert nib.load(str(path)).shape == nib.load(str(base_files["t"])).shape


def test_null_distribution_table(base_files):
    table = pd.read_csv(base_files["nulldist"], sep="\t")
    assert list(table.columns) == NULL_COLUMNS
    assert len(table) == N_PERM
    assert table["shuffling"].tolist() == list(range(1, N_PERM + 1))
    assert np.isfinite(table.to_numpy()).all()
    assert (table["max_tfce"] > 0).all() and (table["max_size"] >= 0).all() and (table["max_mass"] >= 0).all()
    about = sidecar(base_files["nulldist"])
    assert about["NumberOfPermutations"] == N_PERM and about["Shuffling"]["Scheme"] == "signflip"


@pytest.mark.parametrize("kind", FWE_KINDS)
def test_fwe_thresholded_map_and_cluster_table(base_files, nilearn_dataset, kind):
    folder = base_files["folder"]
    img_path = folder / f"{BASE}_stat-t_thresh-{kind}_statmap.nii.gz"
    table_path = folder / f"{BASE}_thresh-{kind}_clusters.tsv"
    assert img_path.is_file() and table_path.is_file()
    about = sidecar(img_path)
    assert about["FWEAlpha"] == 0.05 and about["NumberOfPermutations"] == N_PERM
    thresholded = load(img_path)
    assert about["SurvivingVoxels"] == int(np.count_nonzero(thresholded))
    assert thresholded[tuple(blob(nilearn_dataset, "motor_mean")["ijk"])] > 0
    # surviving voxels are those whose FWE p <= 0.05 (logp >= -log10 0.05)
    logp = load(base_files[f"logp{kind}"])
    assert np.array_equal(thresholded != 0, logp >= np.float32(FWE) - 1e-6)
    # t values of the surviving voxels are the written t map's
    t = load(base_files["t"])
    keep = thresholded != 0
    np.testing.assert_allclose(thresholded[keep], t[keep], rtol=1e-5)
    # one cluster at the planted blob (peak within a voxel)
    table = pd.read_csv(table_path, sep="\t")
    peaks = table[["X", "Y", "Z"]].to_numpy(dtype=float)
    assert len(peaks)
    assert np.min(np.linalg.norm(peaks - np.asarray(blob(nilearn_dataset, "motor_mean")["xyz_mm"]), axis=1)) <= 8.0 * 1.01


def test_fwe_thresholded_values_are_exactly_the_t_map(base_files):
    t = load(base_files["t"])
    thresholded = load(base_files["folder"] / f"{BASE}_stat-t_thresh-maxt_statmap.nii.gz")
    keep = thresholded != 0
    assert keep.any()
    assert np.array_equal(thresholded[keep], t[keep])


def test_planted_blob_survives_fwe_and_null_region_does_not(base_files, nilearn_dataset):
    ijk = tuple(blob(nilearn_dataset, "motor_mean")["ijk"])
    null = nilearn_dataset["null_region"]
    null_ball = ball(nilearn_dataset["shape"], null["ijk"], null["radius_vox"])
    mask = load(base_files["folder"] / "model-oneSample_task-localizer_input-motor_mask.nii.gz") > 0
    assert null_ball[mask].any()
    for stat in ("logpmaxt", "logpmaxtfce", "logpmaxsize", "logpmaxmass"):
        logp = load(base_files[stat])
        assert logp[ijk] > FWE, stat
        assert logp[null_ball & mask].max() < FWE, stat
    assert load(base_files["logp"])[ijk] > FWE
    assert load(base_files["tfce"])[ijk] > 0
    assert load(base_files["size"])[ijk] >= 1 and load(base_files["mass"])[ijk] > 0


def test_logp_bounds(base_files):
    bound = math.log10(1 + N_PERM)
    for stat in ("logp", "logpmaxt", "logpmaxtfce", "logpmaxsize", "logpmaxmass"):
        logp = load(base_files[stat]).astype(float)
        assert np.isfinite(logp).all(), stat
        assert logp.min() >= 0, stat
        assert logp.max() <= bound * (1 + 1e-6), stat
    # the blob beats every shuffling: the smallest p is exactly 1 / (1 + n_perm)
    assert load(base_files["logpmaxt"]).max() == pytest.approx(bound, rel=1e-6)


def test_observed_t_is_the_parametric_t_and_fwe_p_follows_from_the_null(base_files):
    folder = base_files["folder"]
    # no second t map: the permutation outputs share the parametric stat-t file
    assert sorted(p.name for p in folder.glob(f"{BASE}_stat-t_*statmap.nii.gz")) == sorted(
        [f"{BASE}_stat-t_statmap.nii.gz"] + [f"{BASE}_stat-t_thresh-{k}_statmap.nii.gz" for k in FWE_KINDS])
    assert not list(folder.glob("*_stat-T_*")) and not list(folder.glob("*_stat-tstat*"))
    mask = load(folder / "model-oneSample_task-localizer_input-motor_mask.nii.gz") > 0
    t = load(base_files["t"]).astype(float)
    null = pd.read_csv(base_files["nulldist"], sep="\t")
    # voxel FWE p recomputed from the null maxima and the written t map
    expected = -np.log10(fwe_p(t[mask], null["max_t"], N_PERM))
    sure = ~near_tie(t[mask], null["max_t"])
    assert sure.mean() > 0.99
    np.testing.assert_allclose(load(base_files["logpmaxt"])[mask][sure], expected[sure], rtol=1e-6)
    # TFCE FWE p from the written TFCE map
    tfce = load(base_files["tfce"]).astype(float)
    assert (tfce[mask] >= 0).all() and not tfce[~mask].any()
    expected = -np.log10(fwe_p(tfce[mask], null["max_tfce"], N_PERM))
    sure = ~near_tie(tfce[mask], null["max_tfce"])
    np.testing.assert_allclose(load(base_files["logpmaxtfce"])[mask][sure], expected[sure], rtol=1e-6)
    # cluster-size FWE p per voxel from the cluster-size map (voxels outside clusters: p = 1)
    size = load(base_files["size"]).astype(float)
    expected = np.where(size[mask] > 0, -np.log10(fwe_p(size[mask], null["max_size"], N_PERM)), 0.0)
    np.testing.assert_allclose(load(base_files["logpmaxsize"])[mask], expected, rtol=1e-6, atol=1e-7)
    # clusters are formed at the sidecar's threshold: every clustered voxel has t above it
    threshold = sidecar(base_files["size"])["ClusterForming"]["StatisticThreshold"]
    assert (t[mask][size[mask] > 0] > threshold * (1 - 1e-5)).all()
    assert not ((t[mask] > threshold * (1 + 1e-5)) & (size[mask] == 0)).any()


# --------------------------------------------------------------------------
# 2. --n-cpus does not change anything
# --------------------------------------------------------------------------
def test_n_cpus_2_is_bit_identical_to_n_cpus_1(one_sample, base_run, run_cli, tmp_path):
    out = tmp_path / "out"
    ok(run_cli, *with_out(one_sample, out, "--n-cpus", 2, "-w", tmp_path / "work"))
    assert_identical_outputs(base_run, out)


# --------------------------------------------------------------------------
# 3. HPC shards: a simulated SLURM job array, then a merge
# --------------------------------------------------------------------------
N_SHARDS = 3


@pytest.fixture(scope="module")
def shard_array(one_sample, tmp_path_factory):
    """Three shard processes started together (SLURM_ARRAY_TASK_ID=1..3), one shared -w."""
    root = tmp_path_factory.mktemp("perm-shards")
    work, out = root / "work", root / "out"
    argv = cli_command(*with_out(one_sample, out, "-w", work))
    script = shlex.join(argv) + f' --perm-shard "$SLURM_ARRAY_TASK_ID/{N_SHARDS}"'
    processes = []
    for task in range(1, N_SHARDS + 1):
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task)}
        processes.append(subprocess.Popen(["bash", "-c", script], env=env, cwd=root, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    return {"root": root, "work": work, "out": out, "results": results}


def test_shard_jobs_save_shards_and_write_nothing_to_output_dir(shard_array):
    for task, (code, _, err) in enumerate(shard_array["results"], start=1):
        assert code == 0, err
        assert f"saved permutation shard {task}/{N_SHARDS}" in err
    assert not shard_array["out"].exists()
    saved = sorted(p.name for p in (shard_array["work"] / "perm-shards").glob("*.npz"))
    assert [name.rsplit("-shard-", 1)[1] for name in saved] == [f"{k}of{N_SHARDS}.npz" for k in range(1, N_SHARDS + 1)]
    assert len({name.rsplit("-shard-", 1)[0] for name in saved}) == 1  # one contrast, one key
    assert not list((shard_array["work"] / "perm-shards").glob(".*tmp*"))


def test_merged_shards_equal_a_single_run(shard_array, one_sample, base_run, run_cli, tmp_path):
    out = tmp_path / "merged"
    ok(run_cli, *with_out(one_sample, out, "-w", shard_array["work"], "--merge-perm-shards"))
    assert_identical_outputs(base_run, out)
    about = sidecar(out / NODE / f"{BASE}_stat-logpmaxt_statmap.nii.gz")
    assert about["NumberOfPermutations"] == N_PERM


def test_merge_with_a_missing_shard_exits_66_naming_it(shard_array, one_sample, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(shard_array["work"], work)
    (missing,) = (work / "perm-shards").glob(f"*-shard-2of{N_SHARDS}.npz")
    missing.unlink()
    out = tmp_path / "out"
    result = subprocess.run(cli_command(*with_out(one_sample, out, "-w", work, "--merge-perm-shards")),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 66, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, result.stderr
    assert f"2/{N_SHARDS}" in errors[0] and "missing" in errors[0]
    assert f"1/{N_SHARDS}" not in errors[0] and f"3/{N_SHARDS}" not in errors[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_merge_with_a_damaged_shard_exits_65_naming_it(shard_array, one_sample, tmp_path, damage):
    """A 0-byte or cut shard file (a job killed or a disk full while it was copied) is named, to be rerun."""
    work = tmp_path / "work"
    shutil.copytree(shard_array["work"], work)
    (bad,) = (work / "perm-shards").glob(f"*-shard-2of{N_SHARDS}.npz")
    bad.write_bytes(b"" if damage == "empty" else bad.read_bytes()[: bad.stat().st_size // 2])
    out = tmp_path / "out"
    result = subprocess.run(cli_command(*with_out(one_sample, out, "-w", work, "--merge-perm-shards")),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 65, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, result.stderr
    assert str(bad) in errors[0] and f"--perm-shard 2/{N_SHARDS}" in errors[0] and "rerun" in errors[0]
    assert not out.exists()


def test_a_leftover_temporary_shard_is_never_read(shard_array, one_sample, base_run, run_cli, tmp_path, caplog):
    """A killed shard job leaves its partial temporary file in -w: the merge ignores it (with a warning)."""
    work = tmp_path / "work"
    shutil.copytree(shard_array["work"], work)
    (shard,) = (work / "perm-shards").glob(f"*-shard-2of{N_SHARDS}.npz")
    leftover = shard.with_name(f".{shard.name}.k1ll3d.tmp.npz")
    leftover.write_bytes(shard.read_bytes()[:100])
    out = tmp_path / "merged"
    ok(run_cli, *with_out(one_sample, out, "-w", work, "--merge-perm-shards"))
    assert_identical_outputs(base_run, out)
    assert any(leftover.name in r.getMessage() for r in caplog.records)


def test_saving_a_shard_is_atomic_and_removes_its_leftover_temporary_file(tmp_path, monkeypatch):
    from bids_group_app.inference import shards
    from bids_group_app.stats.permutation import NullDistribution

    null = NullDistribution(max_stat=np.arange(4.0), exceedances=np.arange(3))
    folder = tmp_path / "perm-shards"
    folder.mkdir()
    stale = folder / ".abc-shard-1of2.npz.xyz.tmp.npz"
    other = folder / ".abc-shard-2of2.npz.xyz.tmp.npz"  # another shard's job may still be writing it
    stale.write_bytes(b"partial")
    other.write_bytes(b"partial")
    target = shards.save(tmp_path, "abc", 1, 2, null)
    assert sorted(p.name for p in folder.iterdir()) == sorted([target.name, other.name])

    def killed(stream, **arrays):  # the job dies while writing
        stream.write(b"PK")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        shards.save(tmp_path, "abc", 2, 2, null)
    assert not (folder / "abc-shard-2of2.npz").exists()


@pytest.mark.parametrize("shard", ["0/3", "4/3", "3/0", "1-3", "x/3"])
def test_bad_shard_spec_is_a_usage_error(one_sample, run_cli, tmp_path, capsys, shard):
    out, work = tmp_path / "out", tmp_path / "work"
    capsys.readouterr()
    code = cli(run_cli, *with_out(one_sample, out, "-w", work, "--perm-shard", shard))
    err = capsys.readouterr().err
    assert code == 64
    assert err.count(ERROR_PREFIX) == 1 and "--perm-shard" in err
    assert not out.exists()
    assert not list(work.rglob("*.npz"))


def test_perm_shard_without_work_dir_is_a_usage_error(one_sample, run_cli, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli(run_cli, *with_out(one_sample, out, "--perm-shard", "1/3")) == 64
    assert "-w" in capsys.readouterr().err
    assert cli(run_cli, *with_out(one_sample, out, "--merge-perm-shards")) == 64
    assert not out.exists()


def test_tfce_without_permutations_is_a_usage_error(nilearn_dataset, run_cli, tmp_path, capsys):
    out = tmp_path / "out"
    root = nilearn_dataset["root"]
    capsys.readouterr()
    assert cli(run_cli, root, out, "group", "--tfce", "--n-perm", "0") == 64
    assert "--n-perm" in capsys.readouterr().err
    assert cli(run_cli, root, out, "group", "--cluster-forming-p", "0.001", "--n-perm", "0") == 64
    assert not out.exists()


# --------------------------------------------------------------------------
# 4. Shuffling scheme and exchangeability blocks per design
# --------------------------------------------------------------------------
def permutation_sidecars(out):
    found = sorted(Path(out).rglob("*_stat-logpmaxt_statmap.json"))
    assert found
    return {p.name: json.loads(p.read_text()) for p in found}


@pytest.fixture(scope="module")
def rm_anova_run(seed004_dataset, run_cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("perm-rm") / "out"
    ok(run_cli, seed004_dataset["root"], out, "group", *RM_ANOVA, "--n-perm", 200, "--quiet")
    return out


def test_rm_anova_permutes_within_subjects(rm_anova_run, seed004_dataset):
    found = permutation_sidecars(rm_anova_run)
    assert len(found) == 3
    for name, about in found.items():
        assert about["ExchangeabilityBlocks"]["Variable"] == "subject", name
        assert about["ExchangeabilityBlocks"]["WholeBlock"] is False, name
        assert about["Shuffling"]["Scheme"] == "permute", name
        assert about["NumberOfPermutations"] == 200, name
        assert about["Shuffling"]["Exhaustive"] is False, name
    f_table = next(rm_anova_run.rglob("*contrast-StimulusXImmediateRepetition_nulldist.tsv"))
    table = pd.read_csv(f_table, sep="\t")
    assert list(table.columns) == ["shuffling", "max_F"] and len(table) == 200
    # the planted interaction survives voxel-level FWE
    logp = load(next(rm_anova_run.rglob("*contrast-StimulusXImmediateRepetition_stat-logpmaxt_statmap.nii.gz")))
    assert logp[tuple(blob(seed004_dataset, "interaction")["ijk"])] > FWE


@pytest.mark.parametrize("design, scheme", [
    (["--two-sample", "group"], "permute"),
    ([], "signflip"),
    (["--covariates", "age"], "both"),
])
def test_scheme_follows_the_design(nilearn_dataset, run_cli, tmp_path, design, scheme):
    out = tmp_path / "out"
    ok(run_cli, nilearn_dataset["root"], out, "group", "--filter", "contrast=motor", *design,
       "--n-perm", 200, "--quiet")
    found = permutation_sidecars(out)
    if design[:1] == ["--covariates"]:
        assert {about["Contrast"]["Name"] for about in found.values()} == {"intercept", "age"}
    for name, about in found.items():
        assert about["Shuffling"]["Scheme"] == scheme, name
        assert about["ExchangeabilityBlocks"]["Variable"] is None, name
        assert about["NumberOfPermutations"] == 200, name


# --------------------------------------------------------------------------
# 5. Seeds
# --------------------------------------------------------------------------
def test_same_seed_same_outputs_different_seed_different_null(one_sample, base_run, run_cli, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    ok(run_cli, *with_out(one_sample, again, "--seed", 0))
    assert_identical_outputs(base_run, again)
    ok(run_cli, *with_out(one_sample, other, "--seed", 12345))
    name = f"{NODE}/{BASE}_nulldist.tsv"
    assert (base_run / name).read_bytes() != (other / name).read_bytes()
    a, b = pd.read_csv(base_run / name, sep="\t"), pd.read_csv(other / name, sep="\t")
    assert not np.array_equal(a["max_t"], b["max_t"])
    assert sidecar(other / NODE / f"{BASE}_stat-logp_statmap.nii.gz")["Shuffling"]["Seed"] == 12345
    # the observed maps do not depend on the seed
    for stat in ("t", "tfce", "size", "mass"):
        path = f"{NODE}/{BASE}_stat-{stat}_statmap.nii.gz"
        assert np.array_equal(load(base_run / path), load(other / path)), stat


# --------------------------------------------------------------------------
# 6. Exhaustive enumeration
# --------------------------------------------------------------------------
def test_eight_subjects_use_all_255_sign_flips(nilearn_dataset, run_cli, tmp_path):
    labels = nilearn_dataset["subjects"][:8]
    out = tmp_path / "out"
    ok(run_cli, nilearn_dataset["root"], out, "group", "--filter", "contrast=motor",
       "--participant-label", *labels, "--n-perm", 10000, "--quiet")
    about = sidecar(out / NODE / f"{BASE}_stat-logpmaxt_statmap.nii.gz")
    assert about["NumberOfPermutations"] == 255
    assert about["Shuffling"]["Exhaustive"] is True
    assert about["Shuffling"]["NumberOfDistinctShufflings"] == 256
    assert about["Shuffling"]["Scheme"] == "signflip"
    assert about["Subjects"] == sorted(labels)
    table = pd.read_csv(out / NODE / f"{BASE}_nulldist.tsv", sep="\t")
    assert len(table) == 255
    logp = load(out / NODE / f"{BASE}_stat-logp_statmap.nii.gz").astype(float)
    assert logp.max() <= math.log10(256) * (1 + 1e-6)
    # the all-flipped shuffling is in the null: it negates t, so some null max_t is -min(t)
    t = load(out / NODE / f"{BASE}_stat-t_statmap.nii.gz").astype(float)
    mask = load(out / NODE / "model-oneSample_task-localizer_input-motor_mask.nii.gz") > 0
    assert table["max_t"].max() >= -t[mask].min() * (1 - 1e-5)


# --------------------------------------------------------------------------
# Side effects of an in-process run
# --------------------------------------------------------------------------
def test_work_dir_does_not_leak_into_the_calling_process(nilearn_dataset, run_cli, tmp_path):
    saved = tempfile.tempdir
    try:
        # fails right after the work folder is prepared (unknown analysis level)
        assert run_cli([nilearn_dataset["root"], str(tmp_path / "out"), "session", "-w", str(tmp_path / "work")]) == 17
        assert tempfile.tempdir == saved
    finally:
        tempfile.tempdir = saved
