"""Training: the one generic loop (loop.py), optimizers and schedules (optim.py), what the stages
share (common.py), and the stages: rm.py (rm, metarm), sft.py, dpo.py, ppo.py with its roll-outs
(rollout.py: advantages and the buffer; rollout_scoring.py: packed scoring; ensemble_reward.py: an
RM ensemble as the reward; offload.py: frozen models in host memory). See docs/training.md."""
