"""How the trainer's processes start: cluster environments, launch modes, preflight checks.

``python -m launch MODE -c CONFIG`` (see :mod:`launch.__main__`). This package never imports the trainer: it
talks to it through the command line, the environment torchrun sets, exit codes and reason files.
"""
