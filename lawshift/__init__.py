"""lawshift-rft: rejection-sampling fine-tuning for Chinese criminal-judgment prediction on LawShift.

Importing the package first pins torch's CPU numerics (lawshift/core/numerics.py: the same bytes from machine to
machine, where docs/reproducibility.md says they hold) and sets what GPU engines need before torch or vLLM start
(lawshift/engines/gpuenv.py).
"""

from lawshift.core import numerics
from lawshift.engines import gpuenv

numerics.pin()
gpuenv.prepare()
