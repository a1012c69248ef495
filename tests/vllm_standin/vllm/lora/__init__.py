"""`vllm.lora` of the test-only stand-in: only `vllm.lora.request` exists."""
