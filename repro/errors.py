"""User-facing errors: raised for anything a user can cause (paths, formats, configs, devices)."""


class ReproError(Exception):
    """An error a user can fix; the message says what was expected, what was found and what to do.

    The command line prints these without a traceback and exits with status 2.
    """
