"""Quality measures of a run for the participant report (arrays in, numbers out; no I/O).

* :func:`variance_inflation`: the variance inflation factor of design columns,
  ``VIF_j = 1 / (1 - R²_j)`` with ``R²_j`` the coefficient of determination
  of column ``j`` regressed on the other columns and an intercept;
* :func:`condition_columns`: which columns of a run design are conditions
  (neither confounds, nor drift, nor constant);
* :func:`displacement_summary`: mean and maximum framewise displacement,
  ``n/a`` (NaN, the first volume in fMRIPrep's confounds) excluded.
"""

from __future__ import annotations

import re

import numpy as np

#: Names nilearn gives its drift columns (``cosine00``, ``drift_1``).
DRIFT_COLUMN = re.compile(r"cosine\d+|drift_\d+")


def variance_inflation(design, columns=None):
    """The variance inflation factor of design columns.

    Parameters
    ----------
    design : array-like, shape (n, p)
    columns : sequence of int, optional
        The columns whose VIF is wanted (default: all).

    Returns
    -------
    numpy.ndarray
        ``1 / (1 - R²_j)`` for each column ``j``, where ``R²_j`` is that of
        the least-squares fit of column ``j`` on the other ``p - 1`` columns
        and a column of ones (so R² is about the mean: a constant column
        has no variance to explain and gets NaN); ``inf`` when column ``j``
        is a linear combination of the others.
    """
    design = np.asarray(design, dtype=np.float64)
    n, p = design.shape
    columns = range(p) if columns is None else columns
    out = []
    for j in columns:
        target = design[:, j]
        others = np.column_stack([np.ones(n), np.delete(design, j, axis=1)])
        beta, *_ = np.linalg.lstsq(others, target, rcond=None)
        residual = float(np.sum((target - others @ beta) ** 2))
        total = float(np.sum((target - target.mean()) ** 2))
        if total <= 1e-12 * max(1.0, float(np.sum(target ** 2))):
            out.append(np.nan)
        elif residual <= 1e-12 * total:
            out.append(np.inf)
        else:
            out.append(total / residual)
    return np.asarray(out)


def condition_columns(columns, confounds, values):
    """The condition columns of a run design: neither confound, nor drift, nor constant.

    Parameters
    ----------
    columns : sequence of str
        The design's columns.
    confounds : collection of str
        The columns of the run's confounds table.
    values : array-like, shape (n, p)
        The design's values (a constant column, the intercept, is left out).

    Returns
    -------
    list of int
        Indices into ``columns``.
    """
    values = np.asarray(values, dtype=np.float64)
    return [j for j, name in enumerate(columns)
            if name not in confounds and not DRIFT_COLUMN.fullmatch(name) and np.ptp(values[:, j]) > 0]


def displacement_summary(values):
    """Mean and maximum of framewise displacement, missing values (NaN) excluded.

    Parameters
    ----------
    values : array-like
        Framewise displacement of each volume (mm); NaN where ``n/a``.

    Returns
    -------
    tuple of float
        ``(mean, max)``; ``(nan, nan)`` when no value is present.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.max())
