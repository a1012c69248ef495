"""Online RL: the grpo stage, GRPO on the filter's verifier at RFT's generation budget. Reads models/base, the
training cases and the rounds' metrics/<round>/sample.json; writes models/grpo (a LoRA adapter),
outputs/grpo/steps.csv and metrics/grpo/train.json.

reward   the verifier as a reward: binary (the filter's decision) or partial (charge and term credit)
budget   the answers to generate (all rounds' by default), the steps they make, the meter that counts them
rollout  each step's answers from the sample stage's decoder (TRL's rollout_func)
grpo     TRL's GRPOTrainer on the tiny or real base: checkpoints that keep the count, resume, the adapter
"""
