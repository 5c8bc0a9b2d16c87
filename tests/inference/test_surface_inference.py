"""Surface thresholds and cluster tables: nilearn's thresholds, brute-force clusters on a mesh."""

import warnings

import nibabel as nib
import numpy as np
import pytest
from nilearn.glm import threshold_stats_img

from bids_group_app.inference.surface import cluster_table, height_threshold, threshold_values
from bids_group_app.stats.geometry import AdjacencyGeometry


def grid_mesh(n):
    """An n x n grid of vertices (1 mm apart) triangulated: faces, coordinates, adjacency."""
    from scipy import sparse

    idx = np.arange(n * n).reshape(n, n)
    faces = np.concatenate([np.stack([idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[:-1, 1:].ravel()], 1),
                            np.stack([idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()], 1)])
    coords = np.stack([*np.divmod(np.arange(n * n), n), np.zeros(n * n)], 1).astype(float)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [0, 2]]])
    adjacency = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n * n, n * n))
    return faces, coords, ((adjacency + adjacency.T) > 0).tocsr()


def brute_components(keep, faces):
    """Connected components of the kept vertices by repeated edge relaxation (no graph library)."""
    label = np.where(keep, np.arange(keep.size), -1)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [0, 2]]])
    edges = edges[keep[edges[:, 0]] & keep[edges[:, 1]]]
    changed = True
    while changed:
        low = np.minimum(label[edges[:, 0]], label[edges[:, 1]])
        changed = bool((label[edges[:, 0]] != low).any() or (label[edges[:, 1]] != low).any())
        label[edges[:, 0]] = np.minimum(label[edges[:, 0]], low)
        label[edges[:, 1]] = np.minimum(label[edges[:, 1]], low)
    return {frozenset(np.flatnonzero(label == v)) for v in np.unique(label[keep])}


@pytest.mark.parametrize("height_control", ["fpr", "fdr", "bonferroni"])
@pytest.mark.parametrize("two_sided", [False, True])
def test_height_threshold_equals_nilearn_threshold_stats_img(height_control, two_sided):
    rng = np.random.default_rng(0)
    z = rng.normal(size=500)
    z[:40] += 4
    z[40:60] -= 4
    img = nib.Nifti1Image(z.reshape(10, 10, 5).astype(np.float64), np.eye(4))
    mask = nib.Nifti1Image(np.ones((10, 10, 5), np.uint8), np.eye(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, expected = threshold_stats_img(img, mask_img=mask, alpha=0.01, height_control=height_control,
                                          two_sided=two_sided)
    assert height_threshold(z, height_control, 0.01, two_sided) == pytest.approx(float(expected), rel=1e-12)


def test_threshold_values_and_cluster_table_match_brute_force_on_a_mesh():
    faces, coords, adjacency = grid_mesh(12)
    rng = np.random.default_rng(1)
    values = rng.normal(size=144)
    values[[0, 1, 12, 13, 14]] = [5, 4, 4.5, 3.5, 4]  # a positive cluster of 5 in a corner
    values[[100, 101]] = [-6, -5]  # a negative cluster of 2
    area = rng.uniform(0.5, 1.5, size=144)
    geometry = AdjacencyGeometry(adjacency, element_size=area)
    out = threshold_values(values, 3.0, geometry, two_sided=True, cluster_threshold=2)
    expected = set()
    for sign in (1, -1):
        for comp in brute_components(values * sign >= 3.0, faces):
            if len(comp) >= 2:
                expected |= comp
    assert set(np.flatnonzero(out)) == expected and expected >= {0, 1, 12, 13, 14, 100, 101}
    np.testing.assert_array_equal(out[sorted(expected)], values[sorted(expected)])
    import pandas as pd

    elements = pd.DataFrame({"structure": "CORTEX_LEFT", "index": np.arange(144), "x": coords[:, 0],
                             "y": coords[:, 1], "z": coords[:, 2], "unit": "mm2"})
    table = cluster_table(out, geometry, elements, labels=[f"r{i % 3}" for i in range(144)])
    comps = [c for s in (1, -1) for c in brute_components(out * s > 0, faces)]
    assert len(table) == len(comps)
    assert table["Peak Stat"].iloc[0] > 0 and table["Peak Stat"].iloc[-1] < 0  # positive tail first
    for _, row in table.iterrows():
        comp = next(c for c in comps if row["Peak Element"] in c)
        assert row["Cluster Size (elements)"] == len(comp)
        assert row["Cluster Extent"] == pytest.approx(area[sorted(comp)].sum())
        assert abs(row["Peak Stat"]) == pytest.approx(np.abs(out[sorted(comp)]).max())
        assert row["Peak Label"] == f"r{row['Peak Element'] % 3}" and row["Extent Unit"] == "mm2"


def test_fdr_that_rejects_nothing_keeps_nothing():
    z = np.random.default_rng(2).normal(size=200)
    threshold = height_threshold(z, "fdr", 0.0001, False)
    assert np.isinf(threshold)
    _, _, adjacency = grid_mesh(10)
    kept = threshold_values(z[:100], threshold, AdjacencyGeometry(adjacency), two_sided=False)
    assert not kept.any()
