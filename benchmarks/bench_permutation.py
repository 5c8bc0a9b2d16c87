"""Benchmark: our permutation engine vs nilearn's non_parametric_inference.

Run by hand (not a test: timings on shared machines are noisy)::

    python benchmarks/bench_permutation.py            # full run, a few minutes
    python benchmarks/bench_permutation.py --quick    # smaller, for a smoke check

Both tools get identical inputs: 50 subjects of smoothed Gaussian noise with
a planted effect on nilearn's MNI152 2 mm brain mask (about 235,000 voxels,
shipped with nilearn, no download), a one-sample design, one-sided tests,
2 CPUs each (our threads, nilearn's n_jobs=2). Each case runs in a fresh
process so its peak memory (max RSS, including child processes) is its
own. nilearn is run with fewer permutations and compared per permutation:
its time is measured at two permutation counts and the slope is used, so
its fixed set-up cost (masking, fitting) is not charged to it; ours is
charged in full (one run, set-up and GLM included).

Rows: (i) voxel-level max-T; (ii) cluster size + mass at p < 0.001 (with
max-T); (iii) TFCE (with max-T).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_SUBJECTS = 50
CPUS = 2


def make_data(folder, seed=0):
    """Write the shared inputs: data matrix, mask and 4-D image."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask
    from scipy import ndimage

    mask_img = load_mni152_brain_mask(resolution=2)
    mask = np.asarray(mask_img.dataobj).astype(bool)
    rng = np.random.default_rng(seed)
    centre = np.array([30, 40, 45])
    grid = np.indices(mask.shape).reshape(3, -1).T
    blob = np.exp(-np.sum((grid - centre) ** 2, axis=1) / (2 * 3.0 ** 2)).reshape(mask.shape)
    volumes = np.empty(mask.shape + (N_SUBJECTS,), dtype=np.float32)
    for i in range(N_SUBJECTS):
        noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.5)
        volumes[..., i] = (noise / noise[mask].std() + 0.8 * blob) * mask
    np.save(folder / "Y.npy", np.ascontiguousarray(volumes[mask].T))
    np.save(folder / "mask.npy", mask)
    nib.save(nib.Nifti1Image(volumes, mask_img.affine), str(folder / "data.nii.gz"))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), mask_img.affine), str(folder / "mask.nii.gz"))
    return int(mask.sum())


def _tree_rss_kb(root):
    """Resident memory of a process and all its descendants (from /proc)."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/status") as stream:
                kb = next((int(line.split()[1]) for line in stream if line.startswith("VmRSS:")), 0)
        except (OSError, StopIteration, IndexError, ValueError):
            continue
        parents[int(entry)] = int(fields[1])
        rss[int(entry)] = kb
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(child for child, parent in parents.items() if parent == pid)
    return total


class PeakMemory:
    """Samples the RSS of this process tree (nilearn's workers included) every 20 ms."""

    def __enter__(self):
        import threading

        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_kb(os.getpid()))
            self._stop.wait(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_rss_kb(os.getpid()))

    @property
    def mb(self):
        return self.peak / 1024.0


def run_ours(folder, kind, n_perm):
    """One timed run of our engine; prints JSON."""
    from bids_group_app.stats.permutation import ContrastTest, Settings, p_values
    from bids_group_app.stats.shuffling import make_shufflings
    from bids_group_app.stats.geometry import MaskGeometry

    Y = np.load(folder / "Y.npy")
    mask = np.load(folder / "mask.npy")
    X = np.ones((len(Y), 1))
    settings = Settings(tfce=kind == "tfce", cluster_forming_p=0.001 if kind == "cluster" else None, n_jobs=CPUS)
    baseline = _tree_rss_kb(os.getpid()) / 1024.0
    with PeakMemory() as memory:
        start = time.perf_counter()
        shufflings = make_shufflings(X, "signflip", n_perm, seed=0)
        test = ContrastTest(Y, X, [1.0], "t", MaskGeometry(mask), shufflings, settings)
        null = test.null()
        p = p_values(test, null)
        seconds = time.perf_counter() - start
    # the engine's own allocations (numpy, traced), on a short run of the same kind
    import tracemalloc

    tracemalloc.start()
    short = make_shufflings(X, "signflip", 4 * settings.batch_size, seed=1)
    traced_test = ContrastTest(Y, X, [1.0], "t", MaskGeometry(mask), short, settings)
    p_values(traced_test, traced_test.null())
    traced = tracemalloc.get_traced_memory()[1] / Y.nbytes
    tracemalloc.stop()
    print(json.dumps({"seconds": seconds, "n_perm": n_perm, "peak_mb": memory.mb, "extra_mb": memory.mb - baseline,
                      "traced_ratio": traced,
                      "data_mb": Y.nbytes / 2**20, "min_fwe_p": float(p["pmaxt"].min())}))


