"""Benchmark: the participant level (Run + Subject nodes) vs nilearn's and FitLins's ways.

Run by hand (not a test: timings on shared machines are noisy)::

    python benchmarks/bench_participant.py                 # 20 subjects x 2 runs, a few minutes
    python benchmarks/bench_participant.py --subjects 4 --repeats 1   # a smoke check

Data: ``make_example_dataset(..., "fmriprep", n_subjects=N, n_runs=2)``
(16x16x12 voxels of 4 mm, ``--volumes`` per run, default 120; raw events
and TR, fMRIPrep BOLD, brain masks and confounds) and its shipped model
``models/model-faces_smdl.json`` (seed 003: spm + derivative HRF, cosine
drift 0.01 Hz, trans_*/rot_*/framewise_displacement/a_comp_cor_00..05
confounds with ``n/a`` set to 0, AR(1); contrasts faces-scrambled,
scrambled-faces and the F effects_of_interest; runs combined per subject by
fixed effects). All three methods read the same files and fit the same
model; each runs, all subjects in one process, in a fresh Python process
timed from outside (interpreter start and imports included, for every
method alike):

1. ``ours``: ``bids_group_app DS OUT participant --model M.json``. Writes
   run maps (13 per run: effect, variance, t, z, p of the t contrasts; F,
   z, p of the F contrast), subject maps (13), JSON sidecars and design
   TSVs.
2. ``nilearn``: ``first_level_from_bids`` (the raw ``_bold.json``/TR and
   ``_events.tsv``, the fMRIPrep derivatives folder, ``slice_time_ref=0``
   as our frame times), the same confound columns, each subject's model
   masked by the intersection of its run masks, ``.fit()`` of the two runs
   together and ``compute_contrast(..., output_type="all")``; saves the 13
   subject maps (nilearn's multi-run model gives no run maps).
3. ``fitlins-way``: what FitLins does with nilearn (FitLins itself is not
   installed here, and cannot be): one ``FirstLevelModel`` per run on a
   design from ``make_first_level_design_matrix``, the run maps saved (13
   per run), then per subject and contrast nilearn's
   ``compute_fixed_effects`` of the saved run effect/variance maps (its
   default: 100 degrees of freedom per run), saving effect, variance,
   stat, z and p (p from z) of each subject contrast.

Each method is timed ``--repeats`` times into fresh output folders; the
table gives the best. Then, cheaply (sub-01, maps already written), the
faces-scrambled subject z maps are compared: ours against nilearn's
multi-run model (must agree to ``Z_TOL``; the script exits 1 otherwise),
and the FitLins way against ours, whose z differs because
``compute_fixed_effects`` uses 100 dof per run instead of the fitted
residual dof (the difference is printed, and again with the fitted dof
passed as ``dofs=``, where it vanishes).

Measured on this 2-core machine, shared with other jobs (20 subjects x 2
runs x 120 volumes, 1,152 voxels in the mask, best of 1, the machine
loaded; nilearn 0.14.1, pybids 0.22.0; ours with ``--no-reports``, as the
other two write no report)::

    | method | total s | s per subject | ratio to ours | maps written |
    |---|---:|---:|---:|---:|
    | ours | 43.5 | 2.17 | 1.00 | 780 |
    | nilearn | 22.2 | 1.11 | 0.51 | 260 |
    | fitlins-way | 25.2 | 1.26 | 0.58 | 720 |

    sub-01 faces-scrambled subject z, 1152 voxels (z range -3.65 .. 6.96):
    - ours vs nilearn multi-run FirstLevelModel: max |dz| = 2.23e-07 (tolerance 0.0001)
    - ours vs FitLins way (compute_fixed_effects, 100 dof per run): max |dz| = 8.13e-03
    - ours vs FitLins way with the fitted dof per run [98.0, 98.0]: max |dz| = 2.23e-07

(Before the run lookups and the graph were shared by the subjects of a
process, on a less loaded machine: ours 2.03 s per subject, nilearn 0.45
and FitLins way 0.48 of ours.) Ours is still about 2x slower, and not in
the statistics: CPU seconds per subject inside one process of 20 subjects,
PyBIDS' ``load_collections`` (once for all subjects) about 0.34 s, mostly
one ``DenseRunVariable`` per confounds column and the events
``get_nearest`` of each run; ``run_designs`` (the Run node's
transformations per run) about 0.25 s; ``find_runs`` about 0.01 s (one
query per scope for all subjects, was 0.25 s with 15 queries per run); the
two AR(1) fits and all contrasts about 0.3 s; writing 39 maps with
sidecars about 0.15 s; on top, 2-3 s once per process for imports and the
PyBIDS index. The maps-written column differs by design: ours
writes run and subject maps (+ sidecars and design TSVs), nilearn's
multi-run model only subject maps, the FitLins way run maps and the t
contrasts' subject maps (``compute_fixed_effects`` is not applied to the
F contrast here).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

TASK = "faces"
SPACE = "MNI152NLin2009cAsym"
CONFOUNDS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "framewise_displacement",
             *[f"a_comp_cor_{i:02d}" for i in range(6)]]
T_CONTRASTS = {"faces-scrambled": {"faces": 1, "scrambled": -1},
               "scrambled-faces": {"faces": -1, "scrambled": 1}}
F_CONTRAST = "effects_of_interest"
T_MAPS = {"effect_size": "effect", "effect_variance": "variance", "stat": "t", "z_score": "z", "p_value": "p"}
F_MAPS = {"stat": "F", "z_score": "z", "p_value": "p"}
METHODS = ("ours", "nilearn", "fitlins-way")
#: Largest |z(ours) - z(nilearn multi-run FirstLevelModel)| accepted (ours are written as float32).
Z_TOL = 1e-4


# --------------------------------------------------------------------------
# Shared helpers (the nilearn and FitLins-way cases)
# --------------------------------------------------------------------------
def contrast_matrices(columns):
    """The three contrasts as weight arrays over the design ``columns``."""
    eye = np.eye(len(columns))
    basic = {c: eye[i] for i, c in enumerate(columns)}
    out = {name: sum(w * basic[c] for c, w in weights.items()) for name, weights in T_CONTRASTS.items()}
    out[F_CONTRAST] = np.vstack([basic["faces"], basic["scrambled"]])
    return out


def select_confounds(table):
    """The model's confound columns of a confounds table, ``n/a`` set to 0 (as FitLins and ours)."""
    return table[CONFOUNDS].fillna(0.0)


