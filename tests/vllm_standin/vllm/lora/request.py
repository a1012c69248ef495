"""`vllm.lora.request.LoRARequest` of the test-only stand-in: vLLM 0.33.0's fields and positional order
(vllm/lora/request.py: a msgspec Struct, array_like), its checks, and its identity (equal and hashed by name)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False)
class LoRARequest:
    """An adapter to serve a request with. `lora_int_id` identifies the adapter in vLLM's cache: two requests with
    the same id get the adapter loaded first, whatever their paths (the stand-in caches the same way)."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: str | None = None
    load_inplace: bool = False
    is_3d_lora_weight: bool = False

    def __post_init__(self) -> None:
        # vLLM reserves id 0 for "no adapter"
        if self.lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {self.lora_int_id}")
        assert self.lora_path, "lora_path cannot be empty"

    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.__class__) and self.lora_name == other.lora_name

    def __hash__(self) -> int:
        return hash(self.lora_name)
