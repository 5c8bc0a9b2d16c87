"""Shufflings for permutation inference: sign-flips, permutations, blocks.

A shuffling is a pair ``(order, signs)`` acting on the rows of the data:
row ``j`` of the shuffled data is ``signs[j] * data[order[j]]``.

Schemes (Winkler et al., 2014, NeuroImage 92:381):

``signflip``
    Independent sign-flips (ISE): the tested effect is a mean, the errors
    are assumed symmetric. With ``whole_block``, all rows of a block flip
    together.
``permute``
    Permutations (EE): exchangeable errors. Without blocks, any row goes
    anywhere; with blocks, rows are permuted within their block (e.g. the
    conditions of one subject in a repeated-measures ANOVA), or, with
    ``whole_block``, blocks are permuted as wholes (blocks of equal size,
    rows matched by position).
``both``
    A permutation followed by sign-flips (EE and ISE together), used when a
    model has both mean-like and other contrasts, so that every contrast
    shares the same shufflings.

Only *distinct* shufflings count: two permutations that give the same
permuted design (rows of X that are identical, e.g. two subjects of the
same group) are one. When the number of distinct shufflings is at most
``n_perm + 1``, all of them are enumerated (exhaustive test) and the
identity is left out of the null; otherwise ``n_perm`` are drawn uniformly
(with replacement, the identity possible) from the seed, so the
permutation p-value ``(1 + #{null >= observed}) / (1 + n_perm)`` is exact
or valid respectively.

Memory: the shufflings are held as arrays (5 bytes a row each) for the whole
run, and each gets its null maxima; :func:`count_shufflings` and
:func:`shuffling_memory` size them before they are made, so that a run can
refuse an ``n_perm`` that cannot fit.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

SCHEMES = ("signflip", "permute", "both")
MAX_ENUMERATION = 1_000_000


@dataclass
class Shufflings:
    """A set of shufflings of ``n`` rows.

    Attributes
    ----------
    orders : numpy.ndarray of shape (n_shufflings, n), int32
    signs : numpy.ndarray of shape (n_shufflings, n), int8
    scheme : str
    exhaustive : bool
        True when every distinct shuffling (but the identity) is listed.
    n_distinct : int or float
        Number of distinct shufflings (``inf`` if astronomically many).
    """

    orders: np.ndarray
    signs: np.ndarray
    scheme: str
    exhaustive: bool
    n_distinct: float

    def __len__(self):
        return len(self.orders)

    def describe(self):
        """Sidecar fields."""
        return {
            "Scheme": self.scheme,
            "Exhaustive": self.exhaustive,
            "NumberOfDistinctShufflings": (None if not math.isfinite(self.n_distinct)
                                           else int(self.n_distinct) if self.n_distinct < 1e15 else float(self.n_distinct)),
        }


def _row_labels(X):
    """Integer label per row: equal rows of X share a label."""
    _, labels = np.unique(np.round(np.asarray(X, dtype=float), 10), axis=0, return_inverse=True)
    return labels.ravel()


def _block_index(blocks, n):
    if blocks is None:
        return [np.arange(n)]
    blocks = np.asarray(blocks)
    return [np.flatnonzero(blocks == b) for b in dict.fromkeys(blocks.tolist())]


def _multiset_count(labels):
    count = math.factorial(len(labels))
    for m in Counter(labels).values():
        count //= math.factorial(m)
    return count


def count_distinct(X, scheme, blocks=None, whole_block=False):
    """Number of distinct shufflings of the rows of X under a scheme."""
    n = len(X)
    labels = _row_labels(X)
    groups = _block_index(blocks, n)
    perms = 1
    if scheme in ("permute", "both"):
        if whole_block:
            perms = _multiset_count([tuple(labels[g]) for g in groups])
        else:
            perms = math.prod(_multiset_count(labels[g].tolist()) for g in groups)
    flips = 1
    if scheme in ("signflip", "both"):
        flips = 2 ** (len(groups) if whole_block else n)
    return perms * flips


def _exhaustive(n_distinct, n_perm):
    """Whether every distinct shuffling is enumerated (instead of drawing ``n_perm``)."""
    return n_distinct <= min(n_perm + 1, MAX_ENUMERATION)


def count_shufflings(X, scheme, n_perm, blocks=None, whole_block=False):
    """Number of shufflings :func:`make_shufflings` returns, without making them.

    All distinct ones but the identity when they are enumerated, else ``n_perm``.
    """
    n_distinct = count_distinct(X, scheme, blocks, whole_block)
    return n_distinct - 1 if _exhaustive(n_distinct, n_perm) else n_perm


def shuffling_memory(n_rows, n_shufflings, n_null):
    """Bytes a permutation run holds for its shufflings and null distributions.

    Per shuffling: its order (int32) and signs (int8), twice (the arrays, and
    the copy hashed for the shard key), and each of the ``n_null`` null
    maxima (float64) three times (the null, its sorted copy for p-values, the
    null table) plus the table's shuffling index. The voxel-sized arrays of
    the engine do not grow with the number of shufflings and are not counted.

    Parameters
    ----------
    n_rows : int
        Rows of the design (maps).
    n_shufflings : int
    n_null : int
        Null distributions kept: 1 (maximum statistic), +1 with TFCE, +2
        with cluster inference (size and mass).

    Returns
    -------
    int
    """
    return n_shufflings * (2 * 5 * n_rows + 8 * (3 * n_null + 1))


def _multiset_permutations(items):
    """Distinct orderings of indices whose values are ``items`` (as index lists)."""
    by_value = {}
    for i, v in enumerate(items):
        by_value.setdefault(v, []).append(i)
    values = list(items)
    out = []

    def recurse(prefix, remaining):
        if not remaining:
            out.append(list(prefix))
            return
        for value in sorted(remaining, key=str):
            if remaining[value] == 0:
                continue
            remaining[value] -= 1
            prefix.append(value)
            recurse(prefix, {k: c for k, c in remaining.items() if c})
            prefix.pop()
            remaining[value] += 1

    recurse([], Counter(values))
    # map each value sequence to row indices: the k-th occurrence of a value
    # takes the k-th row holding that value (rows with one value are equal)
    orders = []
    for sequence in out:
        used = {v: iter(idx) for v, idx in by_value.items()}
        orders.append([next(used[v]) for v in sequence])
    return orders


def _enumerate(X, scheme, blocks, whole_block):
    n = len(X)
    labels = _row_labels(X)
    groups = _block_index(blocks, n)
    if scheme in ("permute", "both"):
        if whole_block:
            signatures = [tuple(labels[g]) for g in groups]
            block_orders = _multiset_permutations(signatures)
            orders = []
            for bo in block_orders:
                order = np.empty(n, dtype=np.int32)
                for position, source in enumerate(bo):
                    order[groups[position]] = groups[source]
                orders.append(order)
        else:
            per_block = [[g[np.asarray(o)] for o in _multiset_permutations(labels[g].tolist())] for g in groups]
            orders = []
            for combo in itertools.product(*per_block):
                order = np.empty(n, dtype=np.int32)
                for g, o in zip(groups, combo):
                    order[g] = o
                orders.append(order)
    else:
        orders = [np.arange(n, dtype=np.int32)]
    if scheme in ("signflip", "both"):
        units = groups if whole_block else [np.array([i]) for i in range(n)]
        flips = []
        for bits in itertools.product((1, -1), repeat=len(units)):
            s = np.empty(n, dtype=np.int8)
            for unit, b in zip(units, bits):
                s[unit] = b
            flips.append(s)
    else:
        flips = [np.ones(n, dtype=np.int8)]
    all_orders = np.array([o for o in orders for _ in flips], dtype=np.int32)
    all_signs = np.array([s for _ in orders for s in flips], dtype=np.int8)
    return all_orders, all_signs


def _is_identity(order, signs):
    return np.array_equal(order, np.arange(len(order))) and np.all(signs == 1)


def _draw(rng, n, scheme, groups, whole_block):
    order = np.arange(n, dtype=np.int32)
    if scheme in ("permute", "both"):
        if whole_block:
            sizes = {len(g) for g in groups}
            if len(sizes) > 1:
                raise ValueError("whole-block permutation needs blocks of equal size")
            for position, source in enumerate(rng.permutation(len(groups))):
                order[groups[position]] = groups[source]
        else:
            for g in groups:
                order[g] = g[rng.permutation(len(g))]
    signs = np.ones(n, dtype=np.int8)
    if scheme in ("signflip", "both"):
        if whole_block:
            bits = rng.integers(0, 2, size=len(groups)) * 2 - 1
            for g, b in zip(groups, bits):
                signs[g] = b
        else:
            signs = (rng.integers(0, 2, size=n) * 2 - 1).astype(np.int8)
    return order, signs


def make_shufflings(X, scheme, n_perm, seed, blocks=None, whole_block=False):
    """The shufflings used for every contrast of a model.

    Parameters
    ----------
    X : numpy.ndarray of shape (n, p)
        Design matrix (its equal rows define which permutations are distinct).
    scheme : {'signflip', 'permute', 'both'}
    n_perm : int
        Number of shufflings wanted in the null (besides the identity).
    seed : int
    blocks : array-like of shape (n,), optional
        Exchangeability block of each row.
    whole_block : bool
        Shuffle blocks as wholes instead of rows within blocks.

    Returns
    -------
    Shufflings
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    n = len(X)
    groups = _block_index(blocks, n)
    if whole_block and scheme in ("permute", "both") and len({len(g) for g in groups}) > 1:
        raise ValueError("whole-block permutation needs exchangeability blocks of equal size")
    n_distinct = count_distinct(X, scheme, blocks, whole_block)
    if _exhaustive(n_distinct, n_perm):
        orders, signs = _enumerate(X, scheme, blocks, whole_block)
        keep = np.array([not _is_identity(o, s) for o, s in zip(orders, signs)])
        return Shufflings(orders[keep], signs[keep], scheme, True, n_distinct)
    rng = np.random.default_rng(seed)
    orders = np.empty((n_perm, n), dtype=np.int32)
    signs = np.empty((n_perm, n), dtype=np.int8)
    for k in range(n_perm):
        orders[k], signs[k] = _draw(rng, n, scheme, groups, whole_block)
    return Shufflings(orders, signs, scheme, False, n_distinct if n_distinct < 1e300 else math.inf)
