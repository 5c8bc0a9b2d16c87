"""What the sidecars of the permutation outputs say about their p-values.

The permutation maps (``stat-logp*``, ``stat-tfce``, ``stat-size``/``mass``),
their FWE-thresholded maps and the null-distribution tables share the
contrast's sidecar fields; their ``PValue`` must describe the permutation
p-value and its sidedness, not the parametric t/F tail probability of the
``stat-p`` map, and they carry no description of a z map they do not have.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PARAMETRIC_PVALUE = "one-sided, upper tail of the t/F distribution (nilearn convention)"
PARAMETRIC_ZSCORE = "standard-normal quantile of the one-sided p-value"
DESIGN = ["--filter", "contrast=motor", "--two-sample", "group", "--contrast", "diff=-1,1",
          "--contrast", "either=F:1,0;0,1", "--n-perm", "20", "--cluster-forming-p", "0.01"]


def _run(run_cli, bids_dir, out, *extra):
    assert run_cli([bids_dir, out, "group", "--quiet", *DESIGN, *extra]) == 0
    return {path.name: json.loads(path.read_text()) for path in Path(out).glob("node-*/*.json")}


@pytest.fixture(scope="module")
def one_sided(run_cli, nilearn_dataset, tmp_path_factory):
    return _run(run_cli, nilearn_dataset["root"], tmp_path_factory.mktemp("perm_sidecars") / "one", "--one-sided")


@pytest.fixture(scope="module")
def two_sided(run_cli, nilearn_dataset, tmp_path_factory):
    return _run(run_cli, nilearn_dataset["root"], tmp_path_factory.mktemp("perm_sidecars") / "two", "--two-sided")


def _permutation_sidecars(sidecars, contrast):
    found = {name: s for name, s in sidecars.items()
             if f"contrast-{contrast}_" in name and "NumberOfPermutations" in s}
    kinds = {"stat-logp_", "stat-logpmaxt_", "stat-size_", "stat-logpmaxsize_", "_thresh-maxt_statmap", "nulldist"}
    assert all(any(k in n for n in found) for k in kinds), sorted(found)
    return found


@pytest.mark.parametrize("run, contrast, side", [
    ("one_sided", "diff", "one-sided"), ("one_sided", "either", "one-sided"),
    ("two_sided", "diff", "two-sided"), ("two_sided", "either", "one-sided"),
])
def test_permutation_sidecars_describe_the_permutation_p_value(run, contrast, side, request):
    sidecars = request.getfixturevalue(run)
    for name, sidecar in _permutation_sidecars(sidecars, contrast).items():
        text = sidecar.get("PValue", "")
        assert "permutation" in text, name
        assert side in text and ({"one-sided", "two-sided"} - {side}).pop() not in text, (name, text)
        assert "t/F distribution" not in text, name
        assert sidecar.get("ZScore") != PARAMETRIC_ZSCORE, name
        assert sidecar["TwoSided"] is (side == "two-sided"), name


@pytest.mark.parametrize("run", ["one_sided", "two_sided"])
def test_parametric_sidecars_keep_the_parametric_p_value(run, request):
    """Guard: the stat-p/stat-z maps are the parametric ones (one-sided upper tail, nilearn)."""
    sidecars = request.getfixturevalue(run)
    for contrast in ("diff", "either"):
        for stat in ("p", "z"):
            [sidecar] = [s for n, s in sidecars.items() if f"contrast-{contrast}_stat-{stat}_statmap" in n]
            assert sidecar["PValue"] == PARAMETRIC_PVALUE and sidecar["ZScore"] == PARAMETRIC_ZSCORE
            assert "NumberOfPermutations" not in sidecar
