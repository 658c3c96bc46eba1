"""Adapters for multi-adapter serving: sources, validation, and the three-tier store.

::

    store = AdapterStore(model_config, lora_state, dtype=torch.float32, device=cpu)
    store.add("medqa", "out/medqa")                  # or "hf://org/repo@<commit>", an https
                                                     # archive URL (sha256= pins it)
    use = store.resolve({"medqa": 0.7, "law": 0.3})  # a weighted mix, exact at inference
    slot = store.acquire(use)                        # just-in-time load into a device slot

The engine does this for you: ``engine.add_adapter(name, source)`` and
``SamplingParams(adapter=...)``. :func:`merge_adapters` writes a weighted combination of
registered adapters to disk as a new PEFT adapter folder (``cat``, ``linear``, ``ties``,
``dare_linear``, ``dare_ties``, as PEFT's ``add_weighted_adapter``).
"""

from __future__ import annotations

from openledger.serve.adapters.loading import AdapterSpec, LoadedAdapter
from openledger.serve.adapters.merge import MergeSource, merge_adapter_specs, merge_adapters
from openledger.serve.adapters.policy import AdapterSourcePolicy
from openledger.serve.adapters.slots import SlotTable
from openledger.serve.adapters.store import AdapterRef, AdapterStore, AdapterUse

__all__ = [
    "AdapterRef",
    "AdapterSourcePolicy",
    "AdapterSpec",
    "AdapterStore",
    "AdapterUse",
    "LoadedAdapter",
    "MergeSource",
    "SlotTable",
    "merge_adapter_specs",
    "merge_adapters",
]
