"""Group statistics of the CLI checked against independent computations.

Every statistic written by ``bids_group_app`` is compared with a value
computed here from the raw input files (loaded with nibabel) and a design
matrix built by hand from participants.tsv:

* a plain-numpy OLS (``beta = pinv(X) y``, ``sigma² = RSS / (n - rank X)``,
  ``t = c·beta / sqrt(sigma² c (XᵀX)⁺ cᵀ)``, and the F statistic
  ``(Cb)ᵀ [C (XᵀX)⁺ Cᵀ]⁻¹ (Cb) / (q sigma²)``);
* nilearn's ``SecondLevelModel`` fit on the same files, design and mask.

One dataset per input layout (nilearn, FitLins, seed-004 conditions, VBM)
is run twice, with a BIDS Stats Models JSON written here and with the
equivalent short options, and both runs must give identical maps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

# Written out by hand (not imported from the package): the seed-004 condition
# order and the two contrasts of its 3x3 repeated-measures ANOVA.
CONDITIONS = ["IniFF", "ImmFF", "DelFF", "IniUF", "ImmUF", "DelUF", "IniSF", "ImmSF", "DelSF"]
FACES_SCRAMBLED = np.array([1 / 6] * 6 + [-1 / 3] * 3)
INTERACTION = np.vstack([np.kron([1 / 2, 1 / 2, -1], [1, -1, 0]), np.kron([1, -1, 0], [1, -1, 0])])

T_TOL = 1e-4          # written t (float32) vs numpy OLS
NILEARN_TOL = 1e-5    # written t/z/effect vs nilearn SecondLevelModel
MIXED_TOL = 1e-3      # mixed file formats vs the float32 dataset
SMOOTHING_FWHM = 8.0


# --------------------------------------------------------------------------
# Independent helpers
# --------------------------------------------------------------------------
def read_participants(root):
    """participants.tsv indexed by label without ``sub-`` (n/a -> NaN)."""
    table = pd.read_csv(Path(root) / "participants.tsv", sep="\t", na_values=["n/a"], keep_default_na=False)
    table["participant_id"] = table["participant_id"].str.replace(r"^sub-", "", regex=True)
    return table.set_index("participant_id")


def input_path(truth, layout, sub, what):
    """Path of one first-level map, written from the documented layouts."""
    root = Path(truth["root"]) / "derivatives"
    if layout == "nilearn":
        folder = root / "nilearn_glm" / f"sub-{sub}"
        name = f"sub-{sub}_task-localizer_contrast-{what}_stat-effect_statmap.nii.gz"
        path = folder / name
        if not path.exists():  # mixed formats: some subjects have .nii
            path = folder / name.replace(".nii.gz", ".nii")
        return path
    if layout == "fitlins":
        return (root / "fitlins" / "node-subjectLevel" / f"sub-{sub}"
                / f"sub-{sub}_task-localizer_contrast-{what}_stat-effect_statmap.nii.gz")
    if layout == "seed004":
        return root / "first-level" / f"sub-{sub}" / f"sub-{sub}_ses-mri_task-facerecognition_desc-{what}_effect.nii.gz"
    if layout == "vbm":
        return root / "cat12" / f"sub-{sub}" / "anat" / f"sub-{sub}_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz"
    raise ValueError(layout)


def load_data(paths, mask):
    """Rows: maps (scaled by nibabel), columns: voxels inside ``mask``."""
    return np.stack([nib.load(str(p)).get_fdata(dtype=np.float64)[mask] for p in paths])


def numpy_ols(Y, X):
    """Plain OLS with a pseudo-inverse (works for rank-deficient X)."""
    X = np.asarray(X, dtype=float)
    beta = np.linalg.pinv(X) @ Y
    rank = np.linalg.matrix_rank(X)
    dof = X.shape[0] - rank
    sigma2 = ((Y - X @ beta) ** 2).sum(axis=0) / dof
    return SimpleNamespace(beta=beta, sigma2=sigma2, cov=np.linalg.pinv(X.T @ X), dof=dof, rank=rank)


def numpy_t(fit, c):
    c = np.asarray(c, dtype=float)
    return (c @ fit.beta) / np.sqrt(fit.sigma2 * (c @ fit.cov @ c))


def numpy_f(fit, C):
    C = np.atleast_2d(np.asarray(C, dtype=float))
    cb = C @ fit.beta
    middle = np.linalg.inv(C @ fit.cov @ C.T)
    return np.einsum("iv,ij,jv->v", cb, middle, cb) / (C.shape[0] * fit.sigma2)


def find_cell(out_dir, **group):
    """The output cell whose design sidecar GroupBy contains ``group``."""
    hits = []
    for path in sorted(Path(out_dir).glob("node-*/*design.json")):
        sidecar = json.loads(path.read_text())
        if all(str(sidecar["GroupBy"].get(k)) == str(v) for k, v in group.items()):
            hits.append((path, sidecar))
    assert len(hits) == 1, f"expected one cell with GroupBy {group} in {out_dir}, found {[str(h[0]) for h in hits]}"
    path, sidecar = hits[0]
    stem = path.name[: -len("design.json")]
    mask_path = path.with_name(f"{stem}mask.nii.gz")
    return SimpleNamespace(
        dir=path.parent, stem=stem, sidecar=sidecar,
        mask=np.asarray(nib.load(str(mask_path)).dataobj) != 0,
    )


def statmap(cell, contrast, stat, thresh=None):
    """Path of ``<cell>_contrast-<c>_stat-<s>[_thresh-<h>]_statmap.nii.gz``."""
    suffix = f"_thresh-{thresh}" if thresh else ""
    path = cell.dir / f"{cell.stem}contrast-{contrast}_stat-{stat}{suffix}_statmap.nii.gz"
    assert path.is_file(), f"{path.name} missing; files: {sorted(p.name for p in cell.dir.iterdir())}"
    return path


def array(path):
    return np.asarray(nib.load(str(path)).dataobj)


def write_model(folder, document):
    path = Path(folder) / f"{document['Name']}_smdl.json"
    path.write_text(json.dumps(document, indent=2))
    return path


def model_document(name, node, inputs=None):
    node = {"Level": "Dataset", "Name": name, **node}
    return {"Name": name, "BIDSModelVersion": "1.0.0", "Input": inputs or {}, "Nodes": [node]}


# --------------------------------------------------------------------------
# The designs of each layout, built by hand from participants.tsv
# --------------------------------------------------------------------------
def cells_two_sample(truth):
    p = read_participants(truth["root"])
    subs = truth["subjects"]
    X = np.column_stack([(p.loc[subs, "group"] == g).to_numpy(float) for g in ("control", "patient")])
    return [
        {"group": {"contrast": c}, "paths": [input_path(truth, "nilearn", s, c) for s in subs], "X": X,
         "contrasts": [("patientMinusControl", "t", np.array([-1.0, 1.0]))]}
        for c in ("motor", "language")
    ]


def _age_sex(truth, layout, what=None):
    p = read_participants(truth["root"])
    subs = truth["subjects"]
    X = np.column_stack([np.ones(len(subs)), p.loc[subs, "age"].to_numpy(float),
                         (p.loc[subs, "sex"] == "M").to_numpy(float)])
    contrasts = [(name, "t", np.eye(3)[i]) for i, name in enumerate(("intercept", "age", "sexM"))]
    return {"paths": [input_path(truth, layout, s, what) for s in subs], "X": X, "contrasts": contrasts}


def cells_fitlins_regression(truth):
    return [{"group": {"contrast": c}, **_age_sex(truth, "fitlins", c)} for c in ("motor", "language")]


def cells_vbm_regression(truth):
    return [{"group": {}, **_age_sex(truth, "vbm")}]


def cells_rm_anova(truth):
    subs = truth["subjects"]
    paths, rows = [], []
    for s, sub in enumerate(subs):
        for c, cond in enumerate(CONDITIONS):
            paths.append(input_path(truth, "seed004", sub, cond))
            row = np.zeros(len(CONDITIONS) + len(subs))
            row[c] = 1.0
            row[len(CONDITIONS) + s] = 1.0
            rows.append(row)
    pad = np.zeros(len(subs))
    return [{"group": {}, "paths": paths, "X": np.array(rows), "contrasts": [
        ("FacesScrambled", "t", np.concatenate([FACES_SCRAMBLED, pad])),
        ("interaction", "F", np.hstack([INTERACTION, np.zeros((2, len(subs)))])),
    ]}]


def cells_missing_score(truth):
    p = read_participants(truth["root"])
    used = [s for s in truth["subjects"] if pd.notna(p.loc[s, "score"])]
    age = p.loc[used, "age"].to_numpy(float)
    score = p.loc[used, "score"].to_numpy(float)
    X = np.column_stack([np.ones(len(used)), age - age.mean(), score - score.mean()])
    contrasts = [(name, "t", np.eye(3)[i]) for i, name in enumerate(("intercept", "age", "score"))]
    return [{"group": {}, "paths": [input_path(truth, "nilearn", s, "motor") for s in used], "X": X,
             "contrasts": contrasts, "used": used}]


FACTOR = {"Transformer": "pybids-transforms-v1"}
CONDITION_WEIGHTS = {
    "FacesScrambled": FACES_SCRAMBLED.tolist(),
    "interaction": INTERACTION.tolist(),
}

CASES = {
    # (a) nilearn statmaps, two-sample t-test per first-level contrast
    "nilearn": dict(
        dataset="nilearn_dataset", cells=cells_two_sample,
        short=["--two-sample", "group"], common=[],
        model=model_document("twoSampleJson", {
            "GroupBy": ["contrast"],
            "Transformations": {**FACTOR, "Instructions": [{"Name": "Factor", "Input": ["group"]}]},
            "Model": {"Type": "glm", "X": ["group.control", "group.patient"]},
            "Contrasts": [{"Name": "patient-control", "ConditionList": ["group.control", "group.patient"],
                           "Weights": [-1, 1], "Test": "t"}],
        }),
    ),
    # (b) FitLins statmaps, regression on age and sex (dummy coded)
    "fitlins": dict(
        dataset="fitlins_dataset", cells=cells_fitlins_regression,
        short=["--covariates", "age", "sex"], common=[],
        model=model_document("regressionJson", {
            "GroupBy": ["contrast"],
            "Transformations": {**FACTOR, "Instructions": [
                {"Name": "Factor", "Input": ["sex"], "Constraint": "drop_one"}]},
            "Model": {"Type": "glm", "X": [1, "age", "sex.M"]},
            "DummyContrasts": {"Test": "t"},
        }),
    ),
    # (c) seed-004 condition maps, 3x3 repeated-measures ANOVA
    "seed004": dict(
        dataset="seed004_dataset", cells=cells_rm_anova,
        short=["--rm-anova", "desc=" + ",".join(CONDITIONS),
               "--contrast", "FacesScrambled=" + ",".join(["1/6"] * 6 + ["-1/3"] * 3),
               "--contrast", "interaction=F:1/2,-1/2,0,1/2,-1/2,0,-1,1,0;1,-1,0,-1,1,0,0,0,0"],
        common=[],
        model=model_document("rmAnovaJson", {
            "GroupBy": [],
            "Model": {"Type": "glm", "X": CONDITIONS + ["subject"]},
            "Contrasts": [{"Name": name, "ConditionList": CONDITIONS, "Weights": w, "Test": test}
                          for (name, w), test in zip(CONDITION_WEIGHTS.items(), ("t", "F"))],
        }, inputs={"desc": CONDITIONS}),
    ),
    # (d) VBM grey-matter maps, age + sex, template grey-matter mask
    "vbm": dict(
        dataset="vbm_dataset", cells=cells_vbm_regression,
        short=["--covariates", "age", "sex"], common=["--mask", "mni152-gm", "--two-sided"],
        model_common=["--mask", "{gm_mask_file}", "--two-sided"],
        model=model_document("vbmJson", {
            "Transformations": {**FACTOR, "Instructions": [
                {"Name": "Factor", "Input": "sex", "Constraint": "drop_one", "RefLevel": "F"}]},
            "Model": {"Type": "glm", "X": [1, "age", "sex.M"]},
            "DummyContrasts": {"Contrasts": [1, "age", "sex.M"], "Test": "t"},
        }),
    ),
    # nilearn statmaps, regression on demeaned age and score (n/a for 2 subjects)
    "missing-score": dict(
        dataset="nilearn_dataset", cells=cells_missing_score,
        short=["--covariates", "age", "score", "--demean"], common=["--filter", "contrast=motor"],
        model_common=[],
        model=model_document("scoreJson", {
            "Transformations": {**FACTOR, "Instructions": [
                {"Name": "Demean", "Input": ["age", "score"]}]},
            "Model": {"Type": "glm", "X": [1, "age", "score"]},
            "DummyContrasts": True,
        }, inputs={"contrast": "motor"}),
    ),
}


@pytest.fixture(scope="module")
def gm_mask_file(tmp_path_factory):
    """nilearn's MNI152 grey-matter mask saved as a file (for ``--mask FILE``)."""
    from nilearn.datasets import load_mni152_gm_mask

    path = tmp_path_factory.mktemp("masks") / "mni152_gm_mask.nii.gz"
    nib.save(load_mni152_gm_mask(), str(path))
    return path


