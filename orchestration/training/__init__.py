"""cxr train: the method wired from the config, the per-domain feed, the checkpoint
format, the Ray Train driver and its per-worker loop."""
