"""Dataset implementations behind :func:`trainer.data.build_datasets` (the entry point; import from there)."""
