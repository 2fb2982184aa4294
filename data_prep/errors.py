"""The one error type data_prep raises for bad input: the message names file, row/key and value."""


class DataPrepError(ValueError):
    """Bad input data or settings; the message says where and what was expected."""
