"""One exception type for mistakes a person can fix (bad path, bad config, broker down).

The CLI prints its message as a single line and exits non-zero; anything else is a bug and
keeps its traceback."""


class CallstreamError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""

    exit_code = 2
