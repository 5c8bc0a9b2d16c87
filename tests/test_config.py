"""The configuration: built from the command line, saved with the outputs, reloadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bids_group_app.cli.parser import parse_args
from bids_group_app.config import DEFAULTS, Config, node_settings
from bids_group_app.errors import UnknownAnalysisLevelError, UsageError


def test_config_round_trips_through_json(tmp_path):
    config = parse_args(["ds", "out", "group", "--covariates", "age", "sex", "--filter", "task=x", "--n-perm", "10",
                         "--tfce", "--derivatives", "d1", "d2", "-w", str(tmp_path)])
    data = json.loads(json.dumps(config.to_dict()))
    assert Config.from_dict(data) == config
    assert config.model.covariates == ("age", "sex") and config.inputs.derivatives == (Path("d1"), Path("d2"))


def test_saved_config_reloads(nilearn_dataset, tmp_path, run_cli):
    argv = [nilearn_dataset["root"], tmp_path / "out", "group", "--two-sided", "--seed", "3"]
    assert run_cli(argv) == 0
    [saved] = (tmp_path / "out" / "logs").glob("config-*.json")
    assert Config.load(saved) == parse_args([str(a) for a in argv] + ["--no-reports"])


def test_unset_options_resolve_from_the_model_then_the_defaults():
    config = parse_args(["ds", "out", "group", "--alpha", "0.01"])
    settings = node_settings(config, {"Alpha": 0.2, "HeightControl": "fdr", "TFCE": True})
    assert settings.parametric.alpha == 0.01  # command line first
    assert settings.parametric.height_control == "fdr"  # then the model
    assert settings.permutation.tfce_e == DEFAULTS.permutation.tfce_e  # then the default
    assert settings.permutation.n_perm == 5000  # TFCE without a count


def test_unknown_level_and_model_with_short_options_fail_in_the_parser():
    with pytest.raises(UnknownAnalysisLevelError):
        parse_args(["ds", "out", "session"])
    with pytest.raises(UsageError, match="--covariates"):
        parse_args(["ds", "out", "group", "--model", "m.json", "--covariates", "age"])
