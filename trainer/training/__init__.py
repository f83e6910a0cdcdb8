"""Training: tasks (loss + eval metrics), strategy (single/dp/ddp/fsdp/accelerate), optimizer and schedule,
checkpoints, metrics, fine-tuning, weights, and the loop (``Trainer``) that receives them ready made."""
