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
tokens-per-minute and concurrency limits (:class:`GatewayLimits`). Off the hot path, an
:class:`AttributionWorker` credits answers to contributors with the adapters' influence
indexes, and :func:`settle_ledger` pays the closed windows in one reward epoch that is
persisted before it is posted (never paid twice; :func:`claims_of` serves the proofs). The HTTP
framework (FastAPI, uvicorn, prometheus-client) is the ``[server]`` extra, loaded only
when an application is built. The guide is docs/gateway.md.
"""

from __future__ import annotations

from openledger.gateway.attribution_worker import AttributionPass, AttributionWorker
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
from openledger.gateway.settlement import (
    Claim,
    Settlement,
    claims_of,
    ledger_settings,
    recover_epochs,
    settle_ledger,
)

__all__ = [
    "GATEWAY_RECEIPT_TYPES",
    "ApiKey",
    "AttributionPass",
    "AttributionWorker",
    "Claim",
    "GatewayConfig",
    "GatewayLimits",
    "GatewayReceipt",
    "ReceiptLedger",
    "Settlement",
    "SignedGatewayReceipt",
    "canonical_hash",
    "claims_of",
    "create_app",
    "hash_api_key",
    "ledger_settings",
    "load_operator_key",
    "parse_adapter_args",
    "receipt_domain",
    "recover_epochs",
    "run_server",
    "settle_ledger",
]
