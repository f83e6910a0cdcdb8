"""Process services: distributed state and teardown, rank-aware logging, signals, the hang watchdog.

Nothing here knows about models, data or the loop (``runtime`` never imports ``training``).
"""
