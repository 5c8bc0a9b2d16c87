"""The analyses, top to bottom: :mod:`.participant` (the Run and Subject
nodes, per subject) and the group analysis.

:mod:`.plan` checks inputs and model and builds every cell's design;
:mod:`.execute` loads the maps, fits, runs the permutations and writes the
results through a staging folder; :mod:`.sidecars` says what the JSON
files beside the maps hold; :mod:`.reports` renders the methods text and the
HTML reports from OUTPUT_DIR. :func:`run` ties them together.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from threadpoolctl import threadpool_limits

from bids_group_app.errors import OutputError


def _prepare_work_dir(work_dir):
    if work_dir is None:
        return
    try:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"work directory {work_dir} cannot be created: {err.strerror or err}") from None
    tempfile.tempdir = str(Path(work_dir).resolve())


def run(config, argv=None):
    """Plan and execute a group analysis; returns the written paths.

    Parameters
    ----------
    config : bids_group_app.config.Config
    argv : list of str, optional
        The command line, recorded in the logs.

    ``--n-cpus`` caps the BLAS/OpenMP threads of the numerical work;
    ``--work-dir`` becomes the folder for temporary files. With
    ``--perm-shard`` only the shard is computed and saved in the work
    directory; nothing is written to OUTPUT_DIR.
    """
    previous_tempdir = tempfile.tempdir
    try:
        _prepare_work_dir(config.resources.work_dir)
        with threadpool_limits(limits=config.resources.n_cpus):
            # each path imports only its own stages (a participant task does not load the permutation engine)
            if config.reports.reports_only:
                from bids_group_app.workflow.reports import reports_only

                return reports_only(config.inputs.output_dir)
            if config.inputs.analysis_level == "participant":
                from bids_group_app.workflow.participant import run_participant

                return run_participant(config, argv)
            from bids_group_app.workflow.execute import compute_shards, execute
            from bids_group_app.workflow.plan import plan

            planned = plan(config)
            if config.permutation.perm_shard:
                compute_shards(planned, config)
                return []
            return execute(planned, config, argv)
    finally:
        tempfile.tempdir = previous_tempdir
