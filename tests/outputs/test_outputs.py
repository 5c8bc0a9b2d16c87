"""Output naming and the staging writer."""

import json

import pandas as pd
import pytest

from bids_group_app.errors import OutputError
from bids_group_app.outputs.naming import CellNames, cell_entities, sanitize_label
from bids_group_app.outputs.writer import OutputWriter


@pytest.mark.parametrize("value, label", [
    ("patient-control", "patientMinusControl"),
    ("sex.M", "sexM"),
    ("Stimulus X Immediate Repetition", "StimulusXImmediateRepetition"),
    ("a+b", "aPlusB"),
    ("-1", "1"),
    ("___", "unnamed"),
])
def test_sanitize_label_gives_bids_alphanumerics(value, label):
    assert sanitize_label(value) == label
    assert sanitize_label(value).isalnum()


def cell_prefix(group_values):
    return CellNames("m", "n", cell_entities(group_values)).label


def test_cell_prefix_uses_bids_keys_and_input_for_first_level_contrast():
    assert cell_prefix({"task": "x", "contrast": "motor-left", "session": "1", "group": "patient"}) == \
        "task-x_input-motorMinusLeft_ses-1_group-patient"
    assert cell_prefix({}) == ""


def test_writer_moves_files_only_on_commit(tmp_path):
    out = tmp_path / "out"
    writer = OutputWriter(out)
    writer.json("a/b.json", {"x": 1})
    writer.table("a/t.tsv", pd.DataFrame({"c": [1.0, None]}))
    assert not (out / "a").exists()
    writer.commit()
    assert json.loads((out / "a" / "b.json").read_text()) == {"x": 1}
    assert (out / "a" / "t.tsv").read_text() == "c\n1.0\nn/a\n"
    assert [p.name for p in out.iterdir() if p.name.startswith(".bids_group_app")] == []


def test_writer_abort_leaves_nothing(tmp_path):
    writer = OutputWriter(tmp_path / "out")
    writer.text("x.txt", "partial")
    writer.abort()
    assert list((tmp_path / "out").iterdir()) == []


def test_writer_reports_uncreatable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot be created"):
        OutputWriter(blocker / "out")


def _strict_loads(text):
    """json.loads that refuses the non-standard NaN/Infinity tokens."""
    return json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))


def test_writer_json_is_strict_and_writes_missing_numbers_as_null(tmp_path):
    import numpy as np

    out = tmp_path / "out"
    writer = OutputWriter(out)
    writer.json("s.json", {"Threshold": float("nan"), "Peak": np.float32("inf"), "Rows": [1.5, -np.inf, (np.nan,)],
                           "Array": np.array([0.25, np.nan]), "Count": np.int64(3), "Value": np.float64(0.1)})
    writer.commit()
    assert _strict_loads((out / "s.json").read_text()) == {
        "Threshold": None, "Peak": None, "Rows": [1.5, None, [None]], "Array": [0.25, None], "Count": 3, "Value": 0.1}


@pytest.mark.parametrize("options", [
    ["--height-control", "fdr", "--alpha", "1e-9", "--covariates", "age", "score"],
    ["--n-perm", "8", "--cluster-forming-p", "0.5", "--one-sided", "--two-sample", "group"],
], ids=["fdr-nothing-survives-missing-covariate", "permutations-clusters"])
def test_every_json_of_a_run_is_strict(options, nilearn_dataset, run_cli, tmp_path):
    out = tmp_path / "out"
    assert run_cli([nilearn_dataset["root"], out, "group", "--filter", "contrast=motor", *options]) == 0
    written = sorted(out.rglob("*.json"))
    assert any(p.name.endswith("_statmap.json") for p in written)
    for path in written:
        _strict_loads(path.read_text())
