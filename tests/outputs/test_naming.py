"""The naming module builds every output name and parses it back."""

from __future__ import annotations

import pytest

from bids_group_app.outputs.commit import relabel_model
from bids_group_app.outputs.naming import (
    FWE_KINDS,
    CellNames,
    cell_entities,
    parse,
    parse_shard_file,
    shard_file,
)

CELL = CellNames("regression", "group level", cell_entities({"task": "x", "contrast": "motor-left", "stat": "a"}))


def test_cell_entities_sanitise_and_rename_reserved_keys():
    assert CELL.cell == (("task", "x"), ("input", "motorMinusLeft"), ("bystat", "a"))
    assert CELL.folder == "node-groupLevel"


@pytest.mark.parametrize("build, suffix, extra", [
    (lambda c: c.design(), "design", {}),
    (lambda c: c.design(".json"), "design", {}),
    (lambda c: c.mask(), "mask", {}),
    (lambda c: c.statmap("a - b", "t"), "statmap", {"contrast": "aMinusB", "stat": "t"}),
    (lambda c: c.statmap("a", "t", "maxtfce", ".json"), "statmap", {"contrast": "a", "stat": "t", "thresh": "maxtfce"}),
    (lambda c: c.clusters("a", "fdr"), "clusters", {"contrast": "a", "thresh": "fdr"}),
    (lambda c: c.nulldist("a"), "nulldist", {"contrast": "a"}),
    (lambda c: c.figure("slices", "a", stat="logp"), "slices", {"contrast": "a", "stat": "logp"}),
])
def test_every_name_parses_back(build, suffix, extra):
    relpath = build(CELL)
    name = parse(relpath)
    assert name.relpath == relpath and name.suffix == suffix
    assert name.get("model") == "regression" and name.cell == CELL.cell
    assert {k: name.get(k) for k in extra} == extra
    if not relpath.startswith("figures/"):
        assert name.folder == "node-groupLevel"
        assert CellNames.from_name(name, "group level") == CELL


def test_relabel_changes_the_model_entity_only():
    relpath = CELL.statmap("a", "z", "fpr")
    assert relabel_model(relpath, "regression", "regression1234abcd") == relpath.replace(
        "model-regression_", "model-regression1234abcd_")
    assert relabel_model("logs/config-1-2.json", "regression", "x") == "logs/config-1-2.json"
    assert relabel_model(CELL.mask(), "other", "x") == CELL.mask()


def test_shard_names_parse_back():
    assert parse_shard_file(shard_file("abc123", 2, 5)) == ("abc123", 2, 5)
    assert parse_shard_file("abc-shard-2.npz") is None


def test_inference_kinds_are_defined_once():
    assert [k.label for k in FWE_KINDS] == ["maxt", "maxtfce", "maxsize", "maxmass"]
    assert [k.logp for k in FWE_KINDS] == ["logpmaxt", "logpmaxtfce", "logpmaxsize", "logpmaxmass"]