@pytest.fixture(scope="module")
def run_case(request, run_cli, tmp_path_factory, gm_mask_file):
    """``run_case(name, variant)`` runs one case once per module and returns its outputs.

    Variants: ``short`` (short options), ``model`` (the JSON model),
    ``smooth`` (short options with ``--smoothing-fwhm``), ``rerun``
    (``--model`` on the model the ``short`` run saved).
    """
    cache = {}

    def run(name, variant="short"):
        key = (name, variant)
        if key in cache:
            return cache[key]
        case = CASES[name]
        truth = request.getfixturevalue(case["dataset"])
        folder = tmp_path_factory.mktemp(f"{name}-{variant}")
        out = folder / "out"
        common = list(case["common"])
        if variant == "short":
            args = case["short"] + common
        elif variant == "smooth":
            args = case["short"] + common + ["--smoothing-fwhm", str(SMOOTHING_FWHM)]
        elif variant == "model":
            model = write_model(folder, case["model"])
            common = [a.replace("{gm_mask_file}", str(gm_mask_file)) for a in case.get("model_common", common)]
            args = ["--model", model] + common
        elif variant == "rerun":
            saved = sorted(run(name, "short").out.glob("model-*_smdl.json"))
            assert len(saved) == 1, saved
            args = ["--model", saved[0]] + common
        else:
            raise ValueError(variant)
        code = run_cli([truth["root"], out, "group", "--quiet", *args])
        assert code == 0, f"bids_group_app exited with {code} for {name}/{variant}: {args}"
        cache[key] = SimpleNamespace(truth=truth, out=out, cells=case["cells"](truth), args=args)
        return cache[key]

    return run


