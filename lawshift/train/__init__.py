"""Training: the base stage's tiny model and the train stage's weighted QLoRA SFT. Reads outputs/<round>/sft.jsonl
and models/base; writes models/base and models/<round> (a PEFT adapter), its loss curve and metrics/<round>/train.json.

tiny       the offline tiny Qwen2 stand-in: tokenizer, model and warm-start (the base stage)
examples   completion-only examples: the prompt as context, the answer and its eos as target
sftdata    the accepted answers read, validated and encoded for training
objective  each answer's mean token loss times its weight, one fixed normaliser
training   the QLoRA SFT run: Trainer, checkpoints and resume, the adapter
"""
