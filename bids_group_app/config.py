"""The configuration of a run: what the user asked for, as typed, frozen data.

:class:`Config` is built once from the command line (:mod:`.cli.parser`),
handed to the workflow, and saved with the outputs
(``logs/config-<timestamp>-<id>.json``), from which :meth:`Config.load`
reads it back. Its groups follow the sections of ``bids_group_app --help``:
inputs, model, estimation, parametric inference, permutation inference,
reports, resources. No stage below the CLI sees argparse.

The analysis options (estimation, parametric and permutation settings) are
``None`` when the user did not give them: a node of a BIDS Stats Models
document may carry them in ``Model.Software.bids_group_app`` (every saved
model does, so that ``--model`` on it reproduces the run), and
:func:`node_settings` resolves each option as *command line, else the
node's saved value, else the default*.

This module imports nothing heavy: the CLI answers ``--version`` and usage
errors without loading nilearn.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

#: Height controls of parametric thresholding (nilearn ``threshold_stats_img``).
HEIGHT_CONTROLS = ("fpr", "fdr", "bonferroni", "none")
#: Key of this app in ``Model.Software`` of a BIDS Stats Models node.
SOFTWARE_KEY = "bids_group_app"


@dataclass(frozen=True)
class InputsConfig:
    """Where the data are and which maps to select."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    derivatives: tuple = ()
    participant_label: tuple = ()
    filter: tuple = ()
    bids_filter_file: Path | None = None
    bids_database_dir: Path | None = None
    skip_bids_validation: bool = False
    surface_mesh: tuple = ()


@dataclass(frozen=True)
class ModelConfig:
    """The model: a BIDS Stats Models file, or the short design options."""

    model: Path | None = None
    one_sample: bool = False
    two_sample: str | None = None
    paired: str | None = None
    rm_anova: str | None = None
    covariates: tuple = ()
    demean: bool = False
    group_by: tuple = ()
    contrast: tuple = ()

    def short_options_given(self):
        """The short design options that were given, as ``--option`` names."""
        names = ("one_sample", "two_sample", "paired", "rm_anova", "covariates", "demean", "contrast", "group_by")
        return [f"--{n.replace('_', '-')}" for n in names if getattr(self, n)]


@dataclass(frozen=True)
class EstimationConfig:
    """Mask and smoothing (``None``: not given)."""

    mask: str | None = None
    smoothing_fwhm: float | None = None


@dataclass(frozen=True)
class ParametricConfig:
    """Parametric thresholding (``None``: not given)."""

    height_control: str | None = None
    alpha: float | None = None
    cluster_threshold: int | None = None
    two_sided: bool | None = None


@dataclass(frozen=True)
class PermutationConfig:
    """Permutation inference (``None``: not given) and its HPC sharding."""

    n_perm: int | None = None
    tfce: bool | None = None
    tfce_e: float | None = None
    tfce_h: float | None = None
    connectivity: int | None = None
    cluster_forming_p: float | None = None
    seed: int | None = None
    fwe_alpha: float | None = None
    shuffle: str | None = None
    exchangeability_blocks: str | None = None
    whole_block: bool | None = None
    perm_shard: str | None = None
    merge_perm_shards: bool = False


@dataclass(frozen=True)
class ReportsConfig:
    """What is rendered besides the results."""

    reports_only: bool = False
    no_reports: bool = False


@dataclass(frozen=True)
class ResourcesConfig:
    """CPUs, scratch space and logging."""

    n_cpus: int = 1
    work_dir: Path | None = None
    verbose: int = 0
    quiet: bool = False


GROUPS = {
    "inputs": InputsConfig,
    "model": ModelConfig,
    "estimation": EstimationConfig,
    "parametric": ParametricConfig,
    "permutation": PermutationConfig,
    "reports": ReportsConfig,
    "resources": ResourcesConfig,
}


