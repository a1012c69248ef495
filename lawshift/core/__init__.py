"""Core: what every step stands on. Reads params.yaml; writes nothing of its own. Imports nothing of the project.

params       params.yaml as typed dataclasses that reject unknown keys
typedconfig  the dataclass-from-YAML loader params is built on
paths        where every output lives: the one list dvc.yaml loads as vars
files        one-line input errors, atomic writes, a stage's exit on bad input
journal      the resumable journal format behind every interruptible stage
numerics     CPU numerics pinned before torch loads (docs/reproducibility.md)
codedeps     the code files a stage reaches, for its journal's fingerprint and dvc.yaml's deps
models       safe model and tokenizer loading: safetensors, no remote code, context guard
runinfo      each stage's time file (wall time, peak memory) and `python -m lawshift.core.runinfo`
"""