def _cases(*variants):
    """(case, variant) params for every case."""
    return [pytest.param(case, variant, id=f"{case}-{variant}") for case in CASES for variant in variants]


def full_rank_columns(X):
    """Indices of a maximal set of linearly independent columns (left to right)."""
    kept = []
    for j in range(X.shape[1]):
        if np.linalg.matrix_rank(X[:, kept + [j]]) == len(kept) + 1:
            kept.append(j)
    return kept


def _stat_name(test):
    return "t" if test == "t" else "F"


# --------------------------------------------------------------------------
# 1. t and F maps equal a plain numpy OLS; model JSON == short options
# --------------------------------------------------------------------------
@pytest.mark.parametrize("case,variant", _cases("short", "model"))
def test_statmaps_equal_numpy_ols(run_case, case, variant):
    result = run_case(case, variant)
    for expected in result.cells:
        cell = find_cell(result.out, **expected["group"])
        used = sorted(Path(p).name for p in cell.sidecar["Inputs"])
        assert used == sorted(p.name for p in expected["paths"]), "the app did not analyse the expected input files"
        assert cell.mask.sum() > 100
        Y = load_data(expected["paths"], cell.mask)
        fit = numpy_ols(Y, expected["X"])
        assert cell.sidecar["DegreesOfFreedom"] == fit.dof
        assert cell.sidecar["Rank"] == fit.rank
        for name, test, weights in expected["contrasts"]:
            written = array(statmap(cell, name, _stat_name(test)))
            assert not np.any(written[~cell.mask]), "non-zero statistic outside the written mask"
            # An explicit --mask may keep voxels where every map is 0 (outside the
            # synthetic brain): there the statistic is 0/0; the app writes 0.
            defined = fit.sigma2 > 0
            assert defined.mean() > 0.5
            assert not np.any(written[cell.mask][~defined])
            with np.errstate(invalid="ignore", divide="ignore"):
                reference = numpy_t(fit, weights) if test == "t" else numpy_f(fit, weights)
            # F: float32 storage, allow its relative rounding on large values
            np.testing.assert_allclose(written[cell.mask][defined], reference[defined],
                                       rtol=0 if test == "t" else 1e-6, atol=T_TOL,
                                       err_msg=f"{case}/{variant} {expected['group']} {test}-map of {name}")
            sidecar = json.loads(statmap(cell, name, _stat_name(test)).with_suffix("").with_suffix(".json").read_text())
            assert sidecar["DegreesOfFreedom"] == fit.dof
            if test == "F":
                assert sidecar["NumeratorDegreesOfFreedom"] == np.atleast_2d(weights).shape[0]


