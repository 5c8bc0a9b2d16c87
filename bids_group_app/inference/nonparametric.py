"""Permutation inference of a model cell: engine set-up, shards, output maps.

This stage sits between the planned cell (:mod:`bids_group_app.model.design`,
:mod:`bids_group_app.inputs.data_matrix`) and the outputs: it chooses the
shufflings (scheme, exchangeability blocks) from the node's resolved settings,
runs :mod:`bids_group_app.stats.permutation` on a
the data matrix's geometry (voxels of the mask, or vertices of a mesh) for each contrast (or
one shard of it, or merges saved shards), and turns observed statistics and
null distributions into the ``stat-logp*``, ``stat-tfce``,
``stat-size``/``stat-mass`` maps, the null-distribution tables and the
sidecar fields; :mod:`bids_group_app.workflow.execute` writes them and the
FWE-thresholded maps. Before the shufflings are made, their memory (and that
of the null distributions) is estimated and an ``--n-perm`` that does not
fit in the available memory is refused (:func:`check_memory`).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bids_group_app.inference import shards
from bids_group_app.errors import DataError, UsageError
from bids_group_app.outputs.naming import FWE_KINDS
from bids_group_app.stats.permutation import TIE_TOLERANCE, ContrastTest, Settings, choose_scheme, p_values, cluster_maps
from bids_group_app.stats.shuffling import count_shufflings, make_shufflings, shuffling_memory

LOGGER = logging.getLogger(__name__)
GIB = 1 << 30
P_VALUE_CONVENTION = (
    "p = (1 + #{null >= observed}) / (1 + NumberOfPermutations), the unpermuted data counted once; "
    "exhaustive tests use every distinct shuffling and leave out the identity; a null value at most "
    f"TieTolerance ({TIE_TOLERANCE:g}) times max(1, |observed|) below the observed one counts as a tie "
    "(float32 rounding); maps hold -log10(p)"
)


@dataclass
class BlockSpec:
    """Exchangeability blocks of a cell."""

    variable: str | None
    labels: np.ndarray | None
    whole_block: bool
    scheme: str | None = None  # a scheme the blocks require (None: the settings' or the design's choice)


def engine_settings(settings, n_jobs=1):
    """Engine settings from a node's resolved analysis settings.

    Parameters
    ----------
    settings : bids_group_app.config.AnalysisSettings
        Resolved (see :func:`bids_group_app.config.node_settings`); the
        sidedness is the parametric one, shared by both inferences.
    n_jobs : int
    """
    permutation = settings.permutation
    return Settings(
        two_sided=settings.parametric.two_sided,
        tfce=permutation.tfce,
        tfce_e=permutation.tfce_e,
        tfce_h=permutation.tfce_h,
        connectivity=permutation.connectivity,
        cluster_forming_p=permutation.cluster_forming_p,
        n_jobs=n_jobs,
    )


def resolve_blocks(cell):
    """Exchangeability blocks from the node's settings, or the design.

    The settings (``--exchangeability-blocks``, else the node's
    ``Model.Software.bids_group_app.ExchangeabilityBlocks``); else
    ``subject`` when the design has subject columns (paired, repeated
    measures); else, when a subject has several maps in a design without
    subject columns (X naming first-level contrasts, or run maps entering a
    Dataset node as rows, as PyBIDS builds them), ``subject`` blocks that
    sign-flip as wholes: each subject's maps keep their dependence, which
    is valid for any contrast when the subjects' error vectors are
    symmetric (Winkler et al., 2014).
    """
    variable = cell.settings.permutation.exchangeability_blocks
    whole = bool(cell.settings.permutation.whole_block)
    scheme = None
    if variable is None and any(c.startswith("sub-") for c in cell.design.matrix.columns):
        variable = "subject"
    elif variable is None and cell.design.repeated_subjects:
        variable, whole = "subject", True
        scheme = "signflip" if cell.settings.permutation.shuffle == "auto" else None
    if variable is None:
        return BlockSpec(None, None, False)
    rows = cell.design.rows
    if variable not in rows.columns:
        available = [c for c in rows.columns if not c.startswith("_") and c != "path"]
        raise UsageError(f"exchangeability blocks '{variable}' is not an entity or participants.tsv column; available: {', '.join(available)}")
    labels = rows[variable]
    if labels.isna().any():
        raise DataError(f"exchangeability blocks '{variable}' is missing (n/a) for some maps of node '{cell.node.name}'")
    return BlockSpec(variable, labels.astype(str).to_numpy(), whole, scheme)


def available_memory():
    """Bytes of memory available to this process now, or None when unknown.

    ``MemAvailable`` of ``/proc/meminfo`` (else the free pages of
    ``os.sysconf``), lowered to what a cgroup v2 memory limit leaves
    (containers, SLURM).
    """
    available = None
    try:
        with open("/proc/meminfo") as stream:
            fields = dict(line.split(":", 1) for line in stream if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = None
    try:
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as current:
            text = limit.read().strip()
            if text != "max":
                left = int(text) - int(current.read().strip())
                available = left if available is None else min(available, left)
    except (OSError, ValueError):
        pass
    return available


def check_memory(n_perm, n_shufflings, n_rows, n_null, available, where):
    """Refuse shufflings whose arrays cannot fit in the available memory.

    Parameters
    ----------
    n_perm : int
        The number asked for (``--n-perm`` / ``NumberOfPermutations``).
    n_shufflings : int
        The number that would be made (:func:`~bids_group_app.stats.shuffling.count_shufflings`).
    n_rows : int
        Rows of the design.
    n_null : int
        Null distributions kept (see :func:`~bids_group_app.stats.shuffling.shuffling_memory`).
    available : int or None
        Bytes available (:func:`available_memory`); None: no check.
    where : str
        Names the node in the message.

    Raises
    ------
    UsageError
        Naming ``--n-perm``, the estimate, the memory available and the
        largest ``--n-perm`` that fits.
    """
    needed = shuffling_memory(n_rows, n_shufflings, n_null)
    if available is None or needed <= available:
        return
    largest = available // shuffling_memory(n_rows, 1, n_null)
    raise UsageError(
        f"--n-perm {n_perm}: the {n_shufflings} shufflings of {where} and their null distributions need about "
        f"{needed / GIB:.1f} GiB of memory, more than the {available / GIB:.1f} GiB available; "
        f"give --n-perm {largest} or less (or run where more memory is free)")


def cell_shufflings(cell, blocks):
    """The shufflings shared by every contrast of a cell (refused when they cannot fit in memory)."""
    X = cell.design.matrix.to_numpy()
    contrasts = [c.weights for c in cell.design.contrasts if c.test in ("t", "F")]  # FEMA/pass are not permuted
    settings = cell.settings.permutation
    scheme = (settings.shuffle if settings.shuffle != "auto"
              else blocks.scheme or choose_scheme(X, contrasts, blocks.labels))
    n_null = 1 + bool(settings.tfce) + 2 * (settings.cluster_forming_p is not None)
    try:
        n_shufflings = count_shufflings(X, scheme, settings.n_perm, blocks.labels, blocks.whole_block)
        check_memory(settings.n_perm, n_shufflings, len(X), n_null, available_memory(), f"node '{cell.node.name}'")
        return make_shufflings(X, scheme, settings.n_perm, settings.seed, blocks.labels, blocks.whole_block)
    except ValueError as err:
        raise DataError(f"node '{cell.node.name}': {err}") from None


def _progress(total, description, quiet):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="perm", file=sys.stderr, leave=False)


def _key(test, cell_key, contrast, shufflings, settings):
    return shards.key(cell_key, contrast.name, contrast.test, contrast.weights, shufflings.orders,
                      shufflings.signs, test.prep.residuals, repr(settings.__dict__ | {"n_jobs": None}))


def run_contrast(dm, cell, contrast, shufflings, blocks, config, cell_key):
    """Observed statistics and null of one contrast (computed, or merged from shards).

    With ``--perm-shard`` the shard is computed and saved, and None is
    returned for the null. ``config`` (:class:`bids_group_app.config.Config`)
    gives the sharding, the work directory, the CPUs and the progress bar.
    """
    settings = engine_settings(cell.settings, config.resources.n_cpus)
    work_dir = config.resources.work_dir
    geometry = dm.geometry(settings.connectivity)
    test = ContrastTest(dm.Y, cell.design.matrix.to_numpy(), contrast.weights, contrast.test, geometry,
                        shufflings, settings, blocks.labels)
    shard_key = _key(test, cell_key, contrast, shufflings, settings)
    description = f"contrast '{contrast.name}' of {cell_key}"
    if config.permutation.merge_perm_shards:
        null, n = shards.load_merged(work_dir, shard_key, description)
        LOGGER.info("merged %d permutation shards of %s", n, description)
        return test, null
    batches = None
    if config.permutation.perm_shard:
        k, n = shards.parse_shard(config.permutation.perm_shard)
        batches = shards.shard_batches(test.n_batches, k, n)
    total = len(shufflings) if batches is None else sum(
        min(settings.batch_size, len(shufflings) - b * settings.batch_size) for b in batches)
    bar = _progress(total, f"{contrast.name}", config.resources.quiet)
    try:
        null = test.null(batches=batches, progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    if config.permutation.perm_shard:
        path = shards.save(work_dir, shard_key, k, n, null)
        LOGGER.info("saved permutation shard %d/%d of %s to %s", k, n, description, path)
        return test, None
    return test, null


def _p_value_text(test, spatial):
    """What the p-values of the permutation outputs of ``test`` are, sidedness included.

    ``spatial``: the spatial statistics computed too (``"TFCE"``, ``"clusters"``).
    """
    if test.two_sided:
        side = "two-sided: |t| against its permutation distribution"
        side += f" ({' and '.join(spatial)}: of either sign)" if spatial else ""
    elif test.prep.test == "F":
        side = "one-sided: upper tail of F against its permutation distribution"
    else:
        side = "one-sided: upper tail (positive t) against its permutation distribution"
    return (f"permutation p-value, {side}; stat-logp: uncorrected, voxel by voxel; stat-logpmax*: "
            "family-wise error corrected by the maximum over the mask; see PValueConvention")


def describe(test, shufflings, blocks, settings, seed):
    """Sidecar fields of the permutation outputs.

    They are written over the contrast's parametric fields, so ``PValue``
    and ``ZScore`` here replace those of the ``stat-p``/``stat-z`` maps.
    """
    prep = test.prep
    spatial = [name for name, on in (("TFCE", settings.tfce), ("clusters", prep.cluster_threshold is not None)) if on]
    about = {
        "NumberOfPermutations": len(shufflings),
        "Shuffling": {**shufflings.describe(), "Seed": seed},
        "ExchangeabilityBlocks": {"Variable": blocks.variable, "WholeBlock": blocks.whole_block},
        "FreedmanLane": prep.nuisance_rank > 0,
        "NuisanceRank": prep.nuisance_rank,
        "TwoSided": bool(test.two_sided),
        "PValue": _p_value_text(test, spatial),
        "ZScore": "none: the permutation test computes no z map (the stat-z map of the contrast is parametric)",
        "PValueConvention": P_VALUE_CONVENTION,
        "TieTolerance": TIE_TOLERANCE,
    }
    if settings.tfce:
        about["TFCE"] = {"E": settings.tfce_e, "H": settings.tfce_h, "Connectivity": settings.connectivity,
                         "Method": "exact integral (max-tree, tfce package)"}
    if prep.cluster_threshold is not None:
        about["ClusterForming"] = {"P": settings.cluster_forming_p, "StatisticThreshold": prep.cluster_threshold,
                                   "Connectivity": settings.connectivity,
                                   "Mass": "sum over the cluster of |statistic| - threshold"}
    return about


def _neglog(p):
    return (-np.log10(p)).astype(np.float32)


def permutation_maps(test, null):
    """Output maps (masked vectors) keyed by their ``stat-`` label, and the p-values.

    The engine's FWE p-values ``p<kind>`` become the ``stat-logp<kind>``
    maps of :data:`bids_group_app.outputs.naming.FWE_KINDS`.
    """
    p = p_values(test, null)
    maps = {"logp": _neglog(p["p"])}
    if test.observed.tfce is not None:
        maps["tfce"] = test.observed.tfce.astype(np.float32)
    if "pmaxsize" in p:
        maps["size"], maps["mass"] = cluster_maps(test)
    for kind in FWE_KINDS:
        if f"p{kind.label}" in p:
            maps[kind.logp] = _neglog(p[f"p{kind.label}"])
    return maps, p


def null_table(test, null):
    """Null distributions of the maxima, one row per shuffling."""
    columns = {"shuffling": np.arange(1, len(null.max_stat) + 1), f"max_{test.prep.test}": null.max_stat}
    for name in ("max_tfce", "max_size", "max_mass"):
        values = getattr(null, name)
        if values is not None:
            columns[name] = values
    return pd.DataFrame(columns)
