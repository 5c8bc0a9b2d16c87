"""Errors that end a run, each carrying its BIDS execution-spec exit code.

The CLI catches :class:`AppError` at the edge, prints its one-line message
(no traceback unless ``-v``) and exits with :attr:`AppError.exit_code`.
"""


class AppError(Exception):
    """Base class: a user-facing error with an exit code."""

    exit_code = 1


class UnknownAnalysisLevelError(AppError):
    """The analysis level is not one this app runs (exit 17)."""

    exit_code = 17


class NoFilesSelectedError(AppError):
    """The entity filters selected no input file (exit 18)."""

    exit_code = 18


class UsageError(AppError):
    """A bad option value or an unreadable/invalid model file (exit 64)."""

    exit_code = 64


class DataError(AppError):
    """Bad data: corrupt image, non-estimable contrast, bad covariate (exit 65)."""

    exit_code = 65


class MissingInputError(AppError):
    """A required input (dataset, file, column) does not exist (exit 66)."""

    exit_code = 66


class OutputError(AppError):
    """The output directory or a file in it cannot be created (exit 73)."""

    exit_code = 73


class UnreadableResultsError(DataError):
    """Files of earlier results in OUTPUT_DIR that cannot be read back (exit 65)."""


class Interrupted(BaseException):
    """The run received SIGINT, SIGTERM or SIGHUP before its results were committed.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception``
    swallows it; the exit code is 128 + the signal number (130 for SIGINT,
    143 for SIGTERM), as shells report a process ended by a signal.
    """

    def __init__(self, signum):
        import signal

        super().__init__(signum)
        self.signum = int(signum)
        self.name = signal.Signals(self.signum).name
        self.exit_code = 128 + self.signum
