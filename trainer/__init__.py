"""torchrunner's trainer: ``python -m trainer train -c RECIPE`` from the shell, or from Python:

    from trainer import fit, load_config
    result = fit("configs/gpt.yaml", model=my_model, overrides=["train.max_steps=100"])
    result.exit_code, result.model, result.summary, result.run_dir

``fit`` (trainer/api.py) is imported on first use: ``import trainer`` stays free of torch (``python -m trainer
check`` and ``--help`` never pay ~1.5 s for it).
"""

from .config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "FitResult", "fit", "load_config"]


def __getattr__(name: str):
    if name in ("fit", "FitResult"):
        from . import api  # imports torch (~1.5 s): only when fit is used

        return getattr(api, name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