def subject_mask(mask_files):
    """Intersection of a subject's run masks (what ours uses)."""
    from nilearn.masking import intersect_masks

    return intersect_masks([str(m) for m in mask_files], threshold=1, connected=False)


def save_contrast_maps(model, contrasts, folder, stem):
    """Compute and save each contrast's maps (13 in all); return the maps by contrast."""
    out = {}
    for name, weights in contrasts.items():
        imgs = model.compute_contrast(weights, output_type="all")
        keep = F_MAPS if np.ndim(weights) == 2 else T_MAPS
        out[name] = {}
        for key, label in keep.items():
            imgs[key].to_filename(folder / f"{stem}_contrast-{name}_stat-{label}_statmap.nii.gz")
            out[name][label] = imgs[key]
    return out


# --------------------------------------------------------------------------
# The three methods (each run in its own process by main)
# --------------------------------------------------------------------------
def run_ours(ds, out):
    """Our participant level, all subjects in one process (the console script)."""
    script = Path(sys.executable).with_name("bids_group_app")
    command = [str(script) if script.exists() else "bids_group_app", str(ds), str(out), "participant",
               "--model", str(ds / "models" / "model-faces_smdl.json"), "--no-reports", "--quiet"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=sys.stderr)


def run_nilearn(ds, out):
    """nilearn's way: first_level_from_bids, one two-run FirstLevelModel per subject."""
    from nilearn.glm.first_level import first_level_from_bids

    models, imgs, events, confounds = first_level_from_bids(
        str(ds), TASK, space_label=SPACE, derivatives_folder="derivatives/fmriprep",
        img_filters=[("desc", "preproc")], slice_time_ref=0.0, hrf_model="spm + derivative",
        drift_model="cosine", high_pass=0.01, noise_model="ar1", minimize_memory=True)
    for model, bolds, run_events, run_confounds in zip(models, imgs, events, confounds):
        sub = f"sub-{model.subject_label}"
        masks = [b.replace("desc-preproc_bold", "desc-brain_mask") for b in bolds]
        model.mask_img = subject_mask(masks)
        model.fit(bolds, events=run_events, confounds=[select_confounds(c) for c in run_confounds])
        folder = out / sub
        folder.mkdir(parents=True)
        save_contrast_maps(model, contrast_matrices(model.design_matrices_[0].columns), folder,
                           f"{sub}_task-{TASK}_space-{SPACE}")


