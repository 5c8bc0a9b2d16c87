"""Finding one subject's first-level inputs: fMRIPrep runs plus raw events and TR.

:func:`load_layout` indexes the raw dataset and the fMRIPrep derivatives with
PyBIDS' own configurations (the first level reads raw ``events.tsv`` and
derivative ``desc-preproc_bold``, which the app's statmap configuration in
``inputs/index.py`` does not describe). :func:`find_runs` returns one
:class:`RunInputs` per run of a subject: the preprocessed BOLD, its brain
mask, the confounds TSV, the raw events TSV, the repetition time and the
number of volumes. Every missing piece is an :class:`~bids_group_app.errors.AppError`
whose one-line message names what is missing and what exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib

from bids_group_app.errors import MissingInputError, NoFilesSelectedError, UsageError

LOGGER = logging.getLogger(__name__)

#: Entities that tell one run from another (in this order in labels).
RUN_ENTITIES = ("subject", "session", "task", "acquisition", "run")


class MissingRunInputError(MissingInputError):
    """A run lacks its events, confounds, mask or repetition time (exit 66)."""


class NoRunsError(NoFilesSelectedError):
    """A subject has no preprocessed BOLD run matching the selection (exit 18)."""


class MixedSpacesError(UsageError):
    """A subject's runs are in more than one space and none was chosen (exit 64)."""


@dataclass(frozen=True)
class RunInputs:
    """The files and timing of one run.

    Attributes
    ----------
    entities : dict
        ``subject``, ``task``, ``run`` (and ``session``, ``acquisition``
        where present) of the run, plus its ``space``.
    bold, mask, confounds, events : pathlib.Path
    tr : float
        Repetition time in seconds.
    n_volumes : int
    """

    entities: dict = field(hash=False)
    bold: Path
    mask: Path
    confounds: Path
    events: Path
    tr: float
    n_volumes: int

    @property
    def label(self):
        """``sub-01_task-faces_run-1``-like label of the run (for messages)."""
        short = {"subject": "sub", "session": "ses", "task": "task", "acquisition": "acq", "run": "run"}
        return "_".join(f"{short[k]}-{self.entities[k]}" for k in RUN_ENTITIES if k in self.entities)


def load_layout(bids_dir, fmriprep_dir=None):
    """PyBIDS layout of the raw dataset with its fMRIPrep derivatives.

    Parameters
    ----------
    bids_dir : str or pathlib.Path
        Raw BIDS dataset (events, ``RepetitionTime`` sidecars).
    fmriprep_dir : str or pathlib.Path, optional
        fMRIPrep derivatives (default ``bids_dir/derivatives/fmriprep``).

    Returns
    -------
    bids.BIDSLayout

    Raises
    ------
    MissingInputError
        If either folder does not exist.
    """
    from bids import BIDSLayout

    bids_dir = Path(bids_dir)
    fmriprep_dir = Path(fmriprep_dir) if fmriprep_dir else bids_dir / "derivatives" / "fmriprep"
    for path, what in ((bids_dir, "BIDS dataset"), (fmriprep_dir, "fMRIPrep derivatives")):
        if not path.is_dir():
            raise MissingInputError(f"{what} folder {path} does not exist")
    return BIDSLayout(str(bids_dir), derivatives=str(fmriprep_dir), validate=False)


def _files(layout, **query):
    return layout.get(return_type="object", **query)


def _names(files):
    return ", ".join(sorted(Path(f.path).name for f in files)) or "none"


def _bold_runs(layout, subject, filters):
    """Preprocessed BOLD files of a subject (checked for one space)."""
    query = {"subject": subject, "suffix": "bold", "desc": "preproc",
             "extension": [".nii", ".nii.gz"], "scope": "derivatives", **filters}
    bolds = _files(layout, **query)
    if not bolds:
        anything = _files(layout, subject=subject, suffix="bold", scope="derivatives",
                          extension=[".nii", ".nii.gz"])
        wanted = ", ".join(f"{k}={v}" for k, v in filters.items()) or "no filter"
        raise NoRunsError(f"sub-{subject}: no preprocessed BOLD run (desc-preproc_bold, {wanted}) "
                          f"in the fMRIPrep derivatives; BOLD files there: {_names(anything)}")
    spaces = sorted({str(f.entities.get("space", "native")) for f in bolds})
    if len(spaces) > 1:
        raise MixedSpacesError(f"sub-{subject}: preprocessed runs in {len(spaces)} spaces "
                               f"({', '.join(spaces)}); choose one space")
    return bolds


def _one(layout, run_label, what, candidates, **query):
    """The single file matching ``query``, else a MissingRunInputError listing ``candidates``."""
    found = _files(layout, **query)
    if len(found) != 1:
        state = "no" if not found else f"{len(found)}"
        raise MissingRunInputError(f"{run_label}: {state} {what} found; {what} files there: "
                                   f"{_names(candidates)}")
    return Path(found[0].path)


def _run_query(bold):
    ents = bold.entities
    return {k: ents[k] for k in RUN_ENTITIES if k in ents}