def test_default_mask_is_finite_nonzero_in_every_map(run_case):
    """The default mask is the voxels finite and non-zero in every input map."""
    result = run_case("nilearn", "short")
    for expected in result.cells:
        cell = find_cell(result.out, **expected["group"])
        stack = np.stack([nib.load(str(p)).get_fdata() for p in expected["paths"]])
        independent = np.isfinite(stack).all(axis=0) & (stack != 0).all(axis=0)
        np.testing.assert_array_equal(cell.mask, independent)


@pytest.mark.parametrize("case", list(CASES))
def test_model_json_and_short_options_give_identical_maps(run_case, case):
    short, model = run_case(case, "short"), run_case(case, "model")
    for expected in short.cells:
        a, b = find_cell(short.out, **expected["group"]), find_cell(model.out, **expected["group"])
        np.testing.assert_array_equal(a.mask, b.mask)
        for name, test, _ in expected["contrasts"]:
            stats = ["t", "z", "p", "effect", "variance"] if test == "t" else ["F", "z", "p"]
            for stat in stats:
                np.testing.assert_array_equal(array(statmap(a, name, stat)), array(statmap(b, name, stat)),
                                              err_msg=f"{case} {expected['group']} {name} stat-{stat}")


# --------------------------------------------------------------------------
# 2. t, z and effect maps equal nilearn's SecondLevelModel
# --------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # nilearn, on all-zero voxels of --mask
@pytest.mark.parametrize("case,variant", _cases("short", "smooth"))
def test_maps_equal_nilearn_second_level_model(run_case, case, variant):
    """Same files, design and mask in nilearn's SecondLevelModel.

    A rank-deficient design (subject columns) is given to nilearn as the
    equivalent full-rank design (its redundant columns, which carry no
    contrast weight, left out): nilearn's OLSModel divides the RSS by
    n - n_columns, which is right only for a full-rank design.
    """
    from nilearn.glm.second_level import SecondLevelModel

    result = run_case(case, variant)
    fwhm = SMOOTHING_FWHM if variant == "smooth" else None
    for expected in result.cells:
        cell = find_cell(result.out, **expected["group"])
        assert cell.sidecar["SmoothingFWHM"] == fwhm
        mask_img = nib.load(str(cell.dir / f"{cell.stem}mask.nii.gz"))
        kept = full_rank_columns(expected["X"])
        design = pd.DataFrame(expected["X"][:, kept], columns=[f"c{i}" for i in kept])
        model = SecondLevelModel(mask_img=mask_img, smoothing_fwhm=fwhm, minimize_memory=False)
        # The same files, stacked by nibabel into one 4-D image (nilearn loads a
        # list of 144 files one by one, which takes seconds)
        first = nib.load(str(expected["paths"][0]))
        stack = np.stack([nib.load(str(p)).get_fdata(dtype=np.float32) for p in expected["paths"]], axis=-1)
        model.fit(nib.Nifti1Image(stack, first.affine), design_matrix=design)
        for name, test, weights in expected["contrasts"]:
            weights = np.asarray(weights)
            dropped = np.setdiff1d(np.arange(expected["X"].shape[1]), kept)
            assert not np.any(weights[..., dropped])
            maps = model.compute_contrast(weights[..., kept], second_level_stat_type=test, output_type="all")
            pairs = {"z": "z_score", _stat_name(test): "stat"}
            if test == "t":
                pairs["effect"] = "effect_size"
            for stat, key in pairs.items():
                written = array(statmap(cell, name, stat))[cell.mask]
                reference = maps[key].get_fdata()[cell.mask]
                rtol = 1e-6 if stat == "F" else 0  # float32 storage of large F values
                np.testing.assert_allclose(written, reference, rtol=rtol, atol=NILEARN_TOL,
                                           err_msg=f"{case}/{variant} {expected['group']} {name} stat-{stat}")


