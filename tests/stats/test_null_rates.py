"""FWE error rate of the permutation engine under the null (slow).

Runs ``benchmarks/null_fwe_rates.py`` with R = 200 smoothed-noise datasets
per design (one-sample with sign-flips; regression with an intercept, a
correlated nuisance covariate carrying a real effect, and Freedman–Lane
permutations), n_perm = 500, and checks that the number of datasets with a
family-wise rejection at alpha = 0.05 lies in the central 99% interval of
Binomial(200, 0.05) for voxel, TFCE, cluster-size and cluster-mass
inference. Takes about 3 minutes on 2 cores; run with ``pytest -m slow``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "null_fwe_rates.py"


def load_script():
    """Import the benchmark script as a module (registered so worker processes find it)."""
    name = "null_fwe_rates"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_null_fwe_rates_within_binomial_interval():
    script = load_script()
    summary = script.null_fwe_rates(n_datasets=200, n_perm=500, seed=0, n_subjects=20, alpha=0.05,
                                    processes=min(2, os.cpu_count() or 1))
    table = script.format_table(summary)
    print(table)
    assert {row["design"] for row in summary["rows"]} == {"one-sample", "regression"}
    assert {row["key"] for row in summary["rows"]} == {"pmaxt", "pmaxtfce", "pmaxsize", "pmaxmass"}
    schemes = {row["design"]: row["scheme"] for row in summary["rows"]}
    assert schemes == {"one-sample": "signflip", "regression": "permute"}
    lo, hi = summary["rows"][0]["interval"]
    assert (lo, hi) == (3, 19)  # binom.ppf(0.005 / 0.995, 200, 0.05)
    failures = [row for row in summary["rows"] if not row["passed"]]
    assert not failures, "FWE rate outside the binomial 99% interval:\n" + table
    for design, rate in summary["uncorrected"].items():
        assert 0.04 <= rate <= 0.06, f"uncorrected voxel rate {rate} for {design}\n" + table
