"""`vllm.lora.request` of the instant stand-in (benchmarks/instant_vllm): a round's adapter, carried as named."""

from dataclasses import dataclass


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str