def test_smoothing_changes_the_maps(run_case):
    """Guard for the test above: --smoothing-fwhm really smooths."""
    plain, smooth = run_case("nilearn", "short"), run_case("nilearn", "smooth")
    a = find_cell(plain.out, contrast="motor")
    b = find_cell(smooth.out, contrast="motor")
    diff = np.abs(array(statmap(a, "patientMinusControl", "t")) - array(statmap(b, "patientMinusControl", "t")))
    assert diff[a.mask].max() > 0.1


# --------------------------------------------------------------------------
# 3. Planted effects are found; the null region stays below threshold
# --------------------------------------------------------------------------
BLOBS = [
    # (case, blob name, GroupBy of the cell, contrast label, sign of the effect)
    ("one-sample", "motor_mean", {"contrast": "motor"}, "intercept", 1),
    ("one-sample", "language_mean", {"contrast": "language"}, "intercept", 1),
    ("nilearn", "group_diff", {"contrast": "motor"}, "patientMinusControl", 1),
    ("missing-score", "age_effect", {}, "age", 1),
    ("missing-score", "score_effect", {}, "score", 1),
    ("seed004", "faces_vs_scrambled", {}, "FacesScrambled", 1),
    ("seed004", "interaction", {}, "interaction", 1),
    ("vbm", "age_effect", {}, "age", -1),   # grey matter falls with age
    ("vbm", "sex_effect", {}, "sexM", -1),  # F > M, so the sex.M effect is negative
]


