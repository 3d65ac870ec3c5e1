"""Training: the one generic loop (loop.py), optimizer and schedules (optim.py), the RM stages
(rm.py), their config defaults (config.py). See docs/training.md."""
