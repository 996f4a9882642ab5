"""The errors that end a command with one line on stderr and an exit status."""

from __future__ import annotations

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "CommandFailed", "UsageError"]

#: Exit statuses of every ``rnode-queue`` command.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CommandFailed(Exception):
    """The command could not do its work (exit status 1): the message says why."""

    exit_code = EXIT_FAILURE


class UsageError(CommandFailed):
    """The command line (or the app it names) is wrong (exit status 2)."""

    exit_code = EXIT_USAGE
