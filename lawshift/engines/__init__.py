"""Generation engines: N answers per prompt from a model, on CPU, a GPU or a Ray pool. Writes nothing itself.

generation    what every backend takes and returns; each (case, answer)'s random stream
backends      builds the backend a stage asks for (`hf`, `vllm`, a Ray pool of either)
hf_backend    transformers generation, several prompts per call, a merged adapter
vllm_backend  vLLM generation with the adapter as a LoRARequest (GPU machines)
raypool       a pool of backends on Ray for `workers` > 1, the stage as its driver
reaper        kills what a SIGKILLed driver's Ray left behind
gpuenv        the environment GPU engines need, set when the package is imported
"""
