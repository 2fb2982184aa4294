"""The project's user errors: input, settings or arguments the user can fix. Every layer raises a
subclass with a message that names the file, row or key and what was expected; the CLI prints it
as `error: ...` and exits 2."""


class UserError(ValueError):
    """Base of the errors the CLI reports without a traceback."""


class DataPrepError(UserError):
    """Bad input data or prepare settings; the message says where and what was expected."""
