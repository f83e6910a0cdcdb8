"""Training: the loop (``Trainer``) that receives its parts ready made, and its collaborators, each given its
state explicitly: tasks (loss + eval metrics), strategy (single/dp/ddp/fsdp/accelerate), optimizer and
schedule, checkpointer (when and what to save; the how is ``trainer.checkpoint``), resume, finetune, ending;
``observe/`` holds what watches a run (metrics, trackers, plots, provenance, profiler)."""
