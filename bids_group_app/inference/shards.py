"""Permutation shards: save and merge null distributions in the work directory.

``--perm-shard K/N`` computes the K-th of N contiguous slices of the
fixed-size batches of shufflings and saves, per model cell and contrast, the
null maxima and exceedance counts to ``WORK/perm-shards/<key>-shard-KofN.npz``.
``--merge-perm-shards`` loads all N files of each key and combines them;
since maxima are stored per shuffling and counts are integers, the merged
null equals that of a single run bit for bit.

The key is a hash of everything the null depends on: the data matrix, the
design, the contrast, the shufflings (seed, n_perm, scheme, blocks) and the
inference settings, so shards of different analyses never mix.

A shard is written under a temporary name in the same folder
(``.<name>.<random>.tmp.npz``) and renamed into place, so a killed job never
leaves a partial ``...-shard-KofN.npz``; a rerun of the shard removes the
temporary file a killed run of it left, the merge never reads one (it warns
about them). A shard file that cannot be read (0 bytes, cut, not a shard) is
a :class:`~bids_group_app.errors.DataError` naming it and the shard to rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from bids_group_app.errors import DataError, MissingInputError, OutputError, UsageError
from bids_group_app.outputs.naming import parse_shard_file, shard_file
from bids_group_app.stats.permutation import NullDistribution

LOGGER = logging.getLogger(__name__)
SHARD_PATTERN = re.compile(r"^(?P<K>\d+)/(?P<N>\d+)$")
_TEMPORARY = ".tmp.npz"


def parse_shard(text):
    """Parse ``K/N`` (1 <= K <= N) from ``--perm-shard``."""
    match = SHARD_PATTERN.match(str(text).strip())
    if not match or not 1 <= int(match["K"]) <= int(match["N"]):
        raise UsageError(f"--perm-shard {text!r}: expected K/N with 1 <= K <= N (e.g. ${{SLURM_ARRAY_TASK_ID}}/10 with --array=1-10)")
    return int(match["K"]), int(match["N"])


def shard_batches(n_batches, k, n):
    """Batch indices of shard k of n (contiguous, 1-based k)."""
    return range((k - 1) * n_batches // n, k * n_batches // n)


def key(*parts):
    """Hash of arrays and values that identify one null distribution."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str(part.dtype).encode() + str(part.shape).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def _folder(work_dir):
    return Path(work_dir) / "perm-shards"


def _temporary_files(folder, name="*"):
    """Temporary files of shards being written, or left by killed jobs (of shard file ``name``)."""
    return sorted(folder.glob(f".{name}.*{_TEMPORARY}")) if folder.is_dir() else []


def save(work_dir, shard_key, k, n, null):
    """Write one shard atomically (temporary name in the same folder, then rename).

    A temporary file of this shard left by a killed run is removed first.
    """
    folder = _folder(work_dir)
    target = folder / shard_file(shard_key, k, n)
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in _temporary_files(folder, target.name):
            leftover.unlink(missing_ok=True)
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=_TEMPORARY)
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **null.arrays())
        os.replace(tmp, target)
        tmp = None
    except OSError as err:
        raise OutputError(f"cannot save permutation shard in {folder}: {err.strerror or err}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return target


def _load(path, k, n):
    """Read one shard file; a file that is not a whole shard is a DataError naming it."""
    fields = {f.name for f in dataclasses.fields(NullDistribution)}
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        if not {"max_stat", "exceedances"} <= set(arrays) <= fields:
            raise ValueError(f"arrays {sorted(arrays)} are not those of a shard")
        return NullDistribution(**arrays)
    except Exception as err:  # numpy/zipfile raise many types for a damaged file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"permutation shard {path} cannot be read ({reason}); rerun that shard (--perm-shard {k}/{n}) "
                        "with the same data, options and -w") from None


def _check_parts(parts, paths):
    """The shards of one key must hold the same arrays with the same shapes."""
    first = {name: a.shape for name, a in parts[0].arrays().items()}
    for (k, n, path), part in zip(paths[1:], parts[1:]):
        if {name: a.shape for name, a in part.arrays().items()} != first:
            raise DataError(f"permutation shard {path} does not match shard 1/{n} of its analysis; "
                            f"rerun that shard (--perm-shard {k}/{n})")


def load_merged(work_dir, shard_key, description):
    """Load every shard of one key and merge them.

    Raises
    ------
    MissingInputError
        When no shard or not all N shards of the key are in the work
        directory (names the missing ones).
    DataError
        When a shard file cannot be read or does not match the others
        (names it and the shard to rerun).
    """
    folder = _folder(work_dir)
    leftovers = _temporary_files(folder)
    if leftovers:
        LOGGER.warning("ignoring %d temporary shard file(s) in %s, left by killed or running --perm-shard jobs: %s",
                       len(leftovers), folder, ", ".join(p.name for p in leftovers))
    found = [parsed for parsed in (parse_shard_file(p) for p in (folder.iterdir() if folder.is_dir() else []))
             if parsed and parsed[0] == shard_key]
    if not found:
        raise MissingInputError(
            f"no permutation shard for {description} in {folder}; run the --perm-shard K/N jobs with the same "
            "data, options and --work-dir first"
        )
    counts = {n for _, _, n in found}
    if len(counts) != 1:
        raise UsageError(f"shards of {description} in {folder} come from different N: {sorted(counts)}; remove the stale ones")
    n = counts.pop()
    present = {k for _, k, _ in found}
    missing = sorted(set(range(1, n + 1)) - present)
    if missing:
        raise MissingInputError(f"permutation shards {', '.join(f'{k}/{n}' for k in missing)} of {description} are missing in {folder}")
    paths = [(k, n, folder / shard_file(shard_key, k, n)) for k in range(1, n + 1)]
    parts = [_load(path, k, n) for k, n, path in paths]
    _check_parts(parts, paths)
    return NullDistribution.merge(parts), n
