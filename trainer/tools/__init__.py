"""Offline commands on saved models: ``eval``, ``export``, ``compress`` (quantize, prune).

``tools.cli`` holds the argument definitions and the dispatcher (no torch at import: ``--help`` stays fast);
the implementations import torch. Tools never import ``trainer.run`` or the training loop.
"""
