"""Kubernetes manifests for training jobs:
``python -m launch k8s render --kind pytorchjob|trainjob|indexedjob``.

:mod:`launch.k8s.manifests` builds the objects (and says how each kind maps the launcher's exit codes);
:mod:`launch.k8s.cli` is the command line. ``python -m launch.k8s`` works too.
"""

from launch.k8s.cli import main
from launch.k8s.manifests import FAILURE_POLICY, KINDS, Options, RenderError, render

__all__ = ["FAILURE_POLICY", "KINDS", "Options", "RenderError", "main", "render"]
