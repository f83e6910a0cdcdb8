"""What every rendered object shares: the YAML templates (``templates/``, loaded with ``yaml.safe_load``),
the image rule (a pinned tag or digest, so restarted pods run the same code) and the exit-code rules."""

from __future__ import annotations

from pathlib import Path

import yaml

from launch import exitcodes

TEMPLATES = Path(__file__).with_name("templates")


def template(name: str) -> dict:
    with open(TEMPLATES / f"{name}.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def check_image(image: str) -> list[str]:
    """Problems with ``--image`` (empty when it is a pinned reference)."""
    if not image or any(c.isspace() for c in image):
        return [f"--image {image!r}: expected an image reference such as registry/torchrunner:0.1.0"]
    if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
        return [
            f"--image {image!r}: pin a tag or digest (no implicit or explicit :latest), "
            "so that restarted pods run the same code"
        ]
    return []


def set_exit_codes(policy: dict, container: str) -> None:
    """Point a podFailurePolicy's exit-code rules at ``container`` and at the codes of launch/exitcodes.py:
    FailJob on a config error or a non-finite loss, Ignore a preemption (checkpoint saved, resumes)."""
    codes = {"FailJob": [exitcodes.CONFIG, exitcodes.NONFINITE], "Ignore": [exitcodes.PREEMPTED]}
    for rule in policy["rules"]:
        if "onExitCodes" in rule:
            rule["onExitCodes"].update(containerName=container, values=codes[rule["action"]])
