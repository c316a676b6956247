"""Training: TrainConfig, the optimiser and schedule, the trainer in phases, resumable
state, torchrun data parallelism."""
