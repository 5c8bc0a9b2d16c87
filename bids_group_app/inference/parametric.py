"""Parametric inference: height thresholds, cluster extent, cluster tables.

nilearn's ``threshold_stats_img`` turns ``--height-control`` (fpr, fdr,
bonferroni) and ``--alpha`` into a z threshold. :func:`threshold_map` then
keeps the voxels :func:`suprathreshold` (``|z| >= threshold``, nilearn's
rule: a voxel exactly on the threshold, such as the last voxel an FDR
threshold rejects, is kept) and applies the cluster-extent threshold with
the run's ``--connectivity`` (default 6, nilearn's faces: the map is then
nilearn's ``threshold_stats_img`` map bit for bit). The cluster table
(:func:`.atlas.cluster_table`) is made *from the thresholded map*, with the
same connectivity, so it lists exactly the map's voxels. ``none`` means no
parametric thresholding (no thresholded maps, no cluster tables).

:func:`suprathreshold` is the one place that decides what is above a
height threshold; tables never threshold (the permutation FWE maps keep
voxels by their FWE p-value, and :func:`threshold_table` lists them).

Sidedness: t-contrasts are thresholded on the positive tail unless
``two_sided`` is set (then both tails at alpha/2 each, nilearn's
convention); F-contrasts are always one-sided.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from nilearn.glm import threshold_stats_img
from nilearn.image import load_img, new_img_like

from bids_group_app.inference.atlas import DEFAULT_ATLAS, cluster_table, load_atlas, sign_clusters


@dataclass
class Thresholded:
    """A thresholded z map and its cluster table."""

    img: object
    threshold: float
    clusters: pd.DataFrame
    height_control: str
    alpha: float
    cluster_threshold: int
    two_sided: bool
    connectivity: int = 6

    def describe(self):
        """Sidecar fields that state how the map was thresholded."""
        return {
            "HeightControl": self.height_control,
            "Alpha": self.alpha,
            "Threshold": {"Statistic": "z", "Value": float(self.threshold) if np.isfinite(self.threshold) else None},
            "ClusterExtentThreshold": self.cluster_threshold,
            "TwoSided": self.two_sided,
            "Connectivity": self.connectivity,
            "NumberOfClusters": int(self.clusters["Cluster ID"].astype(str).str.isdigit().sum()) if len(self.clusters) else 0,
            "Atlas": atlas_provenance(),
        }


def atlas_provenance():
    """Which atlas (and version) labels the cluster tables."""
    return load_atlas(DEFAULT_ATLAS).provenance


def suprathreshold(values, threshold, two_sided):
    """Which values are above a height threshold: the one rule of maps and tables.

    A value is above when ``value >= threshold`` (``|value| >= threshold``
    with ``two_sided``), compared in the precision of ``values`` (the
    threshold is rounded to it first), as nilearn's ``threshold_img`` does.
    A voxel exactly on the threshold is kept: nilearn's FDR threshold is the
    smallest rejected ``|z|`` (minus 1e-12, lost in float32).

    Parameters
    ----------
    values : numpy.ndarray
        Statistic values (finite).
    threshold : float
        Height threshold; NaN or +inf keeps nothing.
    two_sided : bool

    Returns
    -------
    numpy.ndarray of bool
    """
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating):
        threshold = values.dtype.type(threshold)
    return (np.abs(values) if two_sided else values) >= threshold


def threshold_map(stat_img, threshold, *, two_sided, cluster_threshold=0, connectivity=6, mask_img=None):
    """A statistic map with the voxels below threshold or in small clusters set to 0.

    Parameters
    ----------
    stat_img : Niimg-like
        3D statistic map.
    threshold : float
        Height threshold (see :func:`suprathreshold`).
    two_sided : bool
        Keep both tails.
    cluster_threshold : int
        Drop clusters with fewer voxels (positive and negative clusters
        formed apart, as :func:`.atlas.sign_clusters`).
    connectivity : {6, 18, 26}
        Neighbourhood of the clusters.
    mask_img : Niimg-like or None
        Voxels outside this mask (same grid) are set to 0.

    Returns
    -------
    nibabel.Nifti1Image
        The map, in the data type of ``stat_img`` (non-finite values as 0).
    """
    img = load_img(stat_img)
    data = np.asarray(img.dataobj)
    data = np.where(np.isfinite(data), data, 0).astype(data.dtype, copy=False)
    if mask_img is not None:
        data[np.asarray(load_img(mask_img).dataobj) == 0] = 0
    data[~suprathreshold(data, threshold, two_sided)] = 0
    if cluster_threshold > 0:
        data[_in_small_clusters(data, cluster_threshold, connectivity)] = 0
    return new_img_like(img, data, img.affine, copy_header=True)


def _in_small_clusters(data, cluster_threshold, connectivity):
    """Voxels of the clusters of non-zero voxels (:func:`.atlas.sign_clusters`) smaller than ``cluster_threshold``."""
    labels = sign_clusters(data, connectivity)
    small = np.zeros(labels.shape, dtype=bool)
    for sign in (1, -1):
        tail = np.where(labels * sign > 0, labels * sign, 0)
        sizes = np.bincount(tail.ravel())
        small |= (tail > 0) & (sizes[tail] < cluster_threshold)
    return small


def threshold_contrast(z_img, mask_img, *, height_control, alpha, cluster_threshold, two_sided, connectivity=6):
    """Threshold a z map and tabulate its clusters.

    Parameters
    ----------
    z_img, mask_img : Niimg-like
    height_control : {"fpr", "fdr", "bonferroni", "none"}
    alpha : float
    cluster_threshold : int
        Cluster-extent threshold in voxels.
    two_sided : bool
    connectivity : {6, 18, 26}
        Neighbourhood of the clusters, for the extent threshold and the
        table (``--connectivity``).

    Returns
    -------
    Thresholded or None
        None when ``height_control`` is ``"none"``. Its table lists exactly
        the non-zero voxels of its map.
    """
    if height_control == "none":
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, threshold = threshold_stats_img(z_img, mask_img=mask_img, alpha=alpha, height_control=height_control,
                                           cluster_threshold=0, two_sided=two_sided)
    img = threshold_map(z_img, threshold, two_sided=two_sided, cluster_threshold=int(cluster_threshold),
                        connectivity=connectivity, mask_img=mask_img)
    clusters = cluster_table(img, connectivity=connectivity)
    return Thresholded(img, float(threshold), clusters, height_control, float(alpha), int(cluster_threshold),
                       bool(two_sided), int(connectivity))


def threshold_table(img, *, connectivity=6):
    """Labelled cluster table of an already thresholded map (every non-zero voxel listed).

    Parameters
    ----------
    img : Niimg-like
        A thresholded map, e.g. a permutation FWE map.
    connectivity : {6, 18, 26}
        The neighbourhood the permutation engine formed clusters with.
    """
    return cluster_table(img, connectivity=connectivity)
