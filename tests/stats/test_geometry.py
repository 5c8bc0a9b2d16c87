"""The geometry seam (clusters, extents, TFCE) checked against brute force.

References, written out here in plain Python/numpy:

* connected components by breadth-first search over an explicit neighbour
  list, and :func:`scipy.ndimage.label` for volumes;
* TFCE of a graph as the exact integral ``Σ_k e_k^E (h_{k+1}^{H+1} -
  h_k^{H+1}) / (H + 1)`` over the intervals between the distinct map values
  below an element's own value, ``e_k`` the number of elements connected
  to it above ``h_k`` (found by the breadth-first search).

The engine is also run on a geometry that is not a volume, to show it
reaches neighbourhoods only through the seam.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from scipy import ndimage, sparse

from bids_group_app.stats.geometry import (AdjacencyGeometry, Geometry, VolumeGeometry, cluster_measures,
                                           max_cluster_measures, tfce_volumes)
from bids_group_app.stats.permutation import ContrastTest, Settings
from bids_group_app.stats.shuffling import make_shufflings

RANK = {6: 1, 18: 2, 26: 3}


# --------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------
def neighbour_lists(adjacency):
    """Neighbours of each element, as Python lists."""
    dense = np.asarray(adjacency.todense() if sparse.issparse(adjacency) else adjacency, dtype=bool)
    return [[j for j in np.flatnonzero(row) if j != i] for i, row in enumerate(dense)]


def bfs_partition(inside, neighbours):
    """Components of the elements where ``inside`` is True: a set of frozensets."""
    seen, parts = set(), set()
    for start in np.flatnonzero(inside):
        if start in seen:
            continue
        part, queue = {start}, deque([start])
        while queue:
            i = queue.popleft()
            for j in neighbours[i]:
                if inside[j] and j not in part:
                    part.add(j)
                    queue.append(j)
        seen |= part
        parts.add(frozenset(int(i) for i in part))
    return parts


def partition_of(members, labels):
    """The components returned by a geometry, as a set of frozensets."""
    return {frozenset(int(m) for m in members[labels == k]) for k in np.unique(labels)}


def tfce_brute_force(values, neighbours, E, H):
    """Exact one-sided TFCE of a graph map (positive part) by breadth-first search."""
    values = np.asarray(values, dtype=np.float64)
    heights = np.concatenate([[0.0], np.unique(values[values > 0])])
    out = np.zeros(values.size)
    for i in np.flatnonzero(values > 0):
        for lo, hi in zip(heights, heights[1:]):
            if hi > values[i]:
                break
            inside = values > lo
            extent = next(len(p) for p in bfs_partition(inside, neighbours) if i in p)
            out[i] += extent ** E * (hi ** (H + 1) - lo ** (H + 1)) / (H + 1)
    return out


def random_graph(n, p, seed):
    """A symmetric random adjacency (scipy sparse) with a few isolated elements."""
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.random((n, n)) < p, 1)
    return sparse.csr_matrix(upper | upper.T)


def grid_adjacency(mask, connectivity):
    """Adjacency of the voxels of a mask (masked order) by explicit offsets."""
    coords = np.argwhere(mask)
    index = {tuple(c): k for k, c in enumerate(coords)}
    offsets = np.argwhere(ndimage.generate_binary_structure(3, RANK[connectivity])) - 1
    rows, cols = [], []
    for k, c in enumerate(coords):
        for o in offsets:
            j = index.get(tuple(c + o))
            if j is not None and j != k:
                rows.append(k)
                cols.append(j)
    n = len(coords)
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))


def smooth_volume_map(shape, seed):
    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
    return (volume / volume.std()).astype(np.float32)


def odd_mask(shape, seed):
    """A mask with holes, so the bounding box and the neighbour table matter."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.85
    mask[0] = False
    return mask


