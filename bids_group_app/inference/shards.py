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
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from bids_group_app.errors import MissingInputError, OutputError, UsageError
from bids_group_app.outputs.naming import parse_shard_file, shard_file
from bids_group_app.stats.permutation import NullDistribution

SHARD_PATTERN = re.compile(r"^(?P<K>\d+)/(?P<N>\d+)$")


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


def save(work_dir, shard_key, k, n, null):
    """Write one shard atomically (temporary name, then rename)."""
    folder = _folder(work_dir)
    target = folder / shard_file(shard_key, k, n)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp.npz")
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **null.arrays())
        os.replace(tmp, target)
    except OSError as err:
        raise OutputError(f"cannot save permutation shard in {folder}: {err.strerror or err}") from None
    return target


def load_merged(work_dir, shard_key, description):
    """Load every shard of one key and merge them.

    Raises
    ------
    MissingInputError
        When no shard or not all N shards of the key are in the work
        directory (names the missing ones).
    """
    folder = _folder(work_dir)
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
    parts = []
    for k in range(1, n + 1):
        with np.load(folder / shard_file(shard_key, k, n)) as data:
            parts.append(NullDistribution(**{name: data[name] for name in data.files}))
    return NullDistribution.merge(parts), n
