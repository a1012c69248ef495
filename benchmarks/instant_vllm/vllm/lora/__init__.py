"""`vllm.lora` of the instant stand-in (benchmarks/instant_vllm)."""
