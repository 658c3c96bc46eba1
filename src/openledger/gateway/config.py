"""Gateway settings: one validated object, readable from a YAML file.

A file mirrors :class:`GatewayConfig` field by field, with the engine's settings under
``engine`` (the fields of :class:`~openledger.serve.EngineConfig`)::

    model: smollm2-135m-instruct
    adapters: {medqa: ./out/medqa}
    host: 127.0.0.1
    port: 8000
    ledger: ./gateway.db
    adapter_resolver: ./adapters        # or hf://acme: unknown names load on first request
    limits: {max_concurrent_requests: 256, max_concurrent_per_key: 32, tokens_per_minute: 100000}
    engine: {max_num_seqs: 32, kv_cache_memory: 536870912}
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from openledger.exceptions import ConfigError
from openledger.gateway.adapters import ADAPTER_NAME
from openledger.gateway.ray.config import RayServeConfig
from openledger.serve.config import EngineConfig

__all__ = ["GatewayConfig", "GatewayLimits", "parse_adapter_args"]

DEFAULT_MODEL = "smollm2-135m-instruct"


class GatewayLimits(BaseModel):
    """What one request, one key and the whole gateway may ask for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrent_requests: int = Field(
        default=256, ge=1, description="Requests in flight at once; more get HTTP 503."
    )
    max_concurrent_per_key: int = Field(
        default=64, ge=1, description="Requests in flight per API key; more get HTTP 429."
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Prompt + completion tokens per minute per API key; a key over it gets "
        "HTTP 429 with Retry-After. None: no limit.",
    )
    fair_share: bool = Field(
        default=True,
        description="Admit requests into the engine by virtual token counters per key "
        "(a flood from one key cannot starve another); off: first come, first served.",
    )
    engine_sequences: int | None = Field(
        default=None,
        ge=1,
        description="Engine sequences admitted at once under fair_share; more wait in the "
        "gateway's fair queue. None: the engine's max_num_seqs.",
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens one choice may generate; a larger max_tokens gets HTTP 400. "
        "None: up to the context.",
    )
    max_n: int = Field(default=16, ge=1, description="Most choices (n) per request.")
    max_prompts: int = Field(default=64, ge=1, description="Most prompts in one completions list.")
    max_top_logprobs: int = Field(default=20, ge=0, description="Most top log-probabilities.")
    max_body_bytes: int = Field(
        default=4 * 2**20, ge=1024, description="Largest request body in bytes; more get HTTP 413."
    )


