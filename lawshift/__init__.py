"""lawshift-rft: rejection-sampling fine-tuning for Chinese criminal-judgment prediction on LawShift.

Importing the package first pins torch's CPU numerics (lawshift/numerics.py: the same bytes from machine to
machine, where docs/reproducibility.md says they hold) and sets what GPU engines need before torch or vLLM start
(lawshift/gpuenv.py).
"""

from lawshift import gpuenv, numerics

numerics.pin()
gpuenv.prepare()