# --------------------------------------------------------------------------
# The seam
# --------------------------------------------------------------------------
def test_geometries_implement_the_seam():
    mask = odd_mask((5, 6, 7), 0)
    volume = VolumeGeometry(mask, 18)
    graph = AdjacencyGeometry(random_graph(30, 0.1, 0))
    for geometry, n in ((volume, int(mask.sum())), (graph, 30)):
        assert isinstance(geometry, Geometry)
        assert geometry.n_elements == n


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_volume_components_match_ndimage_label(connectivity):
    shape = (9, 10, 11)
    mask = odd_mask(shape, 1)
    volume = smooth_volume_map(shape, 2)
    geometry = VolumeGeometry(mask, connectivity)
    values = volume[mask]
    for sign, threshold in ((1, 0.5), (1, 1.5), (-1, 0.8), (1, 99.0)):
        members, labels, count = geometry.components(values, threshold, sign)
        inside = np.zeros(shape, dtype=bool)
        inside[mask] = sign * values > threshold
        reference, k = ndimage.label(inside, ndimage.generate_binary_structure(3, RANK[connectivity]))
        reference = reference[mask]
        assert count == k
        assert np.array_equal(members, np.flatnonzero(reference))
        assert np.array_equal(labels + 1, reference[members])      # both numbered in scan order
        assert np.array_equal(geometry.extent(members, labels, count), np.bincount(reference)[1:])


def test_adjacency_components_and_extent_match_breadth_first_search():
    n = 60
    adjacency = random_graph(n, 0.04, 3)
    neighbours = neighbour_lists(adjacency)
    rng = np.random.default_rng(4)
    values = rng.normal(size=n)
    area = rng.uniform(0.5, 2.0, size=n)
    counted, weighted = AdjacencyGeometry(adjacency), AdjacencyGeometry(adjacency, element_size=area)
    for sign, threshold in ((1, 0.0), (1, 1.0), (-1, 0.3), (1, 9.0)):
        inside = sign * values > threshold
        reference = bfs_partition(inside, neighbours)
        members, labels, count = counted.components(values, threshold, sign)
        assert count == len(reference) and partition_of(members, labels) == reference
        firsts = [members[labels == k].min() for k in range(count)]
        assert firsts == sorted(firsts)                             # numbered by first member
        sizes = counted.extent(members, labels, count)
        areas = weighted.extent(members, labels, count)
        for k in range(count):
            part = members[labels == k]
            assert sizes[k] == len(part)
            assert areas[k] == pytest.approx(area[part].sum(), rel=1e-12)


def test_adjacency_refuses_bad_input():
    with pytest.raises(ValueError, match="symmetric"):
        AdjacencyGeometry(sparse.csr_matrix(np.triu(np.ones((4, 4)), 1)))
    with pytest.raises(ValueError, match="square"):
        AdjacencyGeometry(sparse.csr_matrix(np.ones((3, 4))))
    with pytest.raises(ValueError, match="element_size"):
        AdjacencyGeometry(random_graph(5, 0.5, 0), element_size=np.ones(4))