@pytest.fixture(scope="module")
def run_blob_case(run_case, run_cli, nilearn_dataset, tmp_path_factory):
    cache = {}

    def run(name):
        if name != "one-sample":
            return run_case(name, "short")
        if name not in cache:
            out = tmp_path_factory.mktemp("one-sample") / "out"
            assert run_cli([nilearn_dataset["root"], out, "group", "--quiet"]) == 0
            cache[name] = SimpleNamespace(truth=nilearn_dataset, out=out)
        return cache[name]

    return run


def _clusters(cell, contrast, thresh="fpr"):
    path = cell.dir / f"{cell.stem}contrast-{contrast}_thresh-{thresh}_clusters.tsv"
    assert path.is_file(), path
    return pd.read_csv(path, sep="\t", dtype={"Cluster ID": str})


@pytest.mark.parametrize("case,blob,group,contrast,sign", BLOBS, ids=[f"{b[0]}-{b[1]}" for b in BLOBS])
def test_planted_effect_found_and_null_region_quiet(run_blob_case, case, blob, group, contrast, sign):
    result = run_blob_case(case)
    truth = result.truth
    spec = next(b for b in truth["blobs"] if b["name"] == blob)
    cell = find_cell(result.out, **group)
    thresholded = array(statmap(cell, contrast, "z", thresh="fpr"))
    i, j, k = spec["ijk"]
    assert thresholded[i, j, k] * sign > 0, f"planted {blob} not above threshold at its centre"

    table = _clusters(cell, contrast)
    peaks = table[pd.to_numeric(table["X"], errors="coerce").notna()]
    xyz = peaks[["X", "Y", "Z"]].to_numpy(float)
    distance_vox = np.linalg.norm(xyz - np.asarray(spec["xyz_mm"]), axis=1) / truth["voxel_size"]
    close = (distance_vox <= 1.5) & (np.sign(peaks["Peak Stat"].to_numpy(float)) == sign)
    assert close.any(), f"no cluster peak within 1.5 voxels of {blob} at {spec['xyz_mm']}:\n{table}"

    null = truth["null_region"]
    grid = np.indices(thresholded.shape)
    ball = sum((g - c) ** 2 for g, c in zip(grid, null["ijk"])) <= null["radius_vox"] ** 2
    assert not np.any(thresholded[ball]), f"supra-threshold voxels in the null region for {contrast}"
    z = array(statmap(cell, contrast, "z"))
    sidecar = json.loads(statmap(cell, contrast, "z", thresh="fpr").with_suffix("").with_suffix(".json").read_text())
    threshold = sidecar["Threshold"]["Value"]
    assert np.abs(z[ball]).max() < threshold


