"""Entry point: parse, run the workflow, map errors to BIDS exit codes.

Matplotlib (the report's figures) reads its configuration and writes its
font cache in ``MPLCONFIGDIR``. A run gives it a private folder of its own
(:func:`private_mplconfigdir`): created fresh with mode 0700 in ``-w`` (or
``$TMPDIR``) and removed when the run ends, so no ``matplotlibrc`` left in a
shared, predictable folder is read and nothing is left behind. A
``MPLCONFIGDIR`` set by the user is used as it is.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from bids_group_app import interrupts
from bids_group_app.errors import AppError, Interrupted, OutputError
from bids_group_app.inputs.index import IMAGE_EXTENSIONS

LOGGER = logging.getLogger("bids_group_app")


def _configure_logging(verbose, quiet):
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s [%(levelname)s] %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if verbose < 2:  # PyBIDS and its schema tools say only warnings, unless -vv
        for name in ("bids", "bidsschematools"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore")
        logging.getLogger("nilearn").setLevel(logging.WARNING)


def _mpl_parent(work_dir):
    """The folder for the private matplotlib folder: ``-w`` (created) or None for ``$TMPDIR``.

    A ``-w`` that cannot be created gives None: the workflow then reports
    it (exit 73) before anything is drawn.
    """
    if work_dir is None:
        return None
    try:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(work_dir)


@contextmanager
def private_mplconfigdir(work_dir=None):
    """Point ``MPLCONFIGDIR`` at a fresh private folder for the duration of the block.

    Must be entered before matplotlib is imported (it reads the variable
    once). Left alone when the user set ``MPLCONFIGDIR``.

    Parameters
    ----------
    work_dir : path-like, optional
        ``-w``: the folder is made there, else in ``$TMPDIR``.

    Yields
    ------
    str
        The folder matplotlib uses.

    Raises
    ------
    OutputError
        When the folder cannot be created (exit 73).
    """
    if os.environ.get("MPLCONFIGDIR"):
        yield os.environ["MPLCONFIGDIR"]
        return
    parent = _mpl_parent(work_dir)
    try:
        folder = tempfile.mkdtemp(prefix="bids_group_app-mpl-", dir=parent)  # mode 0700, unpredictable name
    except OSError as err:
        raise OutputError(f"cannot create a temporary folder in {parent or tempfile.gettempdir()}: "
                          f"{err.strerror or err}") from None
    os.environ["MPLCONFIGDIR"] = folder
    try:
        yield folder
    finally:
        os.environ.pop("MPLCONFIGDIR", None)
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None):
    """Run ``bids_group_app``; returns the process exit code.

    Exit codes follow the BIDS-Apps execution spec: 0 success, 17 unknown
    analysis level, 18 no file selected, 64 usage, 65 bad data, 66 missing
    input, 73 output cannot be created; 128 + the signal number when
    SIGINT, SIGTERM or SIGHUP stopped the run before its commit (130, 143,
    129; see :mod:`bids_group_app.interrupts`). Errors print one line on
    stderr (the traceback too with ``-v``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = any(a in ("-v", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in argv)
    try:
        with interrupts.handled():
            from bids_group_app.cli.parser import parse_args

            config = parse_args(argv)
            _configure_logging(config.resources.verbose, config.resources.quiet)
            with private_mplconfigdir(config.resources.work_dir):
                from bids_group_app.workflow import run  # heavy imports only once the command line is valid

                written = run(config, argv)
            signal_name = interrupts.received()
    except AppError as err:
        if verbose:
            LOGGER.exception("bids_group_app failed")
        print(f"bids_group_app: error: {err}", file=sys.stderr)
        return err.exit_code
    except (Interrupted, KeyboardInterrupt) as err:
        stop = err if isinstance(err, Interrupted) else Interrupted(signal.SIGINT)
        print(f"bids_group_app: interrupted by {stop.name}; no results were committed "
              "(OUTPUT_DIR is as it was before the run)", file=sys.stderr)
        return stop.exit_code
    except Exception as err:  # an unexpected failure is a bug: say so in one line
        if verbose:
            LOGGER.exception("bids_group_app failed")
        print(f"bids_group_app: internal error: {type(err).__name__}: {err} (rerun with -v for the traceback and report it)", file=sys.stderr)
        return 1
    if config.permutation.perm_shard:
        print(f"bids_group_app: saved permutation shard {config.permutation.perm_shard} in {config.resources.work_dir}/perm-shards; "
              "run --merge-perm-shards with the same options when every shard is done", file=sys.stderr)
        return 0
    maps = [p for p in written if any(p.name.endswith("_statmap" + ext) for ext in IMAGE_EXTENSIONS)]
    reports = [p for p in written if p.name.endswith("_report.html")]
    print(f"bids_group_app: wrote {len(maps)} statistical maps to {config.inputs.output_dir}"
          + (f"; report: {', '.join(str(p) for p in reports)}" if reports else "")
          + (f" ({signal_name} was received during the commit, which was completed first)" if signal_name else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
