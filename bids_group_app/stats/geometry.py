"""Mask geometry, clusters and TFCE of statistic maps (arrays in, arrays out).

The statistic of a voxel-wise test lives on the voxels of a mask. Cluster
and TFCE statistics need the 3-D neighbourhood, so :class:`MaskGeometry`
puts masked values back into the bounding box of the mask (a much smaller
volume than the image, which makes labelling and TFCE several times faster).

Conventions:

* Clusters are connected components (``connectivity`` 6, 18 or 26
  neighbours) of the voxels above the cluster-forming threshold; with a
  two-sided test, positive and negative clusters are formed separately.
  They are found on the masked vector through a neighbour table, so the
  cost follows the number of supra-threshold voxels, not the volume.
* Cluster size is the number of voxels; cluster mass is the sum over the
  cluster of ``|stat| - threshold`` (as nilearn).
* TFCE is the exact integral ``∫ e(h)^E h^H dh`` computed by the ``tfce``
  package (max-tree, no step size); with a two-sided test the negative part
  is enhanced separately and keeps its sign.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


@dataclass
class MaskGeometry:
    """Where masked voxels sit in the bounding box of the mask.

    Parameters
    ----------
    mask : numpy.ndarray of bool, 3-D
    connectivity : {6, 18, 26}
    """

    mask: np.ndarray
    connectivity: int = 6

    def __post_init__(self):
        if self.connectivity not in CONNECTIVITY_RANK:
            raise ValueError(f"connectivity must be 6, 18 or 26, got {self.connectivity}")
        self.mask = np.asarray(self.mask, dtype=bool)
        coords = np.argwhere(self.mask)
        lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
        self.box = tuple(slice(a, b) for a, b in zip(lo, hi))
        self.box_shape = tuple(int(b - a) for a, b in zip(lo, hi))
        self.flat_index = np.flatnonzero(self.mask[self.box])
        self.structure = ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[self.connectivity])
        self._forward = None

    @property
    def forward_neighbours(self):
        """(v, k) masked indices of each voxel's neighbours at forward offsets (-1: none).

        Only the half of the offsets that come first in C order is kept:
        each neighbour pair appears once, which is all an undirected
        connected-components search needs.
        """
        if self._forward is None:
            index = np.full(self.mask.shape, -1, dtype=np.int32)
            index[self.mask] = np.arange(self.n_voxels)
            padded = np.pad(index, 1, constant_values=-1)
            offsets = [o for o in np.argwhere(self.structure) - 1 if tuple(o) > (0, 0, 0)]
            coords = np.argwhere(self.mask) + 1
            self._forward = np.stack([padded[tuple((coords + o).T)] for o in offsets], axis=1)
        return self._forward

    @property
    def n_voxels(self):
        """Number of voxels in the mask."""
        return int(self.flat_index.size)

    def to_box(self, values):
        """Masked values of shape (v,) or (B, v) → volumes (*box, ) or (*box, B)."""
        values = np.asarray(values)
        batch = values.reshape(-1, values.shape[-1])
        out = np.zeros((len(batch), int(np.prod(self.box_shape))), dtype=np.float32)
        out[:, self.flat_index] = batch
        out = np.moveaxis(out.reshape((len(batch),) + self.box_shape), 0, -1)
        return out[..., 0] if values.ndim == 1 else out

    def from_box(self, volume):
        """Volume(s) (*box) or (*box, B) → masked values (v,) or (B, v)."""
        volume = np.asarray(volume)
        if volume.ndim == 3:
            return volume.reshape(-1)[self.flat_index]
        return np.moveaxis(volume, -1, 0).reshape(volume.shape[-1], -1)[:, self.flat_index]


def _components(values, threshold, geometry, sign):
    """Connected components of the voxels with ``sign * value > threshold``.

    Works on the masked vector through the neighbour table, so the cost
    grows with the number of supra-threshold voxels, not with the volume.

    Returns
    -------
    members : numpy.ndarray of int
        Masked indices of the supra-threshold voxels.
    labels : numpy.ndarray of int
        Component (0-based) of each member.
    count : int
    """
    supra = (values * sign) > threshold
    members = np.flatnonzero(supra)
    if members.size == 0:
        return members, members, 0
    neighbours = geometry.forward_neighbours[members]
    valid = neighbours >= 0
    valid[valid] = supra[neighbours[valid]]
    a = np.broadcast_to(np.arange(members.size)[:, None], neighbours.shape)[valid]
    b = np.searchsorted(members, neighbours[valid])
    roots = _union_find(members.size, a, b)
    _, labels = np.unique(roots, return_inverse=True)
    return members, labels.ravel(), int(labels.max()) + 1


def _union_find(n, a, b):
    """Root of each of ``n`` nodes joined by the edges ``(a[k], b[k])``.

    Vectorised hooking and pointer jumping: each round links the larger of
    two differing roots to the smaller (so no cycle can form), then
    compresses every path to its root; a handful of rounds suffices.
    """
    parent = np.arange(n)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        lo, hi = np.minimum(ra[differ], rb[differ]), np.maximum(ra[differ], rb[differ])
        parent[hi] = lo
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def cluster_measures(values, threshold, geometry, two_sided):
    """Clusters of a masked statistic vector, with their sizes and masses.

    Returns
    -------
    labels : numpy.ndarray of int, shape (v,)
        Cluster of each voxel: positive clusters 1..n, negative clusters
        -1..-m (two-sided only), 0 outside clusters.
    sizes, masses : dict
        ``{label: value}``.
    """
    values = np.asarray(values)
    labels = np.zeros(values.shape[0], dtype=np.int32)
    sizes, masses = {}, {}
    for sign in ((1, -1) if two_sided else (1,)):
        members, component, count = _components(values, threshold, geometry, sign)
        if not count:
            continue
        size = np.bincount(component, minlength=count)
        mass = np.bincount(component, weights=np.abs(values[members]) - threshold, minlength=count)
        labels[members] = sign * (component + 1)
        for i in range(count):
            sizes[sign * (i + 1)] = int(size[i])
            masses[sign * (i + 1)] = float(mass[i])
    return labels, sizes, masses


def max_cluster_measures(values, threshold, geometry, two_sided, to_stat=None, stat_threshold=None):
    """Largest cluster size and mass of a masked vector (0 when none).

    ``values`` may be an increasing transform of the statistic: clusters
    are formed with ``threshold`` on ``values``, and masses are computed on
    ``to_stat(values)`` above ``stat_threshold`` (by default the values and
    threshold themselves).
    """
    best_size, best_mass = 0, 0.0
    for sign in ((1, -1) if two_sided else (1,)):
        members, component, count = _components(values, threshold, geometry, sign)
        if count:
            best_size = max(best_size, int(np.bincount(component).max()))
            heights = np.abs(values[members] if to_stat is None else to_stat(values[members]))
            excess = heights - (threshold if stat_threshold is None else stat_threshold)
            best_mass = max(best_mass, float(np.bincount(component, weights=excess).max()))
    return best_size, best_mass


def tfce_volumes(volumes, connectivity, E, H, two_sided, n_jobs=1):
    """Exact TFCE of box volumes (*box) or (*box, B), float32."""
    import tfce

    return tfce.tfce(np.ascontiguousarray(volumes, dtype=np.float32), connectivity=connectivity, E=E, H=H,
                     two_sided=two_sided, n_jobs=n_jobs)