def _repetition_time(layout, bold, raw_bold, run_label):
    """RepetitionTime from the preproc BOLD sidecar, else from the raw BOLD's."""
    for image in (bold, raw_bold):
        if image is None:
            continue
        tr = layout.get_metadata(image.path).get("RepetitionTime")
        if tr is not None:
            return float(tr)
    raise MissingRunInputError(f"{run_label}: no RepetitionTime in the sidecars of "
                               f"{Path(bold.path).name} or of the raw BOLD "
                               f"({Path(raw_bold.path).name if raw_bold else 'none found'})")


def _run_inputs(layout, bold):
    """The :class:`RunInputs` of one preprocessed BOLD file."""
    ents = _run_query(bold)
    label = RunInputs(ents, Path(bold.path), Path(), Path(), Path(), 0.0, 0).label
    space = bold.entities.get("space")
    space_q = {"space": space} if space else {}
    mask = _one(layout, label, "brain mask (desc-brain_mask)",
                _files(layout, suffix="mask", scope="derivatives", subject=ents["subject"]),
                suffix="mask", desc="brain", scope="derivatives",
                extension=[".nii", ".nii.gz"], **ents, **space_q)
    confounds = _one(layout, label, "confounds TSV (desc-confounds_timeseries)",
                     _files(layout, extension=".tsv", scope="derivatives", subject=ents["subject"]),
                     suffix=["timeseries", "regressors"], desc="confounds", extension=".tsv",
                     scope="derivatives", **ents)
    events = _one(layout, label, "events TSV",
                  _files(layout, suffix="events", extension=".tsv", subject=ents["subject"]),
                  suffix="events", extension=".tsv", scope="raw", **ents)
    raw = _files(layout, suffix="bold", scope="raw", extension=[".nii", ".nii.gz"], **ents)
    tr = _repetition_time(layout, bold, raw[0] if raw else None, label)
    shape = nib.load(bold.path).shape
    n_volumes = int(shape[3]) if len(shape) == 4 else 1
    return RunInputs({**ents, **({"space": space} if space else {})}, Path(bold.path), mask,
                     confounds, events, tr, n_volumes)


def find_runs(layout, subject, **filters):
    """Every run of one subject with its preprocessed BOLD, mask, confounds, events and TR.

    Parameters
    ----------
    layout : bids.BIDSLayout
        From :func:`load_layout`.
    subject : str
        Label without ``sub-``.
    **filters
        Entity filters on the preprocessed BOLD (``task``, ``space``,
        ``session``, ``run``, ...).

    Returns
    -------
    list of RunInputs
        Sorted by session, task, acquisition, run.

    Raises
    ------
    NoRunsError
        No ``desc-preproc_bold`` matches.
    MixedSpacesError
        The matching runs are in several spaces (filter on ``space``).
    MissingRunInputError
        A run lacks its brain mask, confounds TSV, events TSV or RepetitionTime.
    """
    runs = [_run_inputs(layout, bold) for bold in _bold_runs(layout, subject, filters)]
    runs.sort(key=lambda r: tuple(str(r.entities.get(k, "")) for k in RUN_ENTITIES))
    LOGGER.info("sub-%s: %d run(s): %s", subject, len(runs), ", ".join(r.label for r in runs))
    return runs


def model_mask(layout, run, mask_entities):
    """The mask file a Run node's ``Model.Options.Mask`` names for one run.

    ``Options.Mask`` gives BIDS entities of a mask file of the input dataset
    (e.g. ``{"desc": "brain", "suffix": "mask"}``). Among the NIfTI files that
    have those entities, a file matches the run when each of its run entities
    (subject, session, task, acquisition, run, space) that it has equals the
    run's; a file without them (one mask for the dataset) matches every run.
    The matching file with the most run entities is taken.

    Parameters
    ----------
    layout : bids.BIDSLayout
    run : RunInputs
    mask_entities : dict
        Entity -> value (or list of values).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    MissingRunInputError
        No file matches, or two match equally well (both named).
    """
    query = {k: v for k, v in mask_entities.items()}
    query.setdefault("extension", [".nii", ".nii.gz"])
    candidates = _files(layout, **query)
    keys = (*RUN_ENTITIES, "space")

    def fits(f):
        return all(str(f.entities[k]) == str(run.entities[k]) for k in keys
                   if k in f.entities and k in run.entities) and \
            all(k in run.entities for k in keys if k in f.entities)

    matching = [f for f in candidates if fits(f)]
    wanted = ", ".join(f"{k}={v}" for k, v in mask_entities.items())
    if not matching:
        raise MissingRunInputError(f"{run.label}: no mask file with Model.Options.Mask entities ({wanted}) for "
                                   f"this run; files with those entities: {_names(candidates)}")
    best = max(sum(k in f.entities for k in keys) for f in matching)
    top = [f for f in matching if sum(k in f.entities for k in keys) == best]
    if len(top) > 1:
        raise MissingRunInputError(f"{run.label}: {len(top)} mask files match Model.Options.Mask ({wanted}) equally: "
                                   f"{_names(top)}; add an entity that tells them apart")
    return Path(top[0].path)
