"""The README's seed recipes reproduce the nilearn analyses of ``shared/seeds``.

Each row of the README table "Reproducing the analyses of ``shared/seeds``"
names an example layout and one ``bids_group_app`` command. The command is
read from the README itself (so the README and this test cannot drift), run
as a subprocess of the installed ``bids_group_app`` on the example dataset of
that layout (``--no-reports`` added: reports change no map), and the number
of suprathreshold voxels of each thresholded map, split into positive and
negative, is compared with the same count from the seed's own nilearn code
run here on the same maps (same defaults: sidedness, height control, alpha,
smoothing, mask, permutation threshold).

What is compared, per seed:

* 000 (VBM, ``SecondLevelModel`` + ``threshold_stats_img`` FDR 0.05,
  two-sided by nilearn's default): the age and sex maps. The seed's
  ``fetch_icbm152_brain_gm_mask`` needs a download; both sides use nilearn's
  shipped ``load_mni152_gm_mask`` (the recipe's ``mni152-gm``). The seed
  codes sex as ``F = 1``, the recipe's column is ``sex.M``: signs swap.
* 001 (one-sample, one-sided): the uncorrected z > 3.09 map, and the voxel
  max-T, cluster-size and cluster-mass FWE maps at p < 0.1 (the seed's
  plotting threshold) against ``non_parametric_inference`` run as the seed
  runs it (500 permutations, ``random_state=0``); the max-T count is also
  checked against the exact null of all 2^16 sign flips (plain numpy).
* 002 (covariate, two-sided as ``permuted_ols`` by default): the Bonferroni
  p < 0.1 map (the seed's ``f_regression``) and the voxel max-T FWE map at
  p < 0.1 against ``permuted_ols`` with the recipe's number of permutations
  (the seed's 100 are too few to resolve p = 0.1). TFCE is not compared:
  nilearn's TFCE sums 100 steps of each map's own maximum without
  multiplying by the step, ours is the exact integral, so the two FWE
  thresholds differ by construction.
* 004 (3x3 repeated-measures ANOVA): Faces > Scrambled at Bonferroni 0.05,
  one-sided. The permutation maps are not compared: nilearn permutes rows of
  the whole design, the recipe permutes within subjects.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Reproducing the analyses of `shared/seeds`"
FWE_PLOT_ALPHA = 0.1   # the seeds 001/002 plot -log10(p) maps at a threshold of 1
CONDITIONS = ["IniFF", "ImmFF", "DelFF", "IniUF", "ImmUF", "DelUF", "IniSF", "ImmSF", "DelSF"]


# --------------------------------------------------------------------------
# The recipes, read from the README
# --------------------------------------------------------------------------
def readme_recipes(level="group"):
    """The seed-recipe table of the README: ``{seed: (layout, argv)}`` of the recipes of ``level``.

    ``argv`` is the command after ``bids_group_app ds out <level>``.
    """
    text = README.read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    recipes = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"\d{3}", cells[0]):
            continue
        layout = re.fullmatch(r"`--layout (\w+)`", cells[2])
        argv = shlex.split(cells[3].strip("`"))
        assert layout and argv[:3] == ["bids_group_app", "ds", "out"] and argv[3] in ("participant", "group"), line
        if argv[3] == level:
            recipes[cells[0]] = (layout[1], argv[4:])
    return recipes


def option(argv, name):
    """The value following ``name`` in ``argv``."""
    return argv[argv.index(name) + 1]


def run_recipe(seed, example_dataset, tmp_path):
    """Run the README command of ``seed`` as a subprocess; return (argv, truth, output folder)."""
    layout, argv = readme_recipes()[seed]
    truth = example_dataset(layout)
    out = tmp_path / "out"
    script = Path(sys.executable).with_name("bids_group_app")
    proc = subprocess.run([str(script), truth["root"], str(out), "group", *argv, "--no-reports", "--quiet"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return argv, truth, out


# --------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------
def split(selected, sign):
    """(number of selected voxels with sign > 0, number with sign < 0)."""
    selected, sign = np.asarray(selected, bool), np.asarray(sign)
    return int((selected & (sign > 0)).sum()), int((selected & (sign < 0)).sum())


def nonzero_split(img):
    """Positive and negative voxel counts of a thresholded map."""
    data = np.asarray(img.dataobj)
    return split(data != 0, data)


def our_map(out, contrast, name):
    """The one output map ``*contrast-<contrast>_<name>.nii.gz``."""
    found = sorted(out.rglob(f"*contrast-{contrast}_{name}.nii.gz"))
    assert len(found) == 1, found
    return nib.load(str(found[0]))


def swapped(counts):
    """(negative, positive) from (positive, negative)."""
    return counts[1], counts[0]


def participants(truth):
    """participants.tsv indexed by ``sub-XX``."""
    return pd.read_csv(Path(truth["root"]) / "participants.tsv", sep="\t",
                       dtype={"participant_id": str}).set_index("participant_id")


def subject_of(path):
    """``sub-XX`` of a file name."""
    return Path(path).name.split("_")[0]


def motor_maps(truth):
    """The motor effect maps of the nilearn layout (the seeds' ``cmaps``)."""
    return sorted(str(p) for p in Path(truth["derivatives"]).glob(
        "sub-*/*_contrast-motor_stat-effect_statmap.nii.gz"))


# --------------------------------------------------------------------------
# Seed 000: VBM regression, FDR 0.05 (two-sided: threshold_stats_img's default)
# --------------------------------------------------------------------------
def seed000_counts(truth):
    """The seed's age and sex maps thresholded by ``threshold_stats_img`` (FDR 0.05)."""
    from nilearn.datasets import load_mni152_gm_mask
    from nilearn.glm import threshold_stats_img
    from nilearn.glm.second_level import SecondLevelModel
    from nilearn.image import resample_to_img

    maps = sorted(str(p) for p in Path(truth["derivatives"]).glob("sub-*/anat/*_label-GM_probseg.nii.gz"))
    table = participants(truth).loc[[subject_of(p) for p in maps]]
    age = table["age"].astype(float).to_numpy()
    sex = (table["sex"] == "F").to_numpy()
    mask_img = resample_to_img(load_mni152_gm_mask(), maps[0], interpolation="nearest",
                               copy_header=True, force_resample=True)
    design = pd.DataFrame(np.vstack((age, sex, np.ones(len(maps)))).T, columns=["age", "sex", "intercept"])
    model = SecondLevelModel(smoothing_fwhm=2.0, mask_img=mask_img, minimize_memory=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(maps, design_matrix=design)
        counts = {}
        for name, contrast in (("age", [1, 0, 0]), ("sex", "sex")):
            z_map = model.compute_contrast(second_level_contrast=contrast, output_type="z_score")
            thresholded, _ = threshold_stats_img(z_map, alpha=0.05, height_control="fdr")
            counts[name] = nonzero_split(thresholded)
    return counts


def test_seed000_vbm_fdr_counts(example_dataset, tmp_path):
    argv, truth, out = run_recipe("000", example_dataset, tmp_path)
    height = option(argv, "--height-control")
    ours = {"age": nonzero_split(our_map(out, "age", f"stat-z_thresh-{height}_statmap")),
            "sex": swapped(nonzero_split(our_map(out, "sexM", f"stat-z_thresh-{height}_statmap")))}
    seed = seed000_counts(truth)
    assert ours == seed
    assert seed["age"][1] > 0 and seed["sex"][0] > 0   # both planted effects (age -, F > M) are found


# --------------------------------------------------------------------------
# Seed 001: one-sample test, parametric and permutation (one-sided)
# --------------------------------------------------------------------------
def seed001_counts(maps):
    """The seed's uncorrected z map and ``non_parametric_inference`` FWE maps at p < 0.1."""
    from nilearn.glm.second_level import SecondLevelModel, non_parametric_inference

    design = pd.DataFrame([1] * len(maps), columns=["intercept"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SecondLevelModel(smoothing_fwhm=8.0).fit(maps, design_matrix=design)
        z = np.asarray(model.compute_contrast(second_level_contrast="intercept", output_type="z_score").dataobj)
        perm = non_parametric_inference(maps, design_matrix=design, model_intercept=True, n_perm=500,
                                        two_sided_test=False, smoothing_fwhm=8.0, n_jobs=1, threshold=0.001,
                                        random_state=0)
    t = np.asarray(perm["t"].dataobj)
    counts = {"fpr": split(z > norm.isf(0.001), z)}   # one-sided: the negative tail is not tested
    for kind in ("t", "size", "mass"):
        logp = np.asarray(perm[f"logp_max_{kind}"].dataobj)
        counts[f"max{kind}"] = split(logp > -np.log10(FWE_PLOT_ALPHA), t)
    return counts, np.asarray(model.masker_.mask_img_.dataobj) > 0


def exact_signflip_maxt_count(maps, mask, alpha):
    """Voxels whose max-T FWE p (all 2^n sign flips, one-sided) is below ``alpha``."""
    from nilearn.maskers import NiftiMasker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = NiftiMasker(mask_img=nib.Nifti1Image(mask.astype(np.uint8), nib.load(maps[0]).affine),
                        smoothing_fwhm=8.0).fit().transform(maps).astype(np.float64)
    n = y.shape[0]
    signs = np.array(list(itertools.product([1.0, -1.0], repeat=n)))
    sum_sq = (y ** 2).sum(axis=0)
    maxima = np.empty(len(signs))
    for start in range(0, len(signs), 4096):
        mean = signs[start:start + 4096] @ y / n
        sd = np.sqrt((sum_sq / n - mean ** 2) * n / (n - 1))
        maxima[start:start + 4096] = (mean / (sd / np.sqrt(n))).max(axis=1)
    t_obs = y.mean(axis=0) / (y.std(axis=0, ddof=1) / np.sqrt(n))
    maxima.sort()
    p_fwe = (len(maxima) - np.searchsorted(maxima, t_obs - 1e-9)) / len(maxima)
    return int((p_fwe < alpha).sum())


def test_seed001_one_sample_parametric_and_permutation_counts(example_dataset, tmp_path):
    argv, truth, out = run_recipe("001", example_dataset, tmp_path)
    assert "--one-sided" in argv and float(option(argv, "--fwe-alpha")) == FWE_PLOT_ALPHA
    ours = {"fpr": nonzero_split(our_map(out, "intercept", "stat-z_thresh-fpr_statmap"))}
    for kind in ("t", "size", "mass"):
        ours[f"max{kind}"] = nonzero_split(our_map(out, "intercept", f"stat-t_thresh-max{kind}_statmap"))
    maps = motor_maps(truth)
    seed, mask = seed001_counts(maps)
    assert ours == seed
    assert all(pos > 0 for pos, _ in seed.values())
    assert ours["maxt"][0] == exact_signflip_maxt_count(maps, mask, FWE_PLOT_ALPHA)


# --------------------------------------------------------------------------
# Seed 002: covariate test, Bonferroni and max-T (two-sided: permuted_ols's default)
# --------------------------------------------------------------------------
def seed002_counts(truth, n_perm):
    """The seed's ``f_regression`` Bonferroni map and ``permuted_ols`` max-T map at p < 0.1, signed by t."""
    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_ols
    from sklearn.feature_selection import f_regression

    maps = motor_maps(truth)
    tested_var = participants(truth).loc[[subject_of(p) for p in maps], "score"].astype(float).to_numpy()
    keep = np.where(~np.isnan(tested_var))[0]
    maps, tested_var = [maps[i] for i in keep], tested_var[keep].reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masker = NiftiMasker(smoothing_fwhm=5)
        data = masker.fit_transform(maps)
        _, p_anova = f_regression(data, tested_var.ravel(), center=True)
        perm = permuted_ols(tested_var, data, model_intercept=True, n_perm=n_perm, n_jobs=1, verbose=0,
                            random_state=0)
    p_anova = np.minimum(np.nan_to_num(p_anova * data.shape[1], nan=1.0), 1.0)
    t = perm["t"][0]
    threshold = -np.log10(FWE_PLOT_ALPHA)
    return {"bonferroni": split(-np.log10(p_anova) > threshold, t),
            "maxt": split(perm["logp_max_t"][0] > threshold, t)}


@pytest.mark.slow
def test_seed002_covariate_bonferroni_and_maxt_counts(example_dataset, tmp_path):
    argv, truth, out = run_recipe("002", example_dataset, tmp_path)
    assert "--one-sided" not in argv and float(option(argv, "--fwe-alpha")) == FWE_PLOT_ALPHA
    height = option(argv, "--height-control")
    ours = {"bonferroni": nonzero_split(our_map(out, "score", f"stat-z_thresh-{height}_statmap")),
            "maxt": nonzero_split(our_map(out, "score", "stat-t_thresh-maxt_statmap"))}
    seed = seed002_counts(truth, int(option(argv, "--n-perm")))
    assert ours == seed
    assert seed["bonferroni"][0] > 0 and seed["maxt"][0] > 0


# --------------------------------------------------------------------------
# Seed 004: 3x3 repeated-measures ANOVA, Faces > Scrambled at Bonferroni 0.05 (one-sided)
# --------------------------------------------------------------------------
def seed004_counts(truth):
    """The seed's Faces > Scrambled z map thresholded at Bonferroni 0.05, ``two_sided=False``."""
    from nilearn.glm.second_level import SecondLevelModel
    from nilearn.glm.thresholding import threshold_stats_img

    effect_files = sorted(str(p) for p in Path(truth["derivatives"]).glob("sub-*/*_effect.nii.gz")
                          if any(f"desc-{c}_" in p.name for c in CONDITIONS))
    subjects = sorted({subject_of(f)[4:] for f in effect_files})
    design = pd.DataFrame({c: [1 if c in f else 0 for f in effect_files] for c in CONDITIONS}
                          | {s: [1 if f"sub-{s}" in f else 0 for f in effect_files] for s in subjects})
    faces_scrambled = np.pad([1 / 6] * 6 + [-1 / 3] * 3, (0, design.shape[1] - len(CONDITIONS)), "constant")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the same files, loaded once: nilearn's input check compares every pair of paths, reloading
        # both each time (22032 loads, over a minute, for 144 file names)
        model = SecondLevelModel().fit([nib.load(f) for f in effect_files], design_matrix=design)
        z_map = model.compute_contrast(faces_scrambled, output_type="z_score")
        thresholded, _ = threshold_stats_img(z_map, alpha=0.05, height_control="bonferroni", two_sided=False)
    return {"FacesScrambled": nonzero_split(thresholded)}


def test_seed004_rm_anova_bonferroni_counts(example_dataset, tmp_path):
    argv, truth, out = run_recipe("004", example_dataset, tmp_path)
    assert "--one-sided" in argv
    height = option(argv, "--height-control")
    ours = {"FacesScrambled": nonzero_split(our_map(out, "FacesScrambled", f"stat-z_thresh-{height}_statmap"))}
    seed = seed004_counts(truth)
    assert ours == seed
    assert seed["FacesScrambled"][0] > 0


@pytest.mark.slow  # the same maps are checked in-process by tests/workflow/test_participant.py
def test_seed003_participant_recipe_equals_nilearn_first_level_model(tmp_path):
    """The README's seed-003 command, as written (every subject), on the fmriprep example: sub-01's subject-level
    faces-scrambled t and z equal nilearn's two-run FirstLevelModel (tests/workflow/test_participant.py checks
    every map of it)."""
    from bids_group_app.example_data import make_example_dataset
    from tests.workflow.test_participant import _nilearn_reference, _subject_map

    layout, argv = readme_recipes("participant")["003"]
    ds = tmp_path / "ds"
    truth = make_example_dataset(ds, layout, extra_participant=False)
    argv = [str(ds / a[len("ds/"):]) if a.startswith("ds/") else a for a in argv]
    script = Path(sys.executable).with_name("bids_group_app")
    proc = subprocess.run([str(script), str(ds), str(tmp_path / "out"), "participant", *argv, "--quiet", "--no-reports"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "node-subject").iterdir()) == \
        [f"sub-{s}" for s in truth["subjects"]]
    t_maps, _, mask = _nilearn_reference(truth, "01")
    for stat, key in (("t", "stat"), ("z", "z_score")):
        ours = np.asarray(nib.load(str(_subject_map(tmp_path / "out", "01", "facesScrambled", stat))).dataobj)[mask]
        ref = np.asarray(t_maps[key].dataobj)[mask]
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
