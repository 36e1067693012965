"""The one error a command raises for bad input: the CLI prints its message and exits 2."""


class UserError(Exception):
    """Bad input from the operator (file, value, config). The message names what is wrong."""
