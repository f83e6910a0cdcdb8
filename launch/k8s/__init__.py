"""Kubernetes manifests for training jobs:
``python -m launch k8s render --kind pytorchjob|trainjob|indexedjob`` (one job) and ``python -m launch k8s
runtime`` (one ClusterTrainingRuntime for many TrainJobs).

:mod:`launch.k8s.manifests` builds a job's objects, :mod:`launch.k8s.scheduling` places them (queue, gang,
priority, nodes, fabric), :mod:`launch.k8s.runtime` renders the Trainer v2 runtime, :mod:`launch.k8s.policy`
says in words how each kind fails and is scheduled; :mod:`launch.k8s.cli` is the command line.
``python -m launch.k8s`` works too.
"""

from launch.k8s.cli import main
from launch.k8s.manifests import KINDS, Options, RenderError, render
from launch.k8s.policy import FAILURE_POLICY

__all__ = ["FAILURE_POLICY", "KINDS", "Options", "RenderError", "main", "render"]
