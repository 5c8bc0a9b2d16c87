"""The naming module builds every output name and parses it back."""

from __future__ import annotations

import pytest

from bids_group_app.outputs.commit import relabel_model
from bids_group_app.outputs.naming import (
    FWE_KINDS,
    LABEL_LIMIT,
    CellNames,
    cell_entities,
    parse,
    parse_shard_file,
    sanitize_label,
    shard_file,
)
from bids_group_app.errors import UsageError

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


# --------------------------------------------------------------------------
# Long labels (file name components must stay under 255 bytes)
# --------------------------------------------------------------------------
LONG = "a" * 300


def test_a_long_label_is_cut_and_followed_by_a_hash_of_the_whole_label():
    label = sanitize_label(LONG)
    assert len(label) == LABEL_LIMIT
    prefix, digest = label[:-8], label[-8:]
    assert prefix == "a" * (LABEL_LIMIT - 8)
    assert int(digest, 16) >= 0 and digest == digest.lower()
    # stable across runs (not Python's salted hash): sha1 of the full label
    import hashlib
    assert digest == hashlib.sha1(LONG.encode()).hexdigest()[:8]


def test_long_labels_stay_distinct_and_short_ones_unchanged():
    a, b = sanitize_label(LONG + "x"), sanitize_label(LONG + "y")
    assert a != b and a[:-8] == b[:-8]
    exact = "b" * LABEL_LIMIT
    assert sanitize_label(exact) == exact
    assert sanitize_label("patient-control") == "patientMinusControl"


def test_capping_is_idempotent():
    label = sanitize_label("long name " * 40)
    assert sanitize_label(label) == label


def test_worst_case_names_fit_in_one_name_component():
    """Model (relabelled: +8 hex digits), node, contrast and one GroupBy value, all long; longest stat/thresh."""
    model = sanitize_label(LONG) + "0123abcd"
    cell = CellNames(model, LONG, cell_entities({"contrast": LONG}))
    names = [cell.statmap(LONG, "t", kind.label, ext) for kind in FWE_KINDS for ext in (".nii.gz", ".json")]
    names += [cell.statmap(LONG, kind.logp) for kind in FWE_KINDS]
    names += [cell.statmap(LONG, "z", "bonferroni"), cell.clusters(LONG, "bonferroni", ".json"),
              cell.nulldist(LONG, ".json"), cell.design(".json"), cell.mask(), cell.figure("corrdesign"),
              cell.figure("contrast", LONG), cell.figure("slices", LONG, thresh="bonferroni"),
              cell.figure("glass", LONG, stat="logpmaxtfce"), cell.figure("viewer", LONG, "z", extension=".html")]
    for relpath in names:
        for component in relpath.split("/"):
            assert len(component.encode()) < 255, relpath
        parsed = parse(relpath)
        assert parsed.relpath == relpath and parsed.get("model") == model


def test_a_name_still_too_long_is_a_usage_error_naming_the_labels():
    cell = CellNames(sanitize_label(LONG), LONG, cell_entities({f"column{i}" + LONG: LONG + str(i) for i in range(4)}))
    with pytest.raises(UsageError, match="255") as info:
        cell.statmap(LONG, "t")
    assert "GroupBy" in str(info.value)
