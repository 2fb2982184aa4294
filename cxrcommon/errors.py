"""The project's user errors: input, settings or arguments the user can fix. Every layer raises a
subclass with a message that names the file, row or key and what was expected; the CLI prints it
as `error: ...` and exits 2."""


class UserError(ValueError):
    """Base of the errors the CLI reports without a traceback."""


class DataPrepError(UserError):
    """Bad input data or prepare settings; the message says where and what was expected."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to `limit`
    characters if given: what a one-line reason quotes of a library's error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