def fitlins_run_design(events_file, confounds_file, n_volumes, tr):
    """One run's design as FitLins makes it with nilearn (events, selected confounds, cosine drift)."""
    import pandas as pd
    from nilearn.glm.first_level import make_first_level_design_matrix

    events = pd.read_csv(events_file, sep="\t")[["onset", "duration", "trial_type"]]
    confounds = select_confounds(pd.read_csv(confounds_file, sep="\t", na_values="n/a"))
    return make_first_level_design_matrix(
        np.arange(n_volumes) * tr, events, hrf_model="spm + derivative", drift_model="cosine",
        high_pass=0.01, add_regs=confounds.to_numpy(), add_reg_names=CONFOUNDS)


def fitlins_subject(ds, out, sub, tr):
    """The FitLins way for one subject: a model per run, then compute_fixed_effects per contrast."""
    import nibabel as nib
    from nilearn.glm import compute_fixed_effects
    from nilearn.glm.first_level import FirstLevelModel
    from scipy import stats

    func = ds / "derivatives" / "fmriprep" / sub / "func"
    bolds = sorted(func.glob(f"{sub}_task-{TASK}_run-*_space-{SPACE}_desc-preproc_bold.nii.gz"))
    masks = [Path(str(b).replace("desc-preproc_bold", "desc-brain_mask")) for b in bolds]
    folder = out / sub
    folder.mkdir(parents=True)
    run_maps = []
    for bold, mask in zip(bolds, masks):
        stem = bold.name.split("_space-")[0]
        design = fitlins_run_design(ds / sub / "func" / f"{stem}_events.tsv",
                                    func / f"{stem}_desc-confounds_timeseries.tsv", nib.load(bold).shape[3], tr)
        model = FirstLevelModel(t_r=tr, mask_img=str(mask), noise_model="ar1", minimize_memory=True)
        model.fit(str(bold), design_matrices=design)
        run_maps.append(save_contrast_maps(model, contrast_matrices(design.columns), folder,
                                           f"{stem}_space-{SPACE}"))
    mask = subject_mask(masks)
    for name in T_CONTRASTS:
        effect, variance, stat, z = compute_fixed_effects(
            [r[name]["effect"] for r in run_maps], [r[name]["variance"] for r in run_maps], mask)
        p = nib.Nifti1Image(stats.norm.sf(z.get_fdata()) * mask.get_fdata(), z.affine)
        for label, img in zip(("effect", "variance", "t", "z", "p"), (effect, variance, stat, z, p)):
            img.to_filename(folder / f"{sub}_task-{TASK}_space-{SPACE}_contrast-{name}_stat-{label}_statmap.nii.gz")


def run_fitlins_way(ds, out):
    """The FitLins way for every subject of the dataset."""
    tr = json.loads((ds / f"task-{TASK}_bold.json").read_text())["RepetitionTime"]
    for sub in sorted(p.name for p in (ds / "derivatives" / "fmriprep").glob("sub-*")):
        fitlins_subject(ds, out, sub, tr)


CASES = {"ours": run_ours, "nilearn": run_nilearn, "fitlins-way": run_fitlins_way}


# --------------------------------------------------------------------------
# Timing, checking, table
# --------------------------------------------------------------------------
def time_case(method, ds, out):
    """Wall-clock seconds of one method in a fresh process writing into ``out``."""
    command = [sys.executable, __file__, "--case", method, "--ds", str(ds), "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{method} failed:\n{done.stderr}")
    return seconds


def count_maps(folder):
    """Number of NIfTI maps written under ``folder``."""
    return sum(1 for _ in Path(folder).rglob("*.nii.gz"))


def masked(path, mask):
    """Values of a map inside a boolean mask."""
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj, dtype=float)[mask]


