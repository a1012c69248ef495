"""The task: LawShift cases, the judge prompt, the answer grammar and the verifier. Reads data/ and prompts/.

data     validated cases and articles, the benchmark's 31 folders (labels.json)
prompts  the judge prompt file rendered through the chat template
answers  `<answer> 罪名 | 刑期 </answer>` parsed and written
scoring  the rejection criterion (charge and term right) and LawShift's success protocol
"""
