"""Reading participants.tsv (whitespace, empty files, infinite numbers); joining it onto the selected maps, and what the join reports."""

from __future__ import annotations

import pandas as pd
import pytest

from bids_group_app.errors import DataError
from bids_group_app.inputs.participants import join_participants, levels, read_participants

LISTED = ["01", "02", "03", "04", "05"]


def _maps(subjects):
    return pd.DataFrame({"subject": subjects, "path": [f"/d/sub-{s}.nii.gz" for s in subjects]})


def _participants():
    return pd.DataFrame({"age": [20.0, 30.0, 40.0, 50.0, 60.0]}, index=pd.Index(LISTED, name="participant_id"))


@pytest.mark.parametrize("chosen", [None, "*", ["*"]])
def test_without_a_selection_rows_without_maps_are_reported(chosen, caplog):
    _, report = join_participants(_maps(["01", "02", "03"]), _participants(), ["subject"], chosen=chosen)
    assert report == {"without_row": [], "without_maps": ["04", "05"], "not_selected": []}
    assert "participants.tsv rows with no selected map: 04, 05" in caplog.text


@pytest.mark.parametrize("chosen", [["01", "02"], ["sub-01", "sub-02"], ("02", "01")])
def test_rows_left_out_by_the_selection_are_not_said_to_lack_maps(chosen, caplog):
    caplog.set_level("INFO")
    joined, report = join_participants(_maps(["01", "02"]), _participants(), ["subject"], chosen=chosen)
    assert report == {"without_row": [], "without_maps": [], "not_selected": ["03", "04", "05"]}
    assert "no selected map" not in caplog.text and "WARNING" not in [r.levelname for r in caplog.records]
    assert "3 participants.tsv row(s) left out by the subject selection" in caplog.text
    assert joined["age"].tolist() == [20.0, 30.0]


def test_a_chosen_subject_without_maps_is_still_reported():
    """A chosen subject whose maps other filters removed still lacks maps: that is reported."""
    _, report = join_participants(_maps(["01"]), _participants(), ["subject"], chosen=["01", "02"])
    assert report == {"without_row": [], "without_maps": ["02"], "not_selected": ["03", "04", "05"]}


def test_a_single_label_is_one_subject():
    """A model's Input may give ``"subject": "sub-01"`` (one string, not its characters)."""
    _, report = join_participants(_maps(["01"]), _participants(), ["subject"], chosen="sub-01")
    assert report == {"without_row": [], "without_maps": [], "not_selected": ["02", "03", "04", "05"]}


def _read_tsv(tmp_path, text):
    """read_participants on a participants.tsv holding ``text``."""
    (tmp_path / "participants.tsv").write_text(text)
    return read_participants(tmp_path)


def test_whitespace_around_cells_and_headers_is_stripped(tmp_path):
    table = _read_tsv(tmp_path, "participant_id \t sex\tage \nsub-01\tM \t 30\nsub-02 \tM\t n/a \nsub-03\t F\t40\n")
    assert list(table.columns) == ["sex", "age"]
    assert list(table.index) == ["01", "02", "03"]
    assert table["sex"].tolist() == ["M", "M", "F"]
    assert levels(table["sex"]) == ["F", "M"]
    assert table["age"].dtype == float and table["age"].isna().tolist() == [False, True, False]


def test_headers_equal_once_stripped_are_refused(tmp_path):
    with pytest.raises(DataError, match="age"):
        _read_tsv(tmp_path, "participant_id\tage\tage \nsub-01\t1\t2\n")


@pytest.mark.parametrize("text", ["", "\n"], ids=["0-bytes", "blank-line"])
def test_an_empty_file_is_bad_data(tmp_path, text):
    with pytest.raises(DataError, match="empty"):
        _read_tsv(tmp_path, text)


@pytest.mark.parametrize("value", ["inf", "-Infinity", "1e999"])
def test_an_infinite_number_is_bad_data_naming_the_column_and_participant(tmp_path, value):
    with pytest.raises(DataError, match=r"'age'.*02"):
        _read_tsv(tmp_path, f"participant_id\tage\nsub-01\t3\nsub-02\t{value}\n")
