"""The one exception type the command line turns into a one-line message and exit code 2."""


class BmtptError(Exception):
    """A user-facing error: bad input, missing files, an incompatible artefact. Never a bug."""