class GatewayConfig(BaseModel):
    """How ``openledger serve`` (and :func:`openledger.gateway.create_app`) runs.

    Invalid values raise :class:`~openledger.exceptions.ConfigError` naming the field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        default=DEFAULT_MODEL,
        description="Base model: an offline alias, a local Hugging Face folder or a hub id.",
    )
    served_model_name: str | None = Field(
        default=None, description="The name clients send as `model`; default `model` as given."
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA adapters served by name: {name: source} (folder, hf://, https).",
    )
    adapter_resolver: str | None = Field(
        default=None,
        description="Load unknown adapter names on first request from this folder "
        "(<folder>/<name>) or hub namespace (hf://org -> hf://org/<name>); None: off.",
    )
    host: str = Field(default="127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0: any free port).")
    ledger: Path = Field(
        default=Path("openledger-gateway.db"), description="SQLite ledger of keys and receipts."
    )
    operator_key_file: Path | None = Field(
        default=None,
        description="File holding the operator's private key (hex) that signs receipts; "
        "default the ledger's path + '.operator-key', created (mode 0600) when missing.",
    )
    require_api_key: bool = Field(
        default=True,
        description="Refuse requests without a key from the ledger (HTTP 401); when off, "
        "keyless requests are metered to the zero address.",
    )
    chain_id: int = Field(default=1, ge=1, description="Chain id of the receipts' EIP-712 domain.")
    verifying_contract: str | None = Field(
        default=None, description="Contract address of the receipts' EIP-712 domain, if any."
    )
    epoch_seconds: int = Field(
        default=86_400, ge=1, description="Length of a settlement window; epoch = time // it."
    )
    record_answers: bool = Field(
        default=True,
        description="Keep each adapter-served answer's prompt and answer texts in the ledger "
        "until the attribution worker credits them; off: no texts are kept, and those "
        "receipts settle crediting nobody.",
    )
    attribution_indexes: dict[str, str] = Field(
        default_factory=dict,
        description="Credit answers inside the gateway: {adapter (a served name or its "
        "folder): influence index folder, or span index folder of its snapshot}; answers of "
        "other adapters wait for `openledger attribute`.",
    )
    attribution_sample: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Fraction of each adapter's receipts the worker scores; the rest get the "
        "scored ones' mean for their window, with a confidence interval.",
    )
    attribution_interval: float = Field(
        default=30.0, gt=0, description="Seconds between the attribution worker's passes."
    )
    chain_url: str | None = Field(
        default=None,
        description="JSON-RPC URL of the chain epochs are posted on; with protocol_addresses, "
        "/v1/claims leaves out payouts already claimed.",
    )
    protocol_addresses: Path | None = Field(
        default=None, description="JSON file of the deployed protocol's contract addresses."
    )
    batch_window: float = Field(
        default=0.0015,
        ge=0,
        description="Seconds an idle engine waits for more of a burst after the last arrival "
        "(requests still being read and planned are waited for too; 0: off; see "
        "gateway/batching.py).",
    )
    batch_window_limit: float = Field(
        default=0.02, ge=0, description="Longest such wait, in seconds."
    )
    drain_timeout: float = Field(
        default=30.0, ge=0, description="Seconds SIGTERM waits for requests in flight."
    )
    log_level: str = Field(default="info", description="uvicorn's log level.")
    limits: GatewayLimits = Field(default_factory=GatewayLimits)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    ray: RayServeConfig = Field(
        default_factory=RayServeConfig,
        description="Replicas on Ray Serve (`openledger serve --ray`; see docs/deployment.md).",
    )

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise ConfigError(f"invalid gateway settings: {exc}") from None

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, source in value.items():
            if not ADAPTER_NAME.fullmatch(name):
                raise ValueError(
                    f"adapter name {name!r} must be 1-128 letters, digits or ._:/- "
                    "(starting with a letter or digit)"
                )
            if not str(source):
                raise ValueError(f"adapter {name!r} has an empty source")
        return value

    def index_folders(self) -> dict[str, str]:
        """``attribution_indexes`` with served adapter names replaced by their folders."""
        return {self.adapters.get(k, k): v for k, v in self.attribution_indexes.items()}

    @property
    def model_name(self) -> str:
        """The name clients use for the base model."""
        return self.served_model_name or self.model

    @property
    def key_file(self) -> Path:
        """Where the operator's key lives."""
        if self.operator_key_file is not None:
            return self.operator_key_file
        return self.ledger.with_name(self.ledger.name + ".operator-key")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> GatewayConfig:
        """Read settings from a YAML file; ``overrides`` that are not None win.

        Raises:
            ConfigError: The file cannot be read, is not a mapping, or holds invalid settings.
        """
        yaml: Any = importlib.import_module("yaml")  # NOTE: PyYAML ships no type stubs
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read gateway settings from {path}: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(
                f"{path} must hold a mapping of settings, got {type(loaded).__name__}"
            )
        return cls.merged(dict(loaded), **overrides)

    @classmethod
    def merged(cls, base: Mapping[str, Any], **overrides: Any) -> GatewayConfig:
        """Settings from ``base`` with the ``overrides`` that are not None (adapters add up)."""
        fields = dict(base)
        for name, value in overrides.items():
            if value is None:
                continue
            if name == "adapters":
                fields["adapters"] = {**dict(fields.get("adapters") or {}), **value}
            else:
                fields[name] = value
        return cls(**fields)


def parse_adapter_args(
    values: Sequence[str], *, flag: str = "--adapter", shape: str = "NAME=SOURCE"
) -> dict[str, str]:
    """Turn ``NAME=SOURCE`` arguments into ``{name: source}``.

    Args:
        values: The arguments.
        flag: The option they came from, for errors.
        shape: What one argument looks like, for errors.

    Raises:
        ConfigError: An argument without ``=``, or a name given twice.
    """
    adapters: dict[str, str] = {}
    for value in values:
        name, sep, source = value.partition("=")
        if not sep or not name or not source:
            raise ConfigError(f"{flag} takes {shape}, got {value!r}")
        if name in adapters:
            raise ConfigError(f"{flag} {name!r} is given twice")
        adapters[name] = source
    return adapters
