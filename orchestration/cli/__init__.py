"""`cxr`: the one command-line entry point. Run `cxr --help` or `cxr COMMAND --help`.

One module per floor registers its verbs on `app.app`: data_verbs (synth, prepare), training_verbs
(train, clean), sweep_verbs (tune, ablate, cross-domain), evaluation_verbs (predict, evaluate,
explain, diagnose, compare, report). Each verb parses its options, calls the module that does the work and prints what
comes back; a new verb is a function in its floor's module here and the module that does the work.
"""

# isort: off
from orchestration.cli.app import app, main

# Importing a floor's module registers its verbs, in the order `cxr --help` lists them.
from orchestration.cli import data_verbs, training_verbs, sweep_verbs, evaluation_verbs  # noqa: F401
# isort: on

__all__ = ["app", "main"]
