"""The network service: an OpenAI-compatible HTTP API over one engine, with metering.

::

    from openledger.gateway import GatewayConfig, create_app
    app = create_app(GatewayConfig(model="smollm2-135m-instruct", adapters={"medqa": "out/medqa"}))
    # run it with uvicorn, or from the shell: openledger serve --adapter medqa=out/medqa

Every finished request becomes a :class:`GatewayReceipt` (payer, adapters and weights,
token counts, prompt and answer hashes, epoch), EIP-712 signed by the operator and written
to the :class:`ReceiptLedger` (SQLite, fsync'd) before the response ends. Admin keys
load, replace and remove adapters while requests run (``/v1/adapters``); requests enter
the engine in fair order across keys (virtual token counters), within each key's
tokens-per-minute and concurrency limits (:class:`GatewayLimits`). The HTTP
framework (FastAPI, uvicorn, prometheus-client) is the ``[server]`` extra, loaded only
when an application is built. The guide is docs/gateway.md.
"""

from __future__ import annotations

from openledger.gateway.config import GatewayConfig, GatewayLimits, parse_adapter_args
from openledger.gateway.keys import ApiKey, hash_api_key
from openledger.gateway.ledger import ReceiptLedger
from openledger.gateway.metering import load_operator_key
from openledger.gateway.receipts import (
    GATEWAY_RECEIPT_TYPES,
    GatewayReceipt,
    SignedGatewayReceipt,
    canonical_hash,
    receipt_domain,
)
from openledger.gateway.server import create_app, run_server

__all__ = [
    "GATEWAY_RECEIPT_TYPES",
    "ApiKey",
    "GatewayConfig",
    "GatewayLimits",
    "GatewayReceipt",
    "ReceiptLedger",
    "SignedGatewayReceipt",
    "canonical_hash",
    "create_app",
    "hash_api_key",
    "load_operator_key",
    "parse_adapter_args",
    "receipt_domain",
    "run_server",
]
