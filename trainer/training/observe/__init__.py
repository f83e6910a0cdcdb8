"""What watches a run: metrics rows and their writer thread (metrics, rowwriter), the experiment trackers,
plots, provenance and the profiler. Nothing here decides what the loop does; the loop calls it."""
