"""Errors caused by the user's input: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input (a path, an option, a file): the message names it and says what to do.

    Always one line: a newline from the input itself (a YAML key, a file name) is shown escaped.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))
