"""cxr tune, ablate and cross-domain: search spaces and grids, the Ray Tune + Optuna
sweep, Table II's matrix."""
