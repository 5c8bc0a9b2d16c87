"""Finding one subject's first-level inputs: fMRIPrep runs plus raw events and TR.

:func:`load_layout` indexes the raw dataset and the fMRIPrep derivatives with
PyBIDS' own configurations (the first level reads raw ``events.tsv`` and
derivative ``desc-preproc_bold``, which the app's statmap configuration in
``inputs/index.py`` does not describe). :func:`find_runs` returns one
:class:`RunInputs` per run of a subject: the preprocessed BOLD, its brain
mask, the confounds TSV, the raw events TSV, the repetition time and the
number of volumes; :func:`find_subjects_runs` does so for several subjects
from one query per scope (:class:`SubjectFiles`), and
:func:`memoized_entities` spares PyBIDS' repeated entity queries while a
layout is only read. Every missing piece is an :class:`~bids_group_app.errors.AppError`
whose one-line message names what is missing and what exists.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
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


@contextmanager
def memoized_entities(layout):
    """Within the block, ``layout.get_entities`` answers each (scope, metadata) question once.

    PyBIDS' ``get_entities`` queries the index every time (its code says
    "TODO: memoize results"), and with ``metadata=False`` it joins every tag
    of the dataset: ``get_nearest``, which ``load_collections`` calls for
    each run's events, so paid for each run a cost that grows with the
    dataset. The layout is only read while loading, so the answer does not
    change; the original method is restored on leaving the block.

    Parameters
    ----------
    layout : bids.BIDSLayout
    """
    original = layout.get_entities
    answers = {}

    def get_entities(scope="all", metadata=None):
        key = (tuple(scope) if isinstance(scope, (list, tuple)) else scope, metadata)
        if key not in answers:
            answers[key] = original(scope=scope, metadata=metadata)
        return dict(answers[key])

    layout.get_entities = get_entities
    try:
        yield layout
    finally:
        del layout.get_entities


class SubjectFiles:
    """The files of some subjects, from one PyBIDS query per scope, selected by entity in memory.

    :meth:`select` answers what ``layout.get(return_type="object", scope=...,
    **query)`` answers for the plain entity values the run lookups use
    (a value, or a list of values any of which matches; a file lacking the
    entity does not match), without one database query per file and run.

    Parameters
    ----------
    layout : bids.BIDSLayout
    subjects : list of str
        Labels without ``sub-``.
    """

    SCOPES = ("raw", "derivatives")

    def __init__(self, layout, subjects):
        self._files = {}
        for scope in self.SCOPES:
            for found in layout.get(return_type="object", scope=scope, subject=list(subjects)):
                self._files.setdefault((scope, found.entities["subject"]), []).append(
                    (found, dict(found.entities)))

    def select(self, scope, subject, **query):
        """The files of ``subject`` in ``scope`` (``"raw"``, ``"derivatives"`` or ``"all"``) matching ``query``.

        ``query`` may repeat ``subject`` (a run's entities).
        """
        if str(query.pop("subject", subject)) != str(subject):
            return []
        scopes = self.SCOPES if scope == "all" else (scope,)
        wanted = {k: (v if isinstance(v, (list, tuple)) else [v]) for k, v in query.items()}
        return [found for s in scopes for found, ents in self._files.get((s, subject), [])
                if all(k in ents and ents[k] in values for k, values in wanted.items())]


def _files(layout, **query):
    return layout.get(return_type="object", **query)


def _names(files):
    return ", ".join(sorted(Path(f.path).name for f in files)) or "none"


def _bold_runs(layout, subject, filters, bolds=None):
    """Preprocessed BOLD files of a subject (checked for one space); ``bolds``: already queried."""
    query = {"subject": subject, "suffix": "bold", "desc": "preproc",
             "extension": [".nii", ".nii.gz"], "scope": "derivatives", **filters}
    bolds = _files(layout, **query) if bolds is None else bolds
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


def _one(files, run_label, what, candidates, scope, **query):
    """The single file of ``files`` matching ``query``, else a MissingRunInputError listing ``candidates``."""
    found = files.select(scope, **query)
    if len(found) != 1:
        state = "no" if not found else f"{len(found)}"
        raise MissingRunInputError(f"{run_label}: {state} {what} found; {what} files there: "
                                   f"{_names(candidates())}")
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


def _run_inputs(layout, files, bold):
    """The :class:`RunInputs` of one preprocessed BOLD file (its other files from ``files``, a SubjectFiles)."""
    ents = _run_query(bold)
    subject = ents["subject"]
    label = RunInputs(ents, Path(bold.path), Path(), Path(), Path(), 0.0, 0).label
    space = bold.entities.get("space")
    space_q = {"space": space} if space else {}
    mask = _one(files, label, "brain mask (desc-brain_mask)",
                lambda: files.select("derivatives", subject, suffix="mask"),
                "derivatives", suffix="mask", desc="brain", extension=[".nii", ".nii.gz"], **ents, **space_q)
    confounds = _one(files, label, "confounds TSV (desc-confounds_timeseries)",
                     lambda: files.select("derivatives", subject, extension=".tsv"),
                     "derivatives", suffix=["timeseries", "regressors"], desc="confounds", extension=".tsv",
                     **ents)
    events = _one(files, label, "events TSV",
                  lambda: files.select("all", subject, suffix="events", extension=".tsv"),
                  "raw", suffix="events", extension=".tsv", **ents)
    raw = files.select("raw", suffix="bold", extension=[".nii", ".nii.gz"], **ents)
    tr = _repetition_time(layout, bold, raw[0] if raw else None, label)
    shape = nib.load(bold.path).shape
    n_volumes = int(shape[3]) if len(shape) == 4 else 1
    return RunInputs({**ents, **({"space": space} if space else {})}, Path(bold.path), mask,
                     confounds, events, tr, n_volumes)


def find_subjects_runs(layout, subjects, **filters):
    """:func:`find_runs` of several subjects, with two layout queries for all their files.

    Parameters
    ----------
    layout : bids.BIDSLayout
    subjects : list of str
        Labels without ``sub-``; checked in this order (the first subject
        with a missing input raises).
    **filters
        As :func:`find_runs`.

    Returns
    -------
    dict
        Subject -> list of RunInputs (as :func:`find_runs` returns them).
    """
    files = SubjectFiles(layout, subjects)
    query = {"suffix": "bold", "desc": "preproc", "extension": [".nii", ".nii.gz"], "scope": "derivatives",
             **filters}
    bolds = {}
    for bold in _files(layout, subject=list(subjects), **query):
        bolds.setdefault(bold.entities["subject"], []).append(bold)
    out = {}
    for subject in subjects:
        runs = [_run_inputs(layout, files, bold)
                for bold in _bold_runs(layout, subject, filters, bolds.get(subject, []))]
        runs.sort(key=lambda r: tuple(str(r.entities.get(k, "")) for k in RUN_ENTITIES))
        LOGGER.info("sub-%s: %d run(s): %s", subject, len(runs), ", ".join(r.label for r in runs))
        out[subject] = runs
    return out


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
    return find_subjects_runs(layout, [subject], **filters)[subject]


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