@dataclass(frozen=True)
class Config:
    """Everything the user asked for, grouped as the CLI help is."""

    inputs: InputsConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    estimation: EstimationConfig = field(default_factory=EstimationConfig)
    parametric: ParametricConfig = field(default_factory=ParametricConfig)
    permutation: PermutationConfig = field(default_factory=PermutationConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    @classmethod
    def from_flat(cls, values):
        """Build from a flat mapping of option names (e.g. ``vars(namespace)``).

        Every key must belong to exactly one group; unknown keys raise
        ``TypeError`` (a programming error, not a user error).
        """
        values = dict(values)
        groups = {}
        for name, group in GROUPS.items():
            names = {f.name for f in fields(group)}
            groups[name] = group(**{k: _freeze(values.pop(k)) for k in list(values) if k in names})
        if values:
            raise TypeError(f"options that belong to no configuration group: {', '.join(sorted(values))}")
        return cls(**groups)

    def to_dict(self):
        """JSON-ready nested dict (paths as strings, tuples as lists)."""
        return {name: {f.name: _jsonable(getattr(getattr(self, name), f.name)) for f in fields(getattr(self, name))}
                for name in GROUPS}

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`to_dict`."""
        groups = {}
        for name, group in GROUPS.items():
            raw = dict(data.get(name, {}))
            kwargs = {}
            for f in fields(group):
                if f.name in raw:
                    value = raw[f.name]
                    if "Path" in str(f.type) and value is not None:
                        value = Path(value)
                    elif f.name == "derivatives" and value:
                        value = tuple(Path(v) for v in value)
                    kwargs[f.name] = _freeze(value)
            groups[name] = group(**kwargs)
        return cls(**groups)

    @classmethod
    def load(cls, path):
        """Read a configuration saved with the outputs (``logs/config-*.json``)."""
        return cls.from_dict(json.loads(Path(path).read_text())["Config"])


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------
# Analysis settings of a node: command line, else the saved model, else default

@dataclass(frozen=True)
class AnalysisSettings:
    """The resolved estimation, parametric and permutation settings of a node."""

    estimation: EstimationConfig
    parametric: ParametricConfig
    permutation: PermutationConfig


DEFAULTS = AnalysisSettings(
    EstimationConfig(mask=None, smoothing_fwhm=None),
    ParametricConfig(height_control="fpr", alpha=0.001, cluster_threshold=0, two_sided=True),
    PermutationConfig(n_perm=0, tfce=False, tfce_e=0.5, tfce_h=2.0, connectivity=6, cluster_forming_p=None,
                      seed=0, fwe_alpha=0.05, shuffle="auto", exchangeability_blocks=None, whole_block=False),
)

#: Defaults for maps on a surface mesh: TFCE with E=1, H=2 (Smith & Nichols 2009; PALM's ``-tfce2D``).
SURFACE_DEFAULTS = dataclasses.replace(
    DEFAULTS, permutation=dataclasses.replace(DEFAULTS.permutation, tfce_e=1.0, tfce_h=2.0))

#: ``Model.Software.bids_group_app`` keys of the analysis settings: (group, option) → key.
SOFTWARE_KEYS = {
    ("estimation", "mask"): "Mask",
    ("estimation", "smoothing_fwhm"): "SmoothingFWHM",
    ("parametric", "height_control"): "HeightControl",
    ("parametric", "alpha"): "Alpha",
    ("parametric", "cluster_threshold"): "ClusterThreshold",
    ("parametric", "two_sided"): "TwoSided",
    ("permutation", "n_perm"): "NumberOfPermutations",
    ("permutation", "tfce"): "TFCE",
    ("permutation", "tfce_e"): "TFCEExtent",
    ("permutation", "tfce_h"): "TFCEHeight",
    ("permutation", "connectivity"): "Connectivity",
    ("permutation", "cluster_forming_p"): "ClusterFormingP",
    ("permutation", "seed"): "Seed",
    ("permutation", "fwe_alpha"): "FWEAlpha",
    ("permutation", "shuffle"): "Shuffle",
    ("permutation", "exchangeability_blocks"): "ExchangeabilityBlocks",
    ("permutation", "whole_block"): "WholeBlock",
}
#: Settings that may be absent from a node (``None`` is a valid resolved value).
OPTIONAL_SETTINGS = {("estimation", "mask"), ("estimation", "smoothing_fwhm"),
                     ("permutation", "cluster_forming_p"), ("permutation", "exchangeability_blocks")}


def node_settings(config, software, defaults=DEFAULTS):
    """Resolve the analysis settings of one node.

    Parameters
    ----------
    config : Config
    software : dict
        The node's ``Model.Software.bids_group_app`` (may be empty).
    defaults : AnalysisSettings
        :data:`DEFAULTS`, or :data:`SURFACE_DEFAULTS` for maps on a mesh.

    Returns
    -------
    AnalysisSettings
        Each option from the command line when given, else from
        ``software``, else :data:`DEFAULTS`; ``--n-perm`` defaults to 5000
        when TFCE or cluster inference is on and no count was given.
    """
    resolved = {}
    for group in ("estimation", "parametric", "permutation"):
        given, default = getattr(config, group), getattr(defaults, group)
        values = {}
        for f in fields(given):
            key = SOFTWARE_KEYS.get((group, f.name))
            value = getattr(given, f.name)
            if value is None and key is not None and key in software:
                value = _freeze(software[key])
            if value is None and (group, f.name) not in OPTIONAL_SETTINGS:
                value = getattr(default, f.name)
            values[f.name] = value
        resolved[group] = dataclasses.replace(given, **values)
    permutation = resolved["permutation"]
    spatial = permutation.tfce or permutation.cluster_forming_p is not None
    if config.permutation.n_perm is None and "NumberOfPermutations" not in software and spatial:
        resolved["permutation"] = dataclasses.replace(permutation, n_perm=5000)
    return AnalysisSettings(**resolved)


def software_options(settings):
    """``Model.Software.bids_group_app`` content that pins ``settings``."""
    out = {}
    for (group, name), key in SOFTWARE_KEYS.items():
        value = getattr(getattr(settings, group), name)
        if value is not None or (group, name) in OPTIONAL_SETTINGS:
            out[key] = _jsonable(value)
    return out


def _check(condition, where, key, value, valid):
    if not condition:
        from bids_group_app.errors import UsageError

        raise UsageError(f"{where}: {SOFTWARE_KEY} setting {key}={value!r} is not valid; expected {valid}")


def _is_number(value, integer=False):
    """True for a finite int or float (not a bool); with ``integer``, a whole number.

    JSON gives NaN and infinities (``NaN``, ``Infinity``, ``1e999``) as
    floats and arbitrarily large integers as ints (never converted to float
    here: that would overflow).
    """
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return True
    return math.isfinite(value) and (not integer or value.is_integer())


def check_settings(settings, where):
    """Check resolved settings (those from a model file were not checked by the CLI).

    Raises
    ------
    UsageError
        Naming the setting, its value and what would be valid.
    """
    e, p, q = settings.estimation, settings.parametric, settings.permutation
    checks = [
        (e.mask is None or isinstance(e.mask, str), "Mask", e.mask, "a file path, mni152-brain or mni152-gm"),
        (e.smoothing_fwhm is None or (_is_number(e.smoothing_fwhm) and e.smoothing_fwhm >= 0), "SmoothingFWHM",
         e.smoothing_fwhm, "a number of mm >= 0"),
        (p.height_control in HEIGHT_CONTROLS, "HeightControl", p.height_control, " / ".join(HEIGHT_CONTROLS)),
        (_is_number(p.alpha) and 0 < p.alpha < 1, "Alpha", p.alpha, "a number in (0, 1)"),
        (_is_number(p.cluster_threshold, True) and p.cluster_threshold >= 0, "ClusterThreshold", p.cluster_threshold,
         "an integer >= 0"),
        (isinstance(p.two_sided, bool), "TwoSided", p.two_sided, "true or false"),
        (_is_number(q.n_perm, True) and q.n_perm >= 0, "NumberOfPermutations", q.n_perm, "an integer >= 0"),
        (isinstance(q.tfce, bool), "TFCE", q.tfce, "true or false"),
        (_is_number(q.tfce_e) and q.tfce_e > 0, "TFCEExtent", q.tfce_e, "a number > 0"),
        (_is_number(q.tfce_h) and q.tfce_h > 0, "TFCEHeight", q.tfce_h, "a number > 0"),
        (q.connectivity in (6, 18, 26) and not isinstance(q.connectivity, bool), "Connectivity", q.connectivity,
         "6, 18 or 26"),
        (q.cluster_forming_p is None or (_is_number(q.cluster_forming_p) and 0 < q.cluster_forming_p < 1),
         "ClusterFormingP", q.cluster_forming_p, "null or a number in (0, 1)"),
        (_is_number(q.seed, True) and q.seed >= 0, "Seed", q.seed, "an integer >= 0"),
        (_is_number(q.fwe_alpha) and 0 < q.fwe_alpha < 1, "FWEAlpha", q.fwe_alpha, "a number in (0, 1)"),
        (q.shuffle in ("auto", "signflip", "permute", "both"), "Shuffle", q.shuffle, "auto, signflip, permute or both"),
        (q.exchangeability_blocks is None or isinstance(q.exchangeability_blocks, str), "ExchangeabilityBlocks",
         q.exchangeability_blocks, "null or an entity/participants.tsv column name"),
        (isinstance(q.whole_block, bool), "WholeBlock", q.whole_block, "true or false"),
    ]
    for ok, key, value, valid in checks:
        _check(ok, where, key, value, valid)
    if q.n_perm == 0 and (q.tfce or q.cluster_forming_p is not None):
        from bids_group_app.errors import UsageError

        raise UsageError(f"{where}: TFCE and cluster inference need permutations: give --n-perm N with N > 0")
