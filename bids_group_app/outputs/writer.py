"""Staged writing: every file is first written into a staging folder inside
OUTPUT_DIR and moved into place only when the whole run succeeded, so a
failed run leaves no half-written or misleading map.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_group_app.errors import OutputError


class OutputWriter:
    """Stage files inside OUTPUT_DIR and move them into place on commit.

    Parameters
    ----------
    output_dir : pathlib.Path
    """

    def __init__(self, output_dir):
        self.output_dir = Path(output_dir)
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.staging = self.output_dir / f".bids_group_app-staging-{uuid.uuid4().hex[:12]}"
            self.staging.mkdir()
        except OSError as err:
            raise OutputError(f"output directory {self.output_dir} cannot be created or written: {err.strerror or err}") from None
        self.written = []

    def _target(self, relpath):
        path = self.staging / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        self.written.append(Path(relpath))
        return path

    def adopt(self, relpaths):
        """Register files that other code wrote into the staging folder."""
        self.written.extend(Path(p) for p in relpaths)

    def json(self, relpath, content):
        """Stage a JSON file."""
        self._target(relpath).write_text(json.dumps(content, indent=2, default=_json_default) + "\n")

    def text(self, relpath, content):
        """Stage a text file."""
        self._target(relpath).write_text(content)

    def table(self, relpath, frame):
        """Stage a TSV table (``n/a`` for missing values)."""
        frame.to_csv(self._target(relpath), sep="\t", index=False, na_rep="n/a")

    def image(self, relpath, img):
        """Stage a NIfTI image."""
        nib.save(img, str(self._target(relpath)))

    def relabel(self, rename):
        """Rename staged files: ``rename(relpath) -> relpath`` (strings)."""
        renamed = []
        for rel in self.written:
            new = Path(rename(rel.as_posix()))
            if new != rel:
                target = self.staging / new
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.staging / rel, target)
            renamed.append(new)
        self.written = renamed

    def commit(self):
        """Move every staged file into OUTPUT_DIR and remove the staging folder."""
        try:
            for rel in self.written:
                target = self.output_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.staging / rel, target)
        except OSError as err:
            raise OutputError(f"cannot write results into {self.output_dir}: {err.strerror or err}") from None
        finally:
            self.abort()

    def abort(self):
        """Drop everything staged."""
        shutil.rmtree(self.staging, ignore_errors=True)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


