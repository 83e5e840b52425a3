"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a one-line message and a non-zero exit; anything else is a bug and
keeps its traceback.
"""


class AutoVitError(Exception):
    """Bad input: the message names the problem and, where there is one, the fix."""

    exit_code = 1


class UsageError(AutoVitError):
    """Bad command-line usage (exit code 2, like click)."""

    exit_code = 2


class Interrupted(AutoVitError):
    """Ctrl-C during long work; exit code 130 as for SIGINT."""

    exit_code = 130
