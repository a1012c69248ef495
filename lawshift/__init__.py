"""lawshift-rft: rejection-sampling fine-tuning for Chinese criminal-judgment prediction on LawShift.

Importing the package first pins torch's CPU numerics (lawshift/numerics.py: the same bytes on any x86-64 machine
with AVX2) and sets what GPU engines need before torch or vLLM start (lawshift/gpuenv.py).
"""

from lawshift import gpuenv, numerics

numerics.pin()
gpuenv.prepare()
