"""Permutation inference engine: arrays in, arrays out.

Input: the data matrix ``Y`` (n maps × v voxels), the design ``X``, a
contrast, the geometry of the maps (a :class:`~.geometry.Geometry`: the
engine reaches neighbourhoods, clusters and TFCE only through it, on
masked vectors) and the shufflings. Output: the observed
statistic (t or F), TFCE and cluster maps, and the null distributions of
their maxima plus per-voxel exceedance counts. No file I/O.

The algebra
-----------
Freedman–Lane (Winkler et al., 2014): the design is split into the part a
contrast tests and the nuisance ``Z = X · null(C)``. The data are reduced to
the nuisance residuals ``R = (I - H_Z) Y`` and each shuffling ``P`` refits
the full model to ``P R``. Because shufflings are orthogonal, ``P R`` is
never formed: with ``U = [U_x, U_z]`` an orthonormal basis of the design
(``U_x`` the tested directions, ``U_z`` the nuisance), every statistic
depends on ``P R`` only through ``g = (P' U)' R`` — a product of a few
rows (the shuffled basis) with ``R``. With ``R`` scaled to unit norm per
voxel,

* ``t = s · g_x · sqrt(dof / (1 - ||g||²))``
* ``F = ||g_x||² · dof / (q (1 - ||g||²))``

where ``dof = n - rank(X)``. Nuisance directions that every shuffling
maps into the nuisance space (exchangeability-block indicators, the
intercept under permutation) contribute nothing and are dropped, so the
cost per shuffling is ``(q + r) · n · v`` multiply-adds in float32, ``r``
the remaining nuisance rank (0 for one-sample, two-sample and
regression-with-intercept designs).

Determinism
-----------
Shufflings are processed in fixed batches (their size depends only on the
kind of inference), voxel tiles have a fixed size, each batch uses
single-threaded BLAS, maxima are exact and counts are integers. So the
results depend only on (data, design, seed, n_perm): not on ``n_jobs``, on
scheduling, or on how batches are spread over shards. (Across machines,
OpenBLAS may pick kernels for another CPU, which round float32 sums
differently; ``OPENBLAS_CORETYPE`` pins them.)

p-values are ``(1 + #{null >= observed}) / (1 + n_perm)``; a null value
within ``1e-5`` (relative, at least 1e-5 absolute) below the observed one
counts as a tie: float32 arithmetic cannot tell them apart, and BLAS
kernels for different CPUs (AVX2, AVX-512) round differently.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, stats
from threadpoolctl import threadpool_limits

from bids_group_app.stats.geometry import cluster_measures, max_cluster_measures

BATCH_VOXELWISE = 128
BATCH_CLUSTER = 16
BATCH_TFCE = 8
TFCE_CHUNK = 1
TILE_FLOATS = 1 << 21
MIN_TILE_FLOATS = 1 << 16
TIE_TOLERANCE = 1e-5
RANK_TOLERANCE = 1e-8


@dataclass
class Settings:
    """What to compute for each shuffling.

    Attributes
    ----------
    two_sided : bool
        t-contrasts: test both tails (|t|, positive and negative clusters,
        signed TFCE). F is always one-sided.
    tfce : bool
    tfce_e, tfce_h : float
    connectivity : {6, 18, 26}
        Neighbourhood of a volume (the geometry applies it; a geometry
        with another ``connectivity`` is refused).
    cluster_forming_p : float or None
        Enables cluster size and mass inference at this uncorrected p.
    n_jobs : int
        Threads over batches of shufflings (results do not depend on it).
    """

    two_sided: bool = False
    tfce: bool = False
    tfce_e: float = 0.5
    tfce_h: float = 2.0
    connectivity: int = 6
    cluster_forming_p: float | None = None
    n_jobs: int = 1

    @property
    def spatial(self):
        """Whether full maps are needed per shuffling (TFCE or clusters)."""
        return self.tfce or self.cluster_forming_p is not None

    @property
    def batch_size(self):
        """Shufflings per batch (fixed, so results never depend on n_jobs)."""
        if self.tfce:
            return BATCH_TFCE
        return BATCH_CLUSTER if self.spatial else BATCH_VOXELWISE


def _orth(A):
    """Orthonormal basis of span(A); singular values below 1e-8 · max(1, σ_max) are zero.

    The floor of 1 matters: a matrix that is zero up to rounding (a space
    with another removed) must give an empty basis, not its noise.
    """
    if A.size == 0 or A.shape[1] == 0:
        return np.zeros((A.shape[0], 0))
    u, s, _ = np.linalg.svd(A, full_matrices=False)
    return u[:, s > RANK_TOLERANCE * max(1.0, float(s.max()))]


def _remove(A, B):
    """Orthonormal basis of span(A) with span(B) projected out."""
    if B.shape[1] == 0:
        return _orth(A)
    return _orth(A - B @ (B.T @ A))


def block_indicators(n, blocks):
    """Orthonormal basis of the block indicator columns (one block: the constant)."""
    if blocks is None:
        return np.full((n, 1), 1 / math.sqrt(n))
    blocks = np.asarray(blocks)
    columns = [(blocks == b).astype(float) for b in dict.fromkeys(blocks.tolist())]
    return _orth(np.column_stack(columns))


def partition(X, weights):
    """Tested and nuisance directions of a contrast.

    Returns
    -------
    Ux : numpy.ndarray (n, q)
        Orthonormal basis of the part of col(X) that the contrast tests.
    Uz : numpy.ndarray (n, p - q)
        Orthonormal basis of the nuisance space ``X · null(C)``.
    """
    X = np.asarray(X, dtype=np.float64)
    C = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    Uz = _orth(X @ linalg.null_space(C, rcond=RANK_TOLERANCE))
    Ux = _remove(_orth(X), Uz)
    return Ux, Uz


def mean_like(X, weights, blocks=None):
    """Whether a contrast tests a mean that permutations leave unchanged.

    True when the tested directions are not orthogonal to the block
    indicators (the constant without blocks): such an effect must be tested
    with sign-flips.
    """
    Ux, _ = partition(X, weights)
    B = block_indicators(len(X), blocks)
    return float(np.sum((B.T @ Ux) ** 2)) > 1e-8 * Ux.shape[1]


def choose_scheme(X, contrasts, blocks=None):
    """Sign-flips, permutations, or both, so all contrasts share shufflings."""
    kinds = {mean_like(X, w, blocks) for w in contrasts}
    if kinds == {True}:
        return "signflip"
    if kinds == {False}:
        return "permute"
    return "both"


@dataclass
class PreparedContrast:
    """A contrast ready for shuffling (residuals scaled to unit norm)."""

    test: str
    q: int
    dof: int
    basis: np.ndarray  # (rows, n) float32: [s·Ux, U_rest]' , first q rows tested
    residuals: np.ndarray  # (n, v) float32, unit norm per voxel (0 where constant)
    nuisance_rank: int = 0
    cluster_threshold: float | None = None

    @property
    def rows(self):
        return self.basis.shape[0]

    @property
    def monotone(self):
        """One row, t-test: the statistic is an increasing function of g."""
        return self.test == "t" and self.rows == 1


def prepare(Y, X, weights, test, scheme, blocks, settings):
    """Nuisance residuals and shuffled-basis rows of one contrast."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    C = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    Ux, Uz = partition(X, C)
    q = Ux.shape[1]
    dof = n - int(np.linalg.matrix_rank(X))
    sign = 1.0
    if test == "t":
        direction = C[0] @ np.linalg.pinv(X) @ Ux
        sign = 1.0 if direction[0] >= 0 else -1.0
    invariant = block_indicators(n, blocks) if scheme == "permute" else np.zeros((n, 0))
    invariant = _orth(Uz @ (Uz.T @ invariant)) if invariant.shape[1] else invariant
    rest = _remove(Uz, invariant)
    basis = np.vstack([sign * Ux.T, rest.T]).astype(np.float32)

    residuals = np.array(Y, dtype=np.float32, order="C", copy=True)
    Uz32 = Uz.astype(np.float32)
    step = max(1, TILE_FLOATS // max(n, 1))
    for start in range(0, residuals.shape[1], step):
        block = residuals[:, start:start + step]
        if Uz32.shape[1]:
            block -= Uz32 @ (Uz32.T @ block)
        norm = np.sqrt(np.einsum("ij,ij->j", block, block, dtype=np.float64))
        scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
        block *= scale.astype(np.float32)
    threshold = None
    if settings.cluster_forming_p is not None:
        p = settings.cluster_forming_p
        if test == "t":
            threshold = float(stats.t.isf(p / 2 if settings.two_sided else p, dof))
        else:
            threshold = float(stats.f.isf(p, q, dof))
    return PreparedContrast(test, q, dof, basis, residuals, Uz.shape[1], threshold)


def _shuffled_rows(basis, orders, signs):
    """Rows ``(P' U)'`` of a batch: shape (B * rows, n), float32."""
    B, n = orders.shape
    rows = basis.shape[0]
    values = basis[None, :, :] * signs[:, None, :].astype(np.float32)
    W = np.zeros((B, rows, n), dtype=np.float32)
    np.put_along_axis(W, np.repeat(orders[:, None, :], rows, axis=1), values, axis=2)
    return W.reshape(B * rows, n)


def _statistic(G, prep):
    """t or F of a tile from its ``g`` values (B, rows, V)."""
    if prep.rows == 1 and prep.test == "t":
        g = G[:, 0, :]
        denominator = np.maximum(1.0 - g * g, 1e-12)
        return g * np.sqrt(prep.dof / denominator)
    total = np.einsum("brv,brv->bv", G, G)
    np.subtract(1.0, total, out=total)
    np.maximum(total, 1e-12, out=total)
    if prep.test == "t":
        return G[:, 0, :] * np.sqrt(prep.dof / total)
    tested = np.einsum("brv,brv->bv", G[:, :prep.q], G[:, :prep.q])
    return tested * (prep.dof / prep.q) / total


def _t_from_g(g, dof):
    g = np.asarray(g, dtype=np.float64)
    return g * np.sqrt(dof / np.maximum(1.0 - g * g, 1e-12))


def _g_from_t(t, dof):
    t = np.asarray(t, dtype=np.float64)
    return t / np.sqrt(dof + t * t)


def _compared(values, prep, two_sided):
    """The quantity compared with the null: |t| (two-sided), t, or F."""
    return np.abs(values) if (two_sided and prep.test == "t") else values


def _tie_threshold(values):
    """Observed values lowered by the tie tolerance (relative, with an absolute floor)."""
    values = np.asarray(values, dtype=np.float64)
    return values - TIE_TOLERANCE * np.maximum(np.abs(values), 1.0)


@dataclass
class Observed:
    """Observed statistics of one contrast (masked vectors)."""

    stat: np.ndarray
    compared: np.ndarray
    tfce: np.ndarray | None = None
    cluster_labels: np.ndarray | None = None
    cluster_sizes: dict = field(default_factory=dict)
    cluster_masses: dict = field(default_factory=dict)


@dataclass
class NullDistribution:
    """Null maxima per shuffling (NaN where not computed) and exceedance counts."""

    max_stat: np.ndarray
    exceedances: np.ndarray
    max_tfce: np.ndarray | None = None
    max_size: np.ndarray | None = None
    max_mass: np.ndarray | None = None

    def arrays(self):
        """The arrays, by name (for saving a shard)."""
        return {k: v for k, v in vars(self).items() if v is not None}

    @classmethod
    def merge(cls, parts):
        """Combine shards: maxima by shuffling index, counts summed."""
        merged = {}
        for name in parts[0].arrays():
            stack = [p.arrays()[name] for p in parts]
            if name == "exceedances":
                merged[name] = np.sum(stack, axis=0)
            else:
                out = np.full_like(stack[0], np.nan)
                for part in stack:
                    done = ~np.isnan(part)
                    out[done] = part[done]
                merged[name] = out
        return cls(**merged)


def _check_geometry(geometry, n_columns, settings):
    """Refuse a geometry that does not describe the data's columns or the settings' neighbourhood."""
    if geometry.n_elements != n_columns:
        raise ValueError(f"the geometry has {geometry.n_elements} elements but the data {n_columns} columns")
    connectivity = getattr(geometry, "connectivity", settings.connectivity)
    if settings.spatial and connectivity != settings.connectivity:
        raise ValueError(f"the geometry has connectivity {connectivity} but the settings {settings.connectivity}")


class ContrastTest:
    """Permutation test of one contrast.

    Parameters
    ----------
    Y : numpy.ndarray (n, v)
    X : numpy.ndarray (n, p)
    weights : numpy.ndarray (p,) or (q, p)
    test : {'t', 'F'}
    geometry : geometry.Geometry
        The elements the columns of ``Y`` are (voxels of a volume, vertices
        of a mesh): clusters and TFCE are computed through it.
    shufflings : shuffling.Shufflings
    settings : Settings
    blocks : array-like (n,), optional
        Exchangeability blocks (as used to make the shufflings).
    """

    def __init__(self, Y, X, weights, test, geometry, shufflings, settings, blocks=None):
        _check_geometry(geometry, np.shape(Y)[1], settings)
        self.geometry = geometry
        self.shufflings = shufflings
        self.settings = settings
        self.prep = prepare(Y, X, weights, test, shufflings.scheme, blocks, settings)
        self.two_sided = settings.two_sided and test == "t"
        self.observed = self._observe()
        self._threshold = _tie_threshold(self.observed.compared).astype(np.float32)
        if self.prep.monotone:
            self._threshold_g = _g_from_t(self._threshold, self.prep.dof).astype(np.float32)

    @property
    def n_batches(self):
        """Number of fixed-size batches of shufflings."""
        return math.ceil(len(self.shufflings) / self.settings.batch_size)

    def _tiles(self, W, B):
        """GEMM tiles over voxels; their size depends only on the data and design shapes."""
        n_vox = self.prep.residuals.shape[1]
        budget = min(TILE_FLOATS, max(MIN_TILE_FLOATS, self.prep.residuals.size // 8))
        step = max(256, budget // max(W.shape[0], 1))
        for start in range(0, n_vox, step):
            stop = min(start + step, n_vox)
            G = W @ self.prep.residuals[:, start:stop]
            yield start, stop, G.reshape(B, self.prep.rows, stop - start)

    def _maps(self, orders, signs):
        """Full statistic maps (B, v) of a batch of shufflings."""
        B = len(orders)
        W = _shuffled_rows(self.prep.basis, orders, signs)
        out = np.empty((B, self.prep.residuals.shape[1]), dtype=np.float32)
        for start, stop, G in self._tiles(W, B):
            out[:, start:stop] = _statistic(G, self.prep)
        return out

    def _spatial(self, maps):
        """TFCE and cluster maxima of a batch of maps (B, v)."""
        s = self.settings
        result = {}
        if s.tfce:
            maxima = []
            for start in range(0, len(maps), TFCE_CHUNK):  # bounds the memory of the max-tree
                values = self.geometry.tfce(maps[start:start + TFCE_CHUNK], s.tfce_e, s.tfce_h, self.two_sided)
                maxima.append(np.abs(values).max(axis=1) if self.two_sided else values.max(axis=1))
            result["max_tfce"] = np.concatenate(maxima)
        if self.prep.cluster_threshold is not None:
            result.update(self._clusters(maps))
        return result

    def _clusters(self, maps, to_stat=None, threshold=None):
        """Largest cluster size and mass of each map (B, v).

        ``maps`` may hold a monotone transform of the statistic (``g``);
        ``threshold`` is then the transformed cluster-forming threshold and
        ``to_stat`` maps values back to the statistic for the masses.
        """
        threshold = self.prep.cluster_threshold if threshold is None else threshold
        sizes, masses = zip(*(
            max_cluster_measures(row, threshold, self.geometry, self.two_sided, to_stat, self.prep.cluster_threshold)
            for row in maps
        ))
        return {"max_size": np.asarray(sizes, dtype=np.float64), "max_mass": np.asarray(masses, dtype=np.float64)}

    def _observe(self):
        n = self.prep.residuals.shape[0]
        identity = (np.arange(n, dtype=np.int32)[None], np.ones((1, n), dtype=np.int8))
        with threadpool_limits(limits=1):  # as the null batches: the sums' order must not follow --n-cpus
            stat = self._maps(*identity)[0]
        observed = Observed(stat=stat, compared=_compared(stat, self.prep, self.settings.two_sided))
        s = self.settings
        if s.tfce:
            observed.tfce = self.geometry.tfce(stat, s.tfce_e, s.tfce_h, self.two_sided)
        if self.prep.cluster_threshold is not None:
            labels, sizes, masses = cluster_measures(stat, self.prep.cluster_threshold, self.geometry, self.two_sided)
            observed.cluster_labels = labels
            observed.cluster_sizes, observed.cluster_masses = sizes, masses
        return observed

    def _batch(self, index):
        start = index * self.settings.batch_size
        stop = min(start + self.settings.batch_size, len(self.shufflings))
        orders = self.shufflings.orders[start:stop]
        signs = self.shufflings.signs[start:stop]
        B = stop - start
        counts = np.zeros(self.prep.residuals.shape[1], dtype=np.int64)
        maxima = np.full(B, -np.inf)
        result = {}
        if self.prep.monotone and not self.settings.tfce:
            # t is an increasing function of g: compare, maximise and form
            # clusters on g, and turn into t only the maxima and cluster members
            W = _shuffled_rows(self.prep.basis, orders, signs)
            g_maps = np.empty((B, self.prep.residuals.shape[1]), dtype=np.float32) if self.settings.spatial else None
            for lo, hi, G in self._tiles(W, B):
                g = np.abs(G[:, 0, :]) if self.two_sided else G[:, 0, :]
                maxima = np.maximum(maxima, g.max(axis=1))
                counts[lo:hi] += np.count_nonzero(g >= self._threshold_g[lo:hi], axis=0)
                if g_maps is not None:
                    g_maps[:, lo:hi] = G[:, 0, :]
            maxima = _t_from_g(maxima, self.prep.dof)
            if g_maps is not None:
                result = self._clusters(g_maps, to_stat=lambda g: _t_from_g(g, self.prep.dof),
                                        threshold=float(_g_from_t(self.prep.cluster_threshold, self.prep.dof)))
        elif not self.settings.spatial:
            W = _shuffled_rows(self.prep.basis, orders, signs)
            for lo, hi, G in self._tiles(W, B):
                compared = _compared(_statistic(G, self.prep), self.prep, self.settings.two_sided)
                maxima = np.maximum(maxima, compared.max(axis=1))
                counts[lo:hi] += np.count_nonzero(compared >= self._threshold[lo:hi], axis=0)
        else:
            maps = self._maps(orders, signs)
            compared = _compared(maps, self.prep, self.settings.two_sided)
            maxima = compared.max(axis=1).astype(np.float64)
            counts += np.count_nonzero(compared >= self._threshold, axis=0)
            if self.settings.spatial:
                result = self._spatial(maps)
        return start, stop, maxima, counts, result

    def null(self, batches=None, progress=None):
        """Null distributions over the given batches (default: all).

        Parameters
        ----------
        batches : iterable of int, optional
            Batch indices to compute (a shard); others stay NaN.
        progress : callable, optional
            Called with the number of shufflings done after each batch.

        Returns
        -------
        NullDistribution
        """
        n = len(self.shufflings)
        batches = list(range(self.n_batches) if batches is None else batches)
        null = NullDistribution(
            max_stat=np.full(n, np.nan),
            exceedances=np.zeros(self.prep.residuals.shape[1], dtype=np.int64),
            max_tfce=np.full(n, np.nan) if self.settings.tfce else None,
            max_size=np.full(n, np.nan) if self.prep.cluster_threshold is not None else None,
            max_mass=np.full(n, np.nan) if self.prep.cluster_threshold is not None else None,
        )
        with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=max(1, self.settings.n_jobs)) as pool:
            for start, stop, maxima, counts, result in pool.map(self._batch, batches):
                null.max_stat[start:stop] = maxima
                null.exceedances += counts
                for name, values in result.items():
                    getattr(null, name)[start:stop] = values
                if progress is not None:
                    progress(stop - start)
        return null


def _p_from_null(observed_values, null_maxima, n_perm):
    """FWE p per observed value: (1 + #{max >= value}) / (1 + n_perm)."""
    ordered = np.sort(np.asarray(null_maxima, dtype=np.float64))
    threshold = _tie_threshold(observed_values)
    exceed = len(ordered) - np.searchsorted(ordered, threshold, side="left")
    return (1.0 + exceed) / (1.0 + n_perm)


def p_values(test, null):
    """Permutation p-values of one contrast (masked vectors; cluster p per voxel).

    Returns
    -------
    dict
        ``p`` (uncorrected voxel), ``pmaxt`` (voxel FWE), and when computed
        ``pmaxtfce``, ``pmaxsize``, ``pmaxmass`` (voxels outside clusters
        get p = 1).
    """
    n_perm = len(null.max_stat)
    if np.isnan(null.max_stat).any():
        raise ValueError("the null distribution is incomplete (missing shards)")
    observed = test.observed
    out = {
        "p": (1.0 + null.exceedances) / (1.0 + n_perm),
        "pmaxt": _p_from_null(observed.compared, null.max_stat, n_perm),
    }
    if null.max_tfce is not None:
        values = np.abs(observed.tfce) if test.two_sided else observed.tfce
        out["pmaxtfce"] = _p_from_null(values, null.max_tfce, n_perm)
    if null.max_size is not None:
        labels = observed.cluster_labels
        for key, measures, maxima in (("pmaxsize", observed.cluster_sizes, null.max_size),
                                      ("pmaxmass", observed.cluster_masses, null.max_mass)):
            p = np.ones(labels.shape, dtype=np.float64)
            for label, value in measures.items():
                p[labels == label] = _p_from_null(np.array([value]), maxima, n_perm)[0]
            out[key] = p
    return out


def cluster_maps(test):
    """Per-voxel size and mass of the observed cluster each voxel is in (0 outside)."""
    labels = test.observed.cluster_labels
    size = np.zeros(labels.shape, dtype=np.float32)
    mass = np.zeros(labels.shape, dtype=np.float32)
    for label, value in test.observed.cluster_sizes.items():
        size[labels == label] = value
        mass[labels == label] = test.observed.cluster_masses[label]
    return size, mass
