"""Experiments: runs compared, summarised and charted. Reads metrics/ and plots/ of runs on disk and DVC's
experiments; writes the README's results table, metrics/seeds.json and the charts' plot files.

results    the README's results table from the last run's metrics
seeds      the pipeline rerun under other seeds as DVC experiments (make seeds)
compare    runs side by side in at most 15 columns (make compare)
reference  the reference profile as a DVC experiment, params.yaml kept (make reference)
charts     each kind's per-model plot files joined, one chart comparing every model
"""
