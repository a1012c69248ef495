"""`vllm.entrypoints` of the test-only stand-in: only the offline `LLM` class (vllm/entrypoints/llm.py)."""
