"""Hash every map that a fixed set of runs writes, to check that a refactoring
changes no result (bit for bit).

    python scripts/map_hashes.py record FILE     # before the change
    python scripts/map_hashes.py compare FILE    # after: exit 1 on any difference

The runs cover each example layout and each inference family (parametric,
voxel max-T, TFCE, cluster size/mass, sign-flips and permutations, blocks). A map is
identified by its run and its file name with the model key removed (the
output naming scheme may add it), and compared by the SHA-256 of its voxel
data (the header's description/extension bytes are not results).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

RUNS = {
    "nilearn-onesample-tfce": ("nilearn", ["--two-sided", "--n-perm", "200", "--tfce"]),
    "nilearn-clusters": ("nilearn", ["--two-sided", "--n-perm", "200", "--cluster-forming-p", "0.01",
                                     "--connectivity", "26"]),
    "fitlins-onesample": ("fitlins", ["--two-sided", "--height-control", "fdr", "--alpha", "0.05"]),
    "vbm-regression-maxt": ("vbm", ["--two-sided", "--covariates", "age", "sex", "--demean", "--n-perm", "300",
                                    "--contrast", "age=0,1,0", "--contrast", "sexM=0,0,1"]),
    "seed004-rmanova": ("seed004", ["--two-sided", "--rm-anova", "desc", "--n-perm", "200",
                                    "--contrast", "main=F:1,-1,0;0,1,-1"]),
    "vbm-twosample": ("vbm", ["--two-sided", "--two-sample", "sex", "--n-perm", "100"]),
}


def _key(run, path, root):
    rel = str(path.relative_to(root))
    rel = re.sub(r"(^|/)model-[A-Za-z0-9]+_", r"\1", rel)  # a model key, if the naming scheme adds one
    rel = re.sub(r"^model-[A-Za-z0-9]+/", "", rel)
    return f"{run}/{rel}"


def _digest(path):
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    h = hashlib.sha256(data.tobytes())
    h.update(str(data.dtype).encode() + str(data.shape).encode())
    h.update(np.asarray(img.affine, dtype=np.float64).tobytes())
    return h.hexdigest()


def hashes():
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        datasets = {}
        for run, (layout, args) in RUNS.items():
            if layout not in datasets:
                datasets[layout] = tmp / f"ds-{layout}"
                subprocess.run(["bids_group_app_make_example", str(datasets[layout]), "--layout", layout],
                               check=True, capture_output=True)
            dest = tmp / f"out-{run}"
            proc = subprocess.run(["bids_group_app", str(datasets[layout]), str(dest), "group", "--no-reports",
                                   "--quiet", *args], capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"run {run} failed: {proc.stderr}")
            for path in sorted(dest.rglob("*.nii.gz")):
                out[_key(run, path, dest)] = _digest(path)
    return out


def main(argv):
    action, file = argv
    if action == "record":
        result = hashes()
        Path(file).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(result)} maps in {file}")
        return 0
    before = json.loads(Path(file).read_text())
    after = hashes()
    missing = sorted(set(before) - set(after))
    extra = sorted(set(after) - set(before))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    for label, keys in (("missing", missing), ("new", extra), ("changed", changed)):
        for k in keys:
            print(f"{label}: {k}")
    print(f"{len(before)} maps before, {len(after)} after: {len(changed)} changed, {len(missing)} missing, {len(extra)} new")
    return 1 if (missing or changed) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
