"""Ray Train launch and the per-worker training loop."""
