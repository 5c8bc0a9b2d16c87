"""Geometry of statistic maps: clusters and TFCE (arrays in, arrays out).

The statistic of a mass-univariate test lives on the elements of a mask
(voxels; vertices of a mesh). The permutation engine sees it only as a
masked vector and reaches the neighbourhood through the :class:`Geometry`
seam, which says

* how many elements there are (:attr:`Geometry.n_elements`),
* which supra-threshold elements are connected (:meth:`Geometry.components`),
* how large a cluster is (:meth:`Geometry.extent`: a voxel count; an area
  on a mesh with element areas),
* the TFCE of a batch of masked vectors (:meth:`Geometry.tfce`).

Two implementations:

* :class:`VolumeGeometry` (alias ``MaskGeometry``): voxels of a 3-D mask
  with 6-, 18- or 26-connectivity. Components are found on the masked
  vector through a neighbour table, so their cost follows the number of
  supra-threshold voxels, not the volume; TFCE puts the values back into
  the bounding box of the mask (a much smaller volume than the image,
  which makes it several times faster).
* :class:`AdjacencyGeometry`: any elements joined by a sparse symmetric
  adjacency (a mesh), with optional element sizes (areas) for the extent.

Conventions:

* Clusters are connected components of the elements above the
  cluster-forming threshold; with a two-sided test, positive and negative
  clusters are formed separately. Components are numbered in the order of
  their first (lowest-index) element.
* Cluster size is the extent (number of voxels, or sum of element sizes);
  cluster mass is the sum over the cluster of ``|stat| - threshold`` (as
  nilearn).
* TFCE is the exact integral ``∫ e(h)^E h^H dh`` computed by the ``tfce``
  package (max-tree, no step size), ``e(h)`` the number of connected
  elements; with a two-sided test the negative part is enhanced separately
  and keeps its sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


@runtime_checkable
class Geometry(Protocol):
    """What the permutation engine needs of the space a statistic lives on.

    Every method takes and returns masked vectors: values of shape ``(v,)``
    (one map) or ``(B, v)`` (a batch), ``v`` = :attr:`n_elements`.
    """

    @property
    def n_elements(self) -> int:
        """Number of elements (length of a masked vector)."""

    def components(self, values, threshold, sign):
        """Connected components of the elements with ``sign * value > threshold``.

        Parameters
        ----------
        values : numpy.ndarray, shape (v,)
        threshold : float
        sign : {1, -1}

        Returns
        -------
        members : numpy.ndarray of int
            Indices (ascending) of the supra-threshold elements.
        labels : numpy.ndarray of int
            Component of each member, 0-based, numbered in the order of
            each component's first member.
        count : int
            Number of components.
        """

    def extent(self, members, labels, count):
        """Size of each component, shape (count,): element counts (int) or areas (float)."""

    def tfce(self, values, E, H, two_sided):
        """Exact TFCE of masked values (v,) or (B, v), float32, same shape."""


def _graph_components(n, a, b):
    """Connected components of ``n`` nodes joined by the edges ``(a[k], b[k])``.

    ``a`` must be sorted (edges listed by their first node). Labels are
    numbered in the order of each component's lowest node, as
    :func:`scipy.sparse.csgraph.connected_components` visits nodes in order.

    Returns
    -------
    labels : numpy.ndarray of int, shape (n,)
    count : int
    """
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(a, minlength=n), out=indptr[1:])
    graph = sparse.csr_matrix((np.ones(a.size), b, indptr), shape=(n, n))
    count, labels = csgraph.connected_components(graph, directed=False)
    return labels, int(count)


@dataclass
class VolumeGeometry:
    """Voxels of a 3-D mask and their grid neighbourhood.

    Parameters
    ----------
    mask : numpy.ndarray of bool, 3-D
    connectivity : {6, 18, 26}
        Neighbourhood for clusters and TFCE.
    """

    mask: np.ndarray
    connectivity: int = 6

    def __post_init__(self):
        if self.connectivity not in CONNECTIVITY_RANK:
            raise ValueError(f"connectivity must be 6, 18 or 26, got {self.connectivity}")
        self.mask = np.asarray(self.mask, dtype=bool)
        coords = np.argwhere(self.mask)
        lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
        self._box_shape = tuple(int(b - a) for a, b in zip(lo, hi))
        self._flat_index = np.flatnonzero(self.mask[tuple(slice(a, b) for a, b in zip(lo, hi))])
        self.structure = ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[self.connectivity])
        self._forward = None

    @property
    def n_elements(self):
        """Number of voxels in the mask."""
        return int(self._flat_index.size)

    @property
    def forward_neighbours(self):
        """(v, k) masked indices of each voxel's neighbours at forward offsets (-1: none).

        Only the half of the offsets that come first in C order is kept:
        each neighbour pair appears once, which is all an undirected
        connected-components search needs.
        """
        if self._forward is None:
            index = np.full(self.mask.shape, -1, dtype=np.int32)
            index[self.mask] = np.arange(self.n_elements)
            padded = np.pad(index, 1, constant_values=-1)
            offsets = [o for o in np.argwhere(self.structure) - 1 if tuple(o) > (0, 0, 0)]
            coords = np.argwhere(self.mask) + 1
            self._forward = np.stack([padded[tuple((coords + o).T)] for o in offsets], axis=1)
        return self._forward

    def components(self, values, threshold, sign):
        """Connected components of the voxels with ``sign * value > threshold``.

        The edges are read from the neighbour table of the supra-threshold
        voxels only. See :meth:`Geometry.components`.
        """
        supra = (np.asarray(values) * sign) > threshold
        members = np.flatnonzero(supra)
        if members.size == 0:
            return members, members, 0
        neighbours = self.forward_neighbours[members]
        valid = neighbours >= 0
        valid[valid] = supra[neighbours[valid]]
        a = np.broadcast_to(np.arange(members.size)[:, None], neighbours.shape)[valid]
        b = np.searchsorted(members, neighbours[valid])
        labels, count = _graph_components(members.size, a, b)
        return members, labels, count

    def extent(self, members, labels, count):
        """Number of voxels of each component."""
        return np.bincount(labels, minlength=count)

    def tfce(self, values, E, H, two_sided):
        """Exact TFCE of masked values (v,) or (B, v), computed in the mask's bounding box."""
        return self._from_box(tfce_volumes(self._to_box(values), self.connectivity, E, H, two_sided))

    def _to_box(self, values):
        """Masked values of shape (v,) or (B, v) → volumes (*box, ) or (*box, B)."""
        values = np.asarray(values)
        batch = values.reshape(-1, values.shape[-1])
        out = np.zeros((len(batch), int(np.prod(self._box_shape))), dtype=np.float32)
        out[:, self._flat_index] = batch
        out = np.moveaxis(out.reshape((len(batch),) + self._box_shape), 0, -1)
        return out[..., 0] if values.ndim == 1 else out

    def _from_box(self, volume):
        """Volume(s) (*box) or (*box, B) → masked values (v,) or (B, v)."""
        volume = np.asarray(volume)
        if volume.ndim == 3:
            return volume.reshape(-1)[self._flat_index]
        return np.moveaxis(volume, -1, 0).reshape(volume.shape[-1], -1)[:, self._flat_index]


