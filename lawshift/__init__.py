"""lawshift-rft: rejection-sampling fine-tuning for Chinese criminal-judgment prediction on LawShift."""
