"""Evaluation: the eval stages. Reads a model and LawShift's folders; writes outputs/<model>/predictions.jsonl,
metrics/<model>/eval.json, reports/eval_<model>.md and the plot files.

evaluation   prompts for both splits, batched generation, scoring, resumable
evalmetrics  LawShift metrics as a pure function of the scored records
predictions  the predictions file in prompt order, one prompt in memory
report       the markdown report and the CSVs behind the plots
evalmerge    joins a sharded eval run's shards into what one process writes
rescore      published LawShift logs re-scored with this parser and protocol
"""
