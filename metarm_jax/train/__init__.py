"""Training: the one generic loop (loop.py), optimizers and schedules (optim.py), what the stages
share (common.py), and the stages: rm.py (rm, metarm), sft.py, dpo.py, ppo.py with its roll-outs
(rollout.py). See docs/training.md."""
