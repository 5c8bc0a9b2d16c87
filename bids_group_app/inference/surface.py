"""Parametric thresholds and cluster tables on a mesh (arrays in, tables out).

The surface counterpart of :mod:`bids_group_app.inference.parametric` and
:mod:`bids_group_app.inference.atlas`, on masked vectors and a
:class:`~bids_group_app.stats.geometry.Geometry` instead of images:

* :func:`height_threshold` is nilearn's ``threshold_stats_img`` threshold
  (``fpr``: ``isf(alpha)``; ``fdr``: Benjamini-Hochberg on the values;
  ``bonferroni``: ``isf(alpha / n)``; two-sided: on ``|z|`` with ``alpha / 2``)
  computed from the masked values, so that a surface map is thresholded
  exactly as nilearn thresholds a volume with the same values;
* :func:`threshold_values` keeps the elements :func:`.parametric.suprathreshold`
  keeps (the one rule) and drops the clusters of fewer than
  ``cluster_threshold`` elements (vertices: nilearn counts voxels);
* :func:`cluster_table` lists the clusters of a thresholded vector: one row
  per cluster (positive clusters first, each tail by descending peak), with
  its peak (element, hemisphere or structure, mm coordinates on the mesh),
  its number of elements and its extent (area in mm² on a surface, volume in
  mm³ for the voxels of a CIFTI volume part), and the peak's label when an
  atlas labels the elements.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from bids_group_app.inference.parametric import suprathreshold

#: Columns of a surface cluster table.
COLUMNS = ("Cluster ID", "Structure", "Peak Element", "X", "Y", "Z", "Peak Stat", "Cluster Size (elements)",
           "Cluster Extent", "Extent Unit", "Peak Label")


def height_threshold(z, height_control, alpha, two_sided):
    """The z threshold of ``--height-control`` at ``alpha``, as nilearn's ``threshold_stats_img`` computes it.

    Parameters
    ----------
    z : numpy.ndarray of shape (n_elements,)
        Masked z values.
    height_control : {"fpr", "fdr", "bonferroni"}
    alpha : float
    two_sided : bool

    Returns
    -------
    float
        ``inf`` when FDR rejects nothing.
    """
    from nilearn.glm.thresholding import fdr_threshold

    alpha_ = alpha / 2 if two_sided else alpha
    if height_control == "fpr":
        return float(norm.isf(alpha_))
    values = np.abs(z) if two_sided else np.asarray(z)
    if height_control == "fdr":
        return float(fdr_threshold(values, alpha_))
    if height_control == "bonferroni":
        return float(norm.isf(alpha_ / np.size(values)))
    raise ValueError(f"height_control must be fpr, fdr or bonferroni, got {height_control!r}")


def threshold_values(values, threshold, geometry, *, two_sided, cluster_threshold=0):
    """Values above ``threshold`` in clusters of at least ``cluster_threshold`` elements, 0 elsewhere.

    Parameters
    ----------
    values : numpy.ndarray of shape (n_elements,)
    threshold : float
    geometry : Geometry
        Neighbourhood of the elements (clusters are formed per sign).
    two_sided : bool
    cluster_threshold : int
        Minimum number of elements of a cluster.
    """
    values = np.asarray(values)
    keep = suprathreshold(values, threshold, two_sided) & np.isfinite(values)
    out = np.where(keep, values, 0).astype(values.dtype)
    if cluster_threshold > 1:
        for sign in (1, -1):
            members, labels, count = geometry.components(out, 0.0, sign)
            if count:
                sizes = np.bincount(labels, minlength=count)
                out[members[sizes[labels] < cluster_threshold]] = 0
    return out


def _clusters(values, geometry):
    """``[(sign, member indices)]`` of the non-zero clusters, positive first, each tail by descending |peak|."""
    found = []
    for sign in (1, -1):
        members, labels, count = geometry.components(values, 0.0, sign)
        for label in range(count):
            idx = members[labels == label]
            found.append((sign, idx, float(np.max(values[idx] * sign))))
    found.sort(key=lambda c: (-c[0], -c[2]))
    return [(sign, idx) for sign, idx, _ in found]


def cluster_table(values, geometry, elements, labels=None):
    """The clusters of a thresholded masked vector (every non-zero element listed in one cluster).

    Parameters
    ----------
    values : numpy.ndarray of shape (n_elements,)
        Zero outside clusters.
    geometry : Geometry
        With ``element_size`` (areas, volumes) for the extent, else counts.
    elements : pandas.DataFrame
        One row per element: ``structure`` (e.g. ``CORTEX_LEFT``),
        ``index`` (vertex number in its mesh, or voxel index), ``x``, ``y``,
        ``z`` (mm), ``unit`` (``mm2`` or ``mm3``).
    labels : sequence of str, optional
        A label per element (an atlas region), for the peak.

    Returns
    -------
    pandas.DataFrame
        :data:`COLUMNS`, clusters numbered 1, 2, ...
    """
    values = np.asarray(values, dtype=float)
    sizes = getattr(geometry, "element_size", None)
    rows = []
    for number, (sign, idx) in enumerate(_clusters(values, geometry), start=1):
        peak = idx[np.argmax(values[idx] * sign)]
        info = elements.iloc[peak]
        units = sorted(set(elements["unit"].iloc[idx]))
        rows.append({
            "Cluster ID": str(number), "Structure": info["structure"], "Peak Element": int(info["index"]),
            "X": float(info["x"]), "Y": float(info["y"]), "Z": float(info["z"]), "Peak Stat": float(values[peak]),
            "Cluster Size (elements)": int(idx.size),
            "Cluster Extent": float(sizes[idx].sum()) if sizes is not None else float(idx.size),
            "Extent Unit": "/".join(units) if sizes is not None else "elements",
            "Peak Label": None if labels is None else labels[peak],
        })
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype({"Cluster Size (elements)": "Int64", "Cluster Extent": float})