def check_sub01(ds, outs):
    """Compare the three sub-01 faces-scrambled subject z maps; return (lines, ours==nilearn)."""
    import nibabel as nib
    from nilearn.glm import compute_fixed_effects

    func = ds / "derivatives" / "fmriprep" / "sub-01" / "func"
    masks = sorted(func.glob("*_desc-brain_mask.nii.gz"))
    mask_img = subject_mask(masks)
    mask = mask_img.get_fdata().astype(bool)
    stem = f"sub-01_task-{TASK}_space-{SPACE}"
    ours_file = outs["ours"] / "node-subject" / "sub-01" / f"{stem}_contrast-facesScrambled_stat-z_statmap.nii.gz"
    ours = masked(ours_file, mask)
    nilearn = masked(outs["nilearn"] / "sub-01" / f"{stem}_contrast-faces-scrambled_stat-z_statmap.nii.gz", mask)
    fitlins = masked(outs["fitlins-way"] / "sub-01" / f"{stem}_contrast-faces-scrambled_stat-z_statmap.nii.gz",
                     mask)
    # The FitLins way again, with the fitted residual dof of each run (from our run sidecars).
    runs = sorted((outs["fitlins-way"] / "sub-01").glob("*_run-*_contrast-faces-scrambled_stat-effect_statmap.nii.gz"))
    sidecars = sorted((outs["ours"] / "node-run" / "sub-01").glob("*_contrast-facesScrambled_stat-t_statmap.json"))
    dofs = [json.loads(s.read_text())["DegreesOfFreedom"] for s in sidecars]
    variances = [str(r).replace("stat-effect", "stat-variance") for r in runs]
    _, _, _, z_dof = compute_fixed_effects([str(r) for r in runs], variances, mask_img, dofs=dofs)
    fitted = np.asarray(z_dof.dataobj, dtype=float)[mask]
    d_nilearn = np.abs(ours - nilearn).max()
    lines = [
        f"sub-01 faces-scrambled subject z, {mask.sum()} voxels (z range {ours.min():.2f} .. {ours.max():.2f}):",
        f"- ours vs nilearn multi-run FirstLevelModel: max |dz| = {d_nilearn:.2e} (tolerance {Z_TOL:g})",
        f"- ours vs FitLins way (compute_fixed_effects, 100 dof per run): max |dz| = "
        f"{np.abs(ours - fitlins).max():.2e}",
        f"- ours vs FitLins way with the fitted dof per run {dofs}: max |dz| = {np.abs(ours - fitted).max():.2e}",
    ]
    return lines, bool(d_nilearn <= Z_TOL)


def table(times, n_subjects, n_maps):
    """Markdown table: method, best total s, s per subject, ratio to ours, maps written."""
    rows = ["| method | total s | s per subject | ratio to ours | maps written |", "|---|---:|---:|---:|---:|"]
    for method in METHODS:
        best = min(times[method])
        rows.append(f"| {method} | {best:.1f} | {best / n_subjects:.2f} | {best / min(times['ours']):.2f} | "
                    f"{n_maps[method]} |")
    return "\n".join(rows)


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=20, help="subjects (2 runs each; default 20)")
    parser.add_argument("--volumes", type=int, default=120, help="volumes per run (default 120)")
    parser.add_argument("--repeats", type=int, default=2, help="timings per method; the best is shown (default 2)")
    parser.add_argument("--case", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--ds", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    """Make the dataset, time the three methods side by side, check sub-01, print the table."""
    args = parse_args(argv)
    if args.case:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CASES[args.case](args.ds, args.out)
        return 0
    from bids_group_app.example_data import make_example_dataset

    with tempfile.TemporaryDirectory(prefix="bench_participant_") as tmp:
        ds = Path(tmp) / "ds"
        make_example_dataset(ds, "fmriprep", n_subjects=args.subjects, n_runs=2, n_volumes=args.volumes,
                             extra_participant=False)
        times, outs = {m: [] for m in METHODS}, {}
        for repeat in range(args.repeats):
            for method in METHODS:  # interleaved, so load on the machine hits every method alike
                out = Path(tmp) / f"{method}-{repeat}"
                if method in outs:
                    shutil.rmtree(outs[method])
                times[method].append(time_case(method, ds, out))
                outs[method] = out
                print(f"repeat {repeat + 1}: {method} {times[method][-1]:.1f} s", file=sys.stderr)
        n_maps = {m: count_maps(outs[m]) for m in METHODS}
        lines, ok = check_sub01(ds, outs)
        print(f"{args.subjects} subjects x 2 runs x {args.volumes} volumes, best of {args.repeats}:\n")
        print(table(times, args.subjects, n_maps))
        print()
        print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
