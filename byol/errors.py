"""Errors caused by the user's input: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input (a path, an option, a file): the message names it and says what to do."""

    exit_code = 2