def run_nilearn(folder, kind, n_perm):
    """One timed run of nilearn's non_parametric_inference; prints JSON."""
    import warnings

    import nibabel as nib
    import pandas as pd
    from nilearn.glm.second_level import non_parametric_inference

    warnings.filterwarnings("ignore")
    from nilearn.image import iter_img

    img = nib.load(str(folder / "data.nii.gz"))
    img = list(iter_img(nib.Nifti1Image(np.asarray(img.dataobj), img.affine)))  # decompressed before timing
    mask = nib.load(str(folder / "mask.nii.gz"))
    design = pd.DataFrame({"intercept": np.ones(N_SUBJECTS)})
    baseline = _tree_rss_kb(os.getpid()) / 1024.0
    with PeakMemory() as memory:
        start = time.perf_counter()
        non_parametric_inference(
            img, design_matrix=design, mask=mask, n_perm=n_perm, two_sided_test=False, random_state=0,
            n_jobs=CPUS, threshold=0.001 if kind == "cluster" else None, tfce=kind == "tfce",
        )
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "n_perm": n_perm, "peak_mb": memory.mb, "extra_mb": memory.mb - baseline}))


def _subprocess(tool, folder, kind, n_perm):
    out = subprocess.run([sys.executable, __file__, "--worker", tool, str(folder), kind, str(n_perm)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer permutations (smoke check)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        tool, folder, kind, n_perm = args.worker
        (run_ours if tool == "ours" else run_nilearn)(Path(folder), kind, int(n_perm))
        return 0

    plan = {  # kind: (our n_perm, nilearn n_perm low, nilearn n_perm high)
        "maxt": (10000, 100, 300),
        "cluster": (2000, 50, 150),
        "tfce": (1000, 4, 14),
    }
    if args.quick:
        plan = {"maxt": (2000, 20, 60), "cluster": (300, 10, 30), "tfce": (100, 1, 3)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n_vox = make_data(folder)
        print(f"{N_SUBJECTS} subjects, {n_vox} voxels (MNI152 2 mm brain mask), one-sample, {CPUS} CPUs each\n")
        rows = []
        for kind, (ours_n, lo, hi) in plan.items():
            ours = _subprocess("ours", folder, kind, ours_n)
            nl_lo = _subprocess("nilearn", folder, kind, lo)
            nl_hi = _subprocess("nilearn", folder, kind, hi)
            slope = (nl_hi["seconds"] - nl_lo["seconds"]) / (hi - lo)
            ours_per = ours["seconds"] / ours_n
            rows.append((kind, ours, ours_per, slope, max(nl_lo["peak_mb"], nl_hi["peak_mb"]), (lo, hi)))
        header = (f"{'inference':<22}{'ours s/1000':>12}{'nilearn s/1000':>16}{'speed-up':>10}"
                  f"{'ours peak MB':>14}{'nilearn peak MB':>17}{'ours n_perm':>13}{'nilearn n_perm':>16}")
        print(header)
        print("-" * len(header))
        names = {"maxt": "(i) voxel max-T", "cluster": "(ii) cluster size+mass", "tfce": "(iii) TFCE"}
        for kind, ours, ours_per, slope, nl_peak, (lo, hi) in rows:
            print(f"{names[kind]:<22}{ours_per * 1000:>12.2f}{slope * 1000:>16.1f}{slope / ours_per:>9.0f}x"
                  f"{ours['peak_mb']:>14.0f}{nl_peak:>17.0f}{ours['n_perm']:>13}{f'{lo}/{hi}':>16}")
        maxt = rows[0]
        tfce = rows[2]
        print()
        print(f"targets: voxel max-T 10,000 permutations <= 15 s: {maxt[2] * 10000:.1f} s; "
              f"TFCE <= 50 ms per permutation (GLM included): {tfce[2] * 1000:.1f} ms; "
              f">= 25x nilearn on every row: {min(r[3] / r[2] for r in rows):.0f}x minimum")
        print(f"data matrix (float32): {maxt[1]['data_mb']:.0f} MB; peak memory allocated by our engine "
              "(traced: its float32 residual copy included, the input data not) / data matrix: "
              + ", ".join(f"{names[r[0]]} {r[1]['traced_ratio']:.1f}x" for r in rows) + " (target <= 3x)")
    return 0


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    raise SystemExit(main())
