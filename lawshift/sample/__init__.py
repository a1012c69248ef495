"""Rejection sampling: the sample and filter stages. Reads a round's policy and the training cases; writes
outputs/<round>/samples.jsonl and sft.jsonl (the weighted accepted answers), metrics/<round>/{sample,filter}.json.

sampling   N answers per training case from the round's policy, resumable, in shards if asked
samples    sample records, their running tallies and the resumable sample journal
filtering  keeps the answers whose charge and term are right, each weighted 1/n for its case
merge      joins a sharded sample run's shards into what one process writes
"""
