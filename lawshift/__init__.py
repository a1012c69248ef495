"""lawshift-rft: rejection-sampling fine-tuning for Chinese criminal-judgment prediction on LawShift.

Importing the package pins torch's CPU numerics first (lawshift/numerics.py): every stage imports it before torch,
so the default pipeline gives the same bytes on any x86-64 machine with AVX2, Intel or AMD.
"""

from lawshift import numerics

numerics.pin()
