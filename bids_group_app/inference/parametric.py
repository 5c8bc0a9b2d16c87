"""Parametric inference: height thresholds, cluster extent, cluster tables.

nilearn does the work: ``threshold_stats_img`` turns ``--height-control``
(fpr, fdr, bonferroni) and ``--alpha`` into a z threshold and applies the
cluster-extent threshold; :func:`.atlas.cluster_table` lists clusters and
their sub-peaks (nilearn's ``get_clusters_table``) with anatomical labels.
``none`` means no parametric thresholding (no thresholded maps, no cluster
tables).

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

from bids_group_app.inference.atlas import DEFAULT_ATLAS, cluster_table, load_atlas


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

    def describe(self):
        """Sidecar fields that state how the map was thresholded."""
        return {
            "HeightControl": self.height_control,
            "Alpha": self.alpha,
            "Threshold": {"Statistic": "z", "Value": float(self.threshold) if np.isfinite(self.threshold) else None},
            "ClusterExtentThreshold": self.cluster_threshold,
            "TwoSided": self.two_sided,
            "NumberOfClusters": int(self.clusters["Cluster ID"].astype(str).str.isdigit().sum()) if len(self.clusters) else 0,
            "Atlas": atlas_provenance(),
        }


def atlas_provenance():
    """Which atlas (and version) labels the cluster tables."""
    return load_atlas(DEFAULT_ATLAS).provenance


def threshold_contrast(z_img, mask_img, *, height_control, alpha, cluster_threshold, two_sided):
    """Threshold a z map and tabulate its clusters.

    Returns
    -------
    Thresholded or None
        None when ``height_control`` is ``"none"``.
    """
    if height_control == "none":
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img, threshold = threshold_stats_img(
            z_img, mask_img=mask_img, alpha=alpha, height_control=height_control,
            cluster_threshold=int(cluster_threshold), two_sided=two_sided,
        )
    clusters = cluster_table(z_img, float(threshold), two_sided=two_sided, cluster_threshold=int(cluster_threshold))
    return Thresholded(img, float(threshold), clusters, height_control, float(alpha), int(cluster_threshold), bool(two_sided))


def threshold_table(img, *, two_sided):
    """Labelled cluster table of an already thresholded map (every non-zero voxel kept)."""
    data = np.asarray(img.dataobj)
    nonzero = np.abs(data[data != 0])
    threshold = float(nonzero.min()) * (1 - 1e-6) if nonzero.size else float("inf")
    return cluster_table(img, threshold, two_sided=two_sided)
