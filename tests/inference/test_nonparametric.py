"""The memory guard of permutation inference: refuse an ``--n-perm`` whose shufflings cannot fit."""

from __future__ import annotations

import numpy as np
import pytest

from bids_group_app.errors import UsageError
from bids_group_app.inference.nonparametric import available_memory, check_memory
from bids_group_app.stats.shuffling import count_shufflings, make_shufflings, shuffling_memory

GIB = 1 << 30


def test_memory_is_the_shufflings_and_null_values():
    # orders int32 + signs int8 (and their copy for the shard key): 10 bytes a row;
    # each null maximum (float64) is held 3 times (null, sorted copy, table) plus the table's index
    assert shuffling_memory(n_rows=6, n_shufflings=1000, n_null=1) == 1000 * (60 + 32)
    assert shuffling_memory(n_rows=6, n_shufflings=1000, n_null=4) == 1000 * (60 + 104)


def test_memory_estimate_bounds_the_arrays_really_made():
    X = np.column_stack([np.ones(20), np.arange(20.0)])
    made = make_shufflings(X, "permute", n_perm=5000, seed=0)
    held = made.orders.nbytes + made.signs.nbytes + 8 * len(made)  # the shufflings and one null array
    assert held <= shuffling_memory(len(X), len(made), 1) <= 3 * held


@pytest.mark.parametrize("X, scheme, n_perm", [
    (np.ones((5, 1)), "signflip", 10),  # 32 sign-flips: all 31 but the identity
    (np.ones((5, 1)), "signflip", 1_000_000_000),
    (np.column_stack([np.ones(6), np.arange(6.0)]), "permute", 100),  # 720 permutations: drawn
    (np.column_stack([np.ones(6), np.arange(6.0)]), "permute", 719),  # all 719
    (np.column_stack([np.ones(6), np.arange(6.0)]), "permute", 5000),
])
def test_count_shufflings_is_what_make_shufflings_returns(X, scheme, n_perm):
    count = count_shufflings(X, scheme, n_perm)
    if n_perm < 10_000:
        assert count == len(make_shufflings(X, scheme, n_perm, seed=1))
    else:
        assert count == 31


def test_check_memory_refuses_naming_the_option_the_estimate_and_the_largest_n_perm():
    with pytest.raises(UsageError) as info:
        check_memory(1_000_000_000, 1_000_000_000, n_rows=6, n_null=1, available=4 * GIB, where="node 'x'")
    message = str(info.value)
    largest = 4 * GIB // (60 + 32)
    assert "--n-perm 1000000000" in message and "node 'x'" in message
    assert "85.7 GiB" in message and "4.0 GiB" in message and f"--n-perm {largest}" in message
    assert shuffling_memory(6, largest, 1) <= 4 * GIB < shuffling_memory(6, largest + 1, 1)


def test_check_memory_accepts_what_fits_and_unknown_memory():
    check_memory(5000, 5000, n_rows=100, n_null=4, available=GIB, where="node 'x'")
    check_memory(10**12, 10**12, n_rows=100, n_null=4, available=None, where="node 'x'")


def test_available_memory_reads_the_system():
    available = available_memory()
    assert available is None or 0 < available < 1 << 50
