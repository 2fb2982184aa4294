"""The label encoding every prepared sample carries, one value per finding of the label space.

A leaf: `data_prep` writes these values and `cxrmodel`'s losses and metrics read them; importing
this module needs nothing else from either package.
"""

POSITIVE = 1
NEGATIVE = 0
UNKNOWN = -2  # the sample's dataset does not label this finding


def known_labels(labels, c: int):
    """The rows of a (N, C) label array whose label of finding column `c` is known (POSITIVE or NEGATIVE)."""
    return (labels[:, c] == POSITIVE) | (labels[:, c] == NEGATIVE)