@pytest.mark.parametrize("E,H", [(0.5, 2.0), (1.0, 2.0), (2.0 / 3, 1.0)])
def test_adjacency_tfce_matches_exact_brute_force(E, H):
    n = 40
    adjacency = random_graph(n, 0.06, 5)
    neighbours = neighbour_lists(adjacency)
    rng = np.random.default_rng(6)
    values = rng.normal(size=(3, n)).astype(np.float32)
    geometry = AdjacencyGeometry(adjacency)
    one_sided = geometry.tfce(values, E, H, False)
    two_sided = geometry.tfce(values, E, H, True)
    assert one_sided.shape == values.shape and geometry.tfce(values[0], E, H, False).shape == (n,)
    for row, one, two in zip(values, one_sided, two_sided):
        positive = tfce_brute_force(row, neighbours, E, H)
        negative = tfce_brute_force(-row, neighbours, E, H)
        np.testing.assert_allclose(one, positive, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(two, positive - negative, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("connectivity", [6, 26])
def test_volume_and_grid_graph_agree(connectivity):
    shape = (8, 9, 7)
    mask = odd_mask(shape, 7)
    values = np.stack([smooth_volume_map(shape, s)[mask] for s in (8, 9)])
    volume = VolumeGeometry(mask, connectivity)
    graph = AdjacencyGeometry(grid_adjacency(mask, connectivity))
    for sign, threshold in ((1, 0.7), (-1, 0.4)):
        for geometry_a, geometry_b in ((volume, graph),):
            a = geometry_a.components(values[0], threshold, sign)
            b = geometry_b.components(values[0], threshold, sign)
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for two_sided in (False, True):
        np.testing.assert_allclose(volume.tfce(values, 0.5, 2.0, two_sided), graph.tfce(values, 0.5, 2.0, two_sided),
                                   rtol=1e-5, atol=1e-6)
        for row in values:
            ref = cluster_measures(row, 0.6, volume, two_sided)
            got = cluster_measures(row, 0.6, graph, two_sided)
            assert np.array_equal(ref[0], got[0]) and ref[1] == got[1] and ref[2] == got[2]


def test_volume_tfce_equals_tfce_of_the_whole_image():
    shape = (10, 9, 8)
    mask = odd_mask(shape, 10)
    mask[:, :2] = False                                       # a bounding box smaller than the image
    volume = smooth_volume_map(shape, 11) * mask
    geometry = VolumeGeometry(mask, 26)
    for two_sided in (False, True):
        whole = tfce_volumes(volume, 26, 0.5, 2.0, two_sided)[mask]
        np.testing.assert_allclose(geometry.tfce(volume[mask], 0.5, 2.0, two_sided), whole, rtol=1e-6, atol=1e-7)


def test_max_cluster_measures_use_element_sizes():
    # a path 0-1-2 and a pair 3-4: sizes 3 and 2 by count, 1.5 and 7.0 by area
    adjacency = sparse.csr_matrix((np.ones(6), ([0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3])), shape=(5, 5))
    values = np.array([2.0, 3.0, 2.5, 4.0, 2.2])
    counted = max_cluster_measures(values, 1.0, AdjacencyGeometry(adjacency), False)
    weighted = max_cluster_measures(values, 1.0, AdjacencyGeometry(adjacency, element_size=[0.5] * 3 + [3.5] * 2), False)
    assert counted == (3, pytest.approx(4.5)) and weighted == (pytest.approx(7.0), pytest.approx(4.5))
    labels, sizes, masses = cluster_measures(values, 1.0, AdjacencyGeometry(adjacency), False)
    assert list(labels) == [1, 1, 1, 2, 2] and sizes == {1: 3, 2: 2} and masses == pytest.approx({1: 4.5, 2: 4.2})


# --------------------------------------------------------------------------
# The engine through the seam
# --------------------------------------------------------------------------
def _engine_problem(shape=(7, 8, 6), n=10, seed=12):
    rng = np.random.default_rng(seed)
    mask = odd_mask(shape, seed)
    vol = ndimage.gaussian_filter(rng.normal(size=(n,) + shape), sigma=(0, 1.0, 1.0, 1.0))
    vol /= vol.std()
    vol[:, 2:5, 2:5, 2:4] += 1.0
    return vol[:, mask].astype(np.float32), np.ones((n, 1)), mask


def test_engine_runs_on_a_graph_geometry():
    Y, X, mask = _engine_problem()
    shufflings = make_shufflings(X, "signflip", n_perm=40, seed=1)
    settings = Settings(two_sided=True, tfce=True, cluster_forming_p=0.05)
    on_volume = ContrastTest(Y, X, np.array([1.0]), "t", VolumeGeometry(mask), shufflings, settings)
    on_graph = ContrastTest(Y, X, np.array([1.0]), "t", AdjacencyGeometry(grid_adjacency(mask, 6)), shufflings,
                            settings)
    assert np.array_equal(on_volume.observed.cluster_labels, on_graph.observed.cluster_labels)
    assert on_volume.observed.cluster_sizes == on_graph.observed.cluster_sizes
    np.testing.assert_allclose(on_graph.observed.tfce, on_volume.observed.tfce, rtol=1e-5, atol=1e-6)
    a, b = on_volume.null(), on_graph.null()
    assert np.array_equal(a.max_size, b.max_size) and np.array_equal(a.max_mass, b.max_mass)
    np.testing.assert_allclose(a.max_tfce, b.max_tfce, rtol=1e-5)


def test_engine_refuses_a_geometry_that_does_not_fit():
    Y, X, mask = _engine_problem()
    shufflings = make_shufflings(X, "signflip", n_perm=10, seed=1)
    with pytest.raises(ValueError, match="elements"):
        ContrastTest(Y[:, :-1], X, np.array([1.0]), "t", VolumeGeometry(mask), shufflings, Settings())
    with pytest.raises(ValueError, match="connectivity"):
        ContrastTest(Y, X, np.array([1.0]), "t", VolumeGeometry(mask, 26), shufflings, Settings(tfce=True))