MaskGeometry = VolumeGeometry  # the name before the Geometry seam


class AdjacencyGeometry:
    """Elements joined by a sparse symmetric adjacency (e.g. the vertices of a mesh).

    Parameters
    ----------
    adjacency : scipy.sparse matrix or array-like, shape (v, v)
        Nonzero ``[i, j]``: elements i and j are neighbours. Must be
        symmetric; the diagonal is ignored.
    element_size : array-like, shape (v,), optional
        Size of each element (a vertex area); cluster extent is then the
        sum of the sizes of its elements instead of their number. TFCE
        always counts elements (the ``tfce`` package takes no weights).
    """

    def __init__(self, adjacency, element_size=None):
        graph = sparse.csr_matrix(adjacency, dtype=bool)
        if graph.shape[0] != graph.shape[1]:
            raise ValueError(f"adjacency must be square, got shape {graph.shape}")
        graph.setdiag(False)
        graph.eliminate_zeros()
        if (graph != graph.T).nnz:
            raise ValueError("adjacency must be symmetric")
        graph.sort_indices()
        self.adjacency = graph
        self.element_size = None
        if element_size is not None:
            self.element_size = np.asarray(element_size, dtype=np.float64)
            if self.element_size.shape != (graph.shape[0],):
                raise ValueError(f"element_size must have shape ({graph.shape[0]},), got {self.element_size.shape}")

    @property
    def n_elements(self):
        """Number of elements."""
        return int(self.adjacency.shape[0])

    def components(self, values, threshold, sign):
        """Connected components of the supra-threshold subgraph. See :meth:`Geometry.components`."""
        members = np.flatnonzero((np.asarray(values) * sign) > threshold)
        if members.size == 0:
            return members, members, 0
        count, labels = csgraph.connected_components(self.adjacency[members][:, members], directed=False)
        return members, labels, int(count)

    def extent(self, members, labels, count):
        """Number of elements of each component, or the sum of their sizes."""
        weights = None if self.element_size is None else self.element_size[members]
        return np.bincount(labels, weights=weights, minlength=count)

    def tfce(self, values, E, H, two_sided):
        """Exact TFCE of masked values (v,) or (B, v) on the adjacency (element counts as extent)."""
        import tfce

        values = np.asarray(values, dtype=np.float32)
        out = tfce.tfce(np.ascontiguousarray(values.T), adjacency=(self.adjacency.indptr, self.adjacency.indices),
                        E=E, H=H, two_sided=two_sided)
        return out.T