# --------------------------------------------------------------------------
# 4. Mixed file formats give the float32 dataset's maps
# --------------------------------------------------------------------------
def test_mixed_formats_match_float32_dataset(run_blob_case, mixed_dataset, run_cli, tmp_path):
    plain = run_blob_case("one-sample")
    out = tmp_path / "out"
    assert run_cli([mixed_dataset["root"], out, "group", "--quiet"]) == 0
    formats = mixed_dataset["formats"]
    assert {f["extension"] for f in formats.values()} == {".nii", ".nii.gz"}
    assert any(f["dtype"] == "int16" for f in formats.values())
    assert any(f["nifti_version"] == 2 for f in formats.values())
    nan_subjects = [s for s, f in formats.items() if f["background"] == "nan"]
    assert nan_subjects
    for contrast in ("motor", "language"):
        a, b = find_cell(plain.out, contrast=contrast), find_cell(out, contrast=contrast)
        assert len(b.sidecar["Inputs"]) == len(mixed_dataset["subjects"])
        assert any(p.endswith(".nii") for p in b.sidecar["Inputs"])
        for sub in nan_subjects:
            data = nib.load(str(input_path(mixed_dataset, "nilearn", sub, contrast))).get_fdata()
            assert not np.any(b.mask & ~np.isfinite(data)), "NaN voxels inside the mask"
        common = a.mask & b.mask
        assert common.sum() > 0.9 * a.mask.sum()
        ta = array(statmap(a, "intercept", "t"))
        tb = array(statmap(b, "intercept", "t"))
        np.testing.assert_allclose(tb[common], ta[common], rtol=0, atol=MIXED_TOL)


