"""Mask geometry, clusters and TFCE of statistic maps (arrays in, arrays out).

The statistic of a voxel-wise test lives on the voxels of a mask. Cluster
and TFCE statistics need the 3-D neighbourhood, so :class:`MaskGeometry`
puts masked values back into the bounding box of the mask (a much smaller
volume than the image, which makes labelling and TFCE several times faster).

Conventions:

* Clusters are connected components (``connectivity`` 6, 18 or 26
  neighbours) of the voxels above the cluster-forming threshold; with a
  two-sided test, positive and negative clusters are formed separately.
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


def cluster_labels(volume, threshold, structure, two_sided):
    """Label the clusters of a box volume; negative clusters get negative labels."""
    positive, n_pos = ndimage.label(volume > threshold, structure)
    if not two_sided:
        return positive, n_pos, 0
    negative, n_neg = ndimage.label(volume < -threshold, structure)
    return positive - negative, n_pos, n_neg


def cluster_measures(volume, threshold, structure, two_sided):
    """Sizes and masses of the clusters of one box volume.

    Returns
    -------
    labels : numpy.ndarray of int
        Cluster label of each voxel (positive clusters 1..n, negative
        clusters -1..-m, 0 outside clusters).
    sizes, masses : dict
        ``{label: value}``.
    """
    labels, n_pos, n_neg = cluster_labels(volume, threshold, structure, two_sided)
    excess = np.abs(volume) - threshold
    sizes, masses = {}, {}
    for sign, count in ((1, n_pos), (-1, n_neg)):
        if not count:
            continue
        lab = labels * sign
        hit = lab > 0
        size = np.bincount(lab[hit], minlength=count + 1)[1:]
        mass = np.bincount(lab[hit], weights=excess[hit], minlength=count + 1)[1:]
        for i in range(count):
            sizes[sign * (i + 1)] = int(size[i])
            masses[sign * (i + 1)] = float(mass[i])
    return labels, sizes, masses


def max_cluster_measures(volume, threshold, structure, two_sided):
    """Largest cluster size and mass of one box volume (0 when no cluster)."""
    _, sizes, masses = cluster_measures(volume, threshold, structure, two_sided)
    return (max(sizes.values()) if sizes else 0), (max(masses.values()) if masses else 0.0)


def tfce_volumes(volumes, connectivity, E, H, two_sided, n_jobs=1):
    """Exact TFCE of box volumes (*box) or (*box, B), float32."""
    import tfce

    return tfce.tfce(np.ascontiguousarray(volumes, dtype=np.float32), connectivity=connectivity, E=E, H=H,
                     two_sided=two_sided, n_jobs=n_jobs)