def cluster_measures(values, threshold, geometry, two_sided):
    """Clusters of a masked statistic vector, with their sizes and masses.

    Parameters
    ----------
    values : numpy.ndarray, shape (v,)
    threshold : float
    geometry : Geometry
    two_sided : bool

    Returns
    -------
    labels : numpy.ndarray of int, shape (v,)
        Cluster of each element: positive clusters 1..n, negative clusters
        -1..-m (two-sided only), 0 outside clusters.
    sizes, masses : dict
        ``{label: value}``; sizes are the geometry's extents (int for
        element counts).
    """
    values = np.asarray(values)
    labels = np.zeros(values.shape[0], dtype=np.int32)
    sizes, masses = {}, {}
    for sign in ((1, -1) if two_sided else (1,)):
        members, component, count = geometry.components(values, threshold, sign)
        if not count:
            continue
        size = geometry.extent(members, component, count)
        mass = np.bincount(component, weights=np.abs(values[members]) - threshold, minlength=count)
        labels[members] = sign * (component + 1)
        for i in range(count):
            sizes[sign * (i + 1)] = size[i].item()
            masses[sign * (i + 1)] = float(mass[i])
    return labels, sizes, masses


def max_cluster_measures(values, threshold, geometry, two_sided, to_stat=None, stat_threshold=None):
    """Largest cluster size and mass of a masked vector (0 when none).

    ``values`` may be an increasing transform of the statistic: clusters
    are formed with ``threshold`` on ``values``, and masses are computed on
    ``to_stat(values)`` above ``stat_threshold`` (by default the values and
    threshold themselves). ``geometry`` is a :class:`Geometry`.
    """
    best_size, best_mass = 0, 0.0
    for sign in ((1, -1) if two_sided else (1,)):
        members, component, count = geometry.components(values, threshold, sign)
        if count:
            best_size = max(best_size, geometry.extent(members, component, count).max().item())
            heights = np.abs(values[members] if to_stat is None else to_stat(values[members]))
            excess = heights - (threshold if stat_threshold is None else stat_threshold)
            best_mass = max(best_mass, float(np.bincount(component, weights=excess).max()))
    return best_size, best_mass


def tfce_volumes(volumes, connectivity, E, H, two_sided, n_jobs=1):
    """Exact TFCE of volumes (nx, ny, nz) or (nx, ny, nz, B), float32."""
    import tfce

    return tfce.tfce(np.ascontiguousarray(volumes, dtype=np.float32), connectivity=connectivity, E=E, H=H,
                     two_sided=two_sided, n_jobs=n_jobs)
