"""Process services: distributed state and teardown, the device mesh (mesh), rank-aware logging, signals,
the hang watchdog, the run.dir lease, storage faults (io_faults, exit 74) and the one atomic write (atomic).

Nothing here knows about models, data, checkpoints or the loop (``runtime`` never imports ``training`` or
``checkpoint``).
"""