# --------------------------------------------------------------------------
# 5. Subjects with n/a in a covariate are dropped and reported
# --------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["short", "model"])
def test_missing_covariate_subjects_dropped(run_case, variant):
    result = run_case("missing-score", variant)
    truth = result.truth
    missing = sorted(truth["missing_score_subjects"])
    assert len(missing) == 2
    [expected] = result.cells
    cell = find_cell(result.out)
    sidecar = cell.sidecar
    dropped = sidecar["DroppedSubjects"]
    assert sorted(d["subject"] for d in dropped) == missing
    for item in dropped:
        assert "score" in item["reason"]
        assert re.search(rf"sub-{item['subject']}_", item["input"])
    assert sorted(sidecar["Subjects"]) == sorted(expected["used"])
    assert not set(missing) & set(sidecar["Subjects"])
    n_used = len(expected["used"])
    assert n_used == len(truth["subjects"]) - 2
    assert sidecar["NumberOfMaps"] == n_used
    assert sidecar["DegreesOfFreedom"] == n_used - np.linalg.matrix_rank(expected["X"]) == n_used - 3
    design = pd.read_csv(cell.dir / f"{cell.stem}design.tsv", sep="\t")
    assert len(design) == n_used


# --------------------------------------------------------------------------
# 6. --model on the saved model reproduces the run bit for bit
# --------------------------------------------------------------------------
def _result_files(out):
    return sorted(str(p.relative_to(out)) for p in Path(out).rglob("*")
                  if p.is_file() and p.parts[len(Path(out).parts)] != "logs")


@pytest.mark.parametrize("case", list(CASES))
def test_rerun_of_saved_model_is_bit_identical(run_case, case):
    first, again = run_case(case, "short"), run_case(case, "rerun")
    files = _result_files(first.out)
    assert files == _result_files(again.out)
    maps = [f for f in files if f.endswith("_statmap.nii.gz") or f.endswith("_mask.nii.gz")]
    assert len(maps) >= 5
    for rel in maps:
        a, b = nib.load(str(first.out / rel)), nib.load(str(again.out / rel))
        assert a.get_data_dtype() == b.get_data_dtype()
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj), err_msg=rel)
        np.testing.assert_array_equal(a.affine, b.affine)
    for rel in (f for f in files if f.endswith("_design.tsv") or f.endswith("_clusters.tsv")):
        assert (first.out / rel).read_text() == (again.out / rel).read_text(), rel
    [model] = [f for f in files if f.endswith("_smdl.json")]
    assert json.loads((first.out / model).read_text()) == json.loads((again.out / model).read_text())


# --------------------------------------------------------------------------
# 7. The paired design gives the classical paired t-test
# --------------------------------------------------------------------------
def test_paired_design_equals_classical_paired_t_test(seed004_dataset, run_cli, tmp_path):
    """t of ``--paired desc=IniFF,ImmFF`` is scipy's ``ttest_rel`` (dof n - 1)."""
    from scipy import stats

    out = tmp_path / "out"
    assert run_cli([seed004_dataset["root"], out, "group", "--quiet", "--paired", "desc=IniFF,ImmFF"]) == 0
    cell = find_cell(out)
    subs = seed004_dataset["subjects"]
    assert cell.sidecar["DegreesOfFreedom"] == len(subs) - 1
    a = load_data([input_path(seed004_dataset, "seed004", s, "IniFF") for s in subs], cell.mask)
    b = load_data([input_path(seed004_dataset, "seed004", s, "ImmFF") for s in subs], cell.mask)
    reference = stats.ttest_rel(a, b, axis=0).statistic
    written = array(statmap(cell, "IniFFMinusImmFF", "t"))[cell.mask]
    np.testing.assert_allclose(written, reference, rtol=0, atol=T_TOL)
