"""Entry point: parse, run the workflow, map errors to BIDS exit codes."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from bids_group_app.errors import AppError

LOGGER = logging.getLogger("bids_group_app")


def _configure_logging(verbose, quiet):
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s [%(levelname)s] %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if not verbose:
        warnings.filterwarnings("ignore")
        logging.getLogger("nilearn").setLevel(logging.WARNING)


def main(argv=None):
    """Run ``bids_group_app``; returns the process exit code.

    Exit codes follow the BIDS-Apps execution spec: 0 success, 17 unknown
    analysis level, 18 no file selected, 64 usage, 65 bad data, 66 missing
    input, 73 output cannot be created. Errors print one line on stderr
    (the traceback too with ``-v``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = any(a in ("-v", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in argv)
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "bids_group_app-mpl"))
    try:
        from bids_group_app.cli.parser import parse_args

        config = parse_args(argv)
        _configure_logging(config.resources.verbose, config.resources.quiet)
        from bids_group_app.workflow import run  # heavy imports only once the command line is valid

        written = run(config, argv)
    except AppError as err:
        if verbose:
            LOGGER.exception("bids_group_app failed")
        print(f"bids_group_app: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("bids_group_app: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as err:  # an unexpected failure is a bug: say so in one line
        if verbose:
            LOGGER.exception("bids_group_app failed")
        print(f"bids_group_app: internal error: {type(err).__name__}: {err} (rerun with -v for the traceback and report it)", file=sys.stderr)
        return 1
    if config.permutation.perm_shard:
        print(f"bids_group_app: saved permutation shard {config.permutation.perm_shard} in {config.resources.work_dir}/perm-shards; "
              "run --merge-perm-shards with the same options when every shard is done", file=sys.stderr)
        return 0
    maps = [p for p in written if p.name.endswith("_statmap.nii.gz")]
    reports = [p for p in written if p.name.endswith("_report.html")]
    print(f"bids_group_app: wrote {len(maps)} statistical maps to {config.inputs.output_dir}"
          + (f"; report: {', '.join(str(p) for p in reports)}" if reports else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
