"""Benchmark: connected components of supra-threshold voxels, two implementations.

Run by hand (not a test: timings on shared machines are noisy)::

    python benchmarks/bench_components.py             # a minute or two
    python benchmarks/bench_components.py --repeats 3 # quicker

Both implementations take the same edges: the pairs of supra-threshold
voxels that the mask geometry's neighbour table joins. They differ only in
how the components of that graph are found:

* ``union-find``: vectorised hooking and pointer jumping in numpy, labels
  by ``np.unique`` of the roots (the implementation this package used
  before; kept here only for this comparison);
* ``csgraph``: :func:`scipy.sparse.csgraph.connected_components` on the
  sparse graph of those edges (what :class:`VolumeGeometry` uses now,
  because it was as fast or faster in every cell of this benchmark).

Data: nilearn's MNI152 2 mm brain mask (shipped with nilearn, no download),
smooth Gaussian random maps (FWHM about 3.5 voxels), thresholds at the
quantiles that leave 1 %, 10 % and 30 % of the voxels above them, with 6-
and 26-connectivity. Each cell is the median over maps and repeats of the
time of one call; both implementations are checked to give the same
labels.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from bids_group_app.stats.geometry import VolumeGeometry, _graph_components

FRACTIONS = (0.01, 0.10, 0.30)


def supra_edges(values, threshold, geometry):
    """Members (masked indices) above threshold and the edges joining them (member positions)."""
    supra = values > threshold
    members = np.flatnonzero(supra)
    neighbours = geometry.forward_neighbours[members]
    valid = neighbours >= 0
    valid[valid] = supra[neighbours[valid]]
    a = np.broadcast_to(np.arange(members.size)[:, None], neighbours.shape)[valid]
    b = np.searchsorted(members, neighbours[valid])
    return members, a, b


def union_find_labels(n, a, b):
    """Component labels (ordered by smallest member) by vectorised union-find."""
    parent = np.arange(n)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        lo, hi = np.minimum(ra[differ], rb[differ]), np.maximum(ra[differ], rb[differ])
        parent[hi] = lo
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    _, labels = np.unique(parent, return_inverse=True)
    return labels.ravel()


def csgraph_labels(n, a, b):
    """Component labels (ordered by smallest member) by scipy's connected_components (as the package)."""
    return _graph_components(n, a, b)[0]


IMPLEMENTATIONS = {"union-find": union_find_labels, "csgraph": csgraph_labels}


def smooth_maps(mask, n_maps, seed=0):
    """Masked smooth Gaussian maps (n_maps, v), unit variance."""
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n_maps):
        volume = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.5)
        values = volume[mask]
        maps.append((values / values.std()).astype(np.float32))
    return np.array(maps)


def time_cell(maps, fraction, geometry, repeats):
    """Median seconds per call of each implementation, the edge building included."""
    times = {name: [] for name in IMPLEMENTATIONS}
    sizes = []
    for values in maps:
        threshold = float(np.quantile(values, 1.0 - fraction))
        reference = None
        for _ in range(repeats):
            for name, labels_of in IMPLEMENTATIONS.items():
                start = time.perf_counter()
                members, a, b = supra_edges(values, threshold, geometry)
                labels = labels_of(members.size, a, b)
                times[name].append(time.perf_counter() - start)
                if reference is None:
                    reference = labels
                elif not np.array_equal(labels, reference):
                    raise AssertionError(f"{name} labels differ at {fraction:.0%}")
        sizes.append((members.size, int(reference.max()) + 1))
    return {name: float(np.median(t)) for name, t in times.items()}, sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", type=int, default=5, help="random maps per cell (default 5)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per map and implementation (default 7)")
    args = parser.parse_args(argv)

    from nilearn.datasets import load_mni152_brain_mask

    mask = np.asarray(load_mni152_brain_mask(resolution=2).dataobj).astype(bool)
    maps = smooth_maps(mask, args.maps)
    print(f"MNI152 2 mm brain mask: {int(mask.sum())} voxels; {args.maps} maps x {args.repeats} repeats; "
          "median ms per call (edges included)\n")
    header = f"{'connectivity':>12}{'supra':>7}{'voxels':>9}{'clusters':>10}" + "".join(
        f"{name + ' ms':>16}" for name in IMPLEMENTATIONS) + f"{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for connectivity in (6, 26):
        geometry = VolumeGeometry(mask, connectivity)
        geometry.forward_neighbours  # built once, outside the timings
        for fraction in FRACTIONS:
            medians, sizes = time_cell(maps, fraction, geometry, args.repeats)
            n_vox = int(np.median([s[0] for s in sizes]))
            n_clusters = int(np.median([s[1] for s in sizes]))
            ratio = medians["csgraph"] / medians["union-find"]
            print(f"{connectivity:>12}{fraction:>7.0%}{n_vox:>9}{n_clusters:>10}"
                  + "".join(f"{medians[name] * 1000:>16.2f}" for name in IMPLEMENTATIONS) + f"{ratio:>8.2f}")
    print("\nratio: csgraph / union-find time (< 1: csgraph faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
