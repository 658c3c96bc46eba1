"""Every error openledger raises on purpose.

Each layer has its own base class, and each concrete error also subclasses the builtin
it resembles, so ``except ValueError`` or ``except LookupError`` written against plain
Python keeps working, while ``except OpenLedgerError`` catches everything of ours::

    OpenLedgerError
    ├── ConfigError(ValueError)             a setting or argument is out of range or malformed
    ├── MissingDependencyError(ImportError) an optional extra or package is not installed
    ├── ModelError                          base models (openledger.models)
    │   ├── UnknownModelError(LookupError)  a name is no folder, alias or hub id
    │   ├── ModelNotAvailableError(OSError) known, but its files cannot be had here
    │   │                                   (offline and not cached, package missing ...)
    │   └── ModelCacheError(OSError)        a converted cache is unusable and cannot be rebuilt
    ├── ChainError                          the EVM client and contracts (openledger.chain)
    │   ├── ContractRevertError(RuntimeError)  a call or transaction reverted; carries the
    │   │                                   decoded custom error's name and arguments
    │   ├── TransactionTimeoutError(TimeoutError)  no receipt arrived within the timeout
    │   ├── ChainConnectionError(ConnectionError)  the JSON-RPC node cannot be reached
    │   └── ContractNotFoundError(LookupError)  no contract code at a given address
    ├── CryptoError(ValueError)             malformed hash, address, key, proof or typed data
    ├── DataError                           datanets (openledger.data)
    │   ├── SchemaError(ValueError)         a record violates its schema, size limit or UTF-8
    │   ├── QualityError(ValueError)        a record breaks a datanet quality rule
    │   ├── DuplicateRecordError(ValueError)  the record is already in the datanet
    │   ├── SignatureError(ValueError)      bad, foreign or other-datanet signature
    │   │   └── NonceError                  the contributor's nonce was used or skipped
    │   ├── AccessDeniedError(PermissionError)  reading a private datanet without a grant
    │   ├── DataNotFoundError(LookupError)  no such datanet, snapshot, record or request
    │   ├── PayloadTooLargeError(ValueError)  a request body over a datanet service's limit
    │   └── StoreError(OSError)             the store file is unusable or from a newer version
    ├── ServeError                          the serving engine (openledger.serve)
    │   ├── InvalidRequestError(ValueError) a prompt or sampling parameter is unusable; only
    │   │                                   that request is refused, the engine keeps serving
    │   ├── UnsupportedModelError(ValueError)  a checkpoint the engine has no model class for
    │   ├── EngineDeadError(RuntimeError)   the async engine's step loop failed and stopped
    │   └── AdapterError                    the adapter store (openledger.serve.adapters)
    │       ├── AdapterNotFoundError(LookupError)  no adapter of that name, or its source
    │       │                               (folder, hub repo, URL) cannot be had
    │       ├── AdapterFormatError(ValueError)  not a usable PEFT LoRA folder: pickle
    │       │                               weights, corrupt safetensors, bad config
    │       ├── AdapterMismatchError(ValueError)  made for another base model: manifest,
    │       │                               shapes or target modules do not fit
    │       ├── AdapterSourceError(ValueError)  a source breaks the download rules: not
    │       │                               https, a private address, too large or slow,
    │       │                               or not the pinned sha256 / hub commit
    │       └── AdapterCapacityError(RuntimeError)  every device slot is pinned
    ├── AttributionError                    influence, rewards, settlement (openledger.attribution)
    │   ├── AttributionInputError(ValueError)  an adapter, snapshot, report, pool or policy
    │   │                                   that cannot be attributed or split
    │   ├── SnapshotMismatchError(ValueError)  the adapter's manifest names another snapshot,
    │   │                                   or an index was built for another adapter
    │   └── ReceiptError(ValueError)        a usage receipt is malformed, or not signed by
    │                                       a trusted operator; nothing is settled
    ├── GatewayError                        the network service (openledger.gateway)
    │   ├── RequestFieldError(ValueError)   a request body field is unsupported or invalid;
    │   │                                   carries the field's name (HTTP 400)
    │   ├── AuthenticationError(PermissionError)  no API key, or one the ledger does not
    │   │                                   hold (HTTP 401)
    │   ├── ModelNotFoundError(LookupError) no base model or adapter of that name (HTTP 404)
    │   ├── PermissionDeniedError(PermissionError)  a valid key without the role an
    │   │                                   endpoint needs, e.g. admin (HTTP 403)
    │   ├── AdapterConflictError(ValueError)  an adapter of that name is served already
    │   │                                   (HTTP 409)
    │   ├── AdapterIdMismatchError(ValueError)  an adapter's weights are not the adapter
    │   │                                   id the caller expected (HTTP 400)
    │   ├── RateLimitError(RuntimeError)    a key is over one of its limits (HTTP 429)
    │   │   └── TokenRateLimitError         over its tokens per minute; carries retry_after
    │   ├── OverloadedError(RuntimeError)   the server is full or draining (HTTP 503)
    │   ├── LedgerError(OSError)            the receipt ledger is unusable, or a receipt
    │   │                                   cannot be written (or was written already)
    │   └── SettlementError(RuntimeError)   an interrupted epoch cannot be resolved, two
    │                                       settles ran at once, or a credit cannot be
    │                                       checked; nothing of the run is kept
    └── TrainError                          fine-tuning and adapters (openledger.train)
        ├── RecipeError(ValueError)         a recipe field is invalid or does not fit the
        │                                   model or machine (absent module, 4bit on CPU)
        ├── TrainDataError(ValueError)      training data empty, unformattable or too long
        │   └── ChatTemplateError           the template cannot mask turns, or never ends
        │                                   an assistant turn with the tokenizer's EOS
        └── ManifestError(ValueError)       an adapter folder or manifest is incomplete, or
                                            its adapter id does not match its weights

Messages say what was wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "AdapterCapacityError",
    "AdapterConflictError",
    "AdapterError",
    "AdapterFormatError",
    "AdapterIdMismatchError",
    "AdapterMismatchError",
    "AdapterNotFoundError",
    "AdapterSourceError",
    "AttributionError",
    "AttributionInputError",
    "AuthenticationError",
    "ChainConnectionError",
    "ChainError",
    "ChatTemplateError",
    "ConfigError",
    "ContractNotFoundError",
    "ContractRevertError",
    "CryptoError",
    "DataError",
    "DataNotFoundError",
    "DuplicateRecordError",
    "EngineDeadError",
    "GatewayError",
    "InvalidRequestError",
    "LedgerError",
    "ManifestError",
    "MissingDependencyError",
    "ModelCacheError",
    "ModelError",
    "ModelNotAvailableError",
    "ModelNotFoundError",
    "NonceError",
    "OpenLedgerError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "QualityError",
    "RateLimitError",
    "ReceiptError",
    "RecipeError",
    "RequestFieldError",
    "SchemaError",
    "ServeError",
    "SettlementError",
    "SignatureError",
    "SnapshotMismatchError",
    "StoreError",
    "TokenRateLimitError",
    "TrainDataError",
    "TrainError",
    "TransactionTimeoutError",
    "UnknownModelError",
    "UnsupportedModelError",
]


class OpenLedgerError(Exception):
    """Root of every error openledger raises on purpose."""


class ConfigError(OpenLedgerError, ValueError):
    """A setting or argument is out of range or malformed."""


class MissingDependencyError(OpenLedgerError, ImportError):
    """An optional dependency is missing; the message names what to install."""


class ModelError(OpenLedgerError):
    """Base class for errors of :mod:`openledger.models`."""


class UnknownModelError(ModelError, LookupError):
    """The name is neither a local folder, a known alias nor a Hugging Face hub id."""


class ModelNotAvailableError(ModelError, OSError):
    """The model is known but its files cannot be had on this machine.

    Raised for an offline alias whose package is not installed, or a hub id that is not in
    the local cache while offline (or cannot be downloaded).
    """


class ModelCacheError(ModelError, OSError):
    """A converted model cache is unusable and rebuilding it failed."""


class CryptoError(OpenLedgerError, ValueError):
    """A hash, address, key, signature, proof or typed-data value is malformed."""


class DataError(OpenLedgerError):
    """Base class for errors of :mod:`openledger.data`."""


class SchemaError(DataError, ValueError):
    """A record does not fit its schema, exceeds the size limit or is not valid UTF-8."""


class QualityError(DataError, ValueError):
    """A record breaks one of the datanet's quality rules (length, required field, deny-list)."""


class DuplicateRecordError(DataError, ValueError):
    """The record (same canonical hash) is already stored in the datanet."""


class SignatureError(DataError, ValueError):
    """A contribution or review signature is invalid, foreign, or made for another datanet."""


class NonceError(SignatureError):
    """The contributor's nonce was already used (a replay) or skips ahead."""


class AccessDeniedError(DataError, PermissionError):
    """Reading a private datanet without a valid, unexpired access grant."""


class DataNotFoundError(DataError, LookupError):
    """No such datanet, snapshot, record or access request."""


class PayloadTooLargeError(DataError, ValueError):
    """A request body over a datanet service's ``max_body_bytes`` (HTTP 413); nothing of it
    was read past the limit or stored."""


class StoreError(DataError, OSError):
    """The datanet store is unusable: not a datanet, corrupt, or written by a newer version."""


class ChainError(OpenLedgerError):
    """Base class for errors of :mod:`openledger.chain`."""


class ContractRevertError(ChainError, RuntimeError):
    """A contract call or transaction reverted.

    The revert data is decoded against the ABIs of the openledger contracts (and Solidity's
    built-in ``Error(string)`` / ``Panic(uint256)``), the same way on every backend.

    Attributes:
        error_name: The custom error's name, e.g. ``"AlreadyClaimed"``; ``"Error"`` for a
            ``require`` message, ``"Panic"`` for a panic, ``""`` when there was no data.
        error_args: The error's arguments by parameter name (addresses checksummed,
            ``bytes32`` as ``0x``-hex).
        data: The raw revert data.
    """

    def __init__(self, error_name: str, error_args: dict[str, object], data: bytes) -> None:
        self.error_name = error_name
        self.error_args = error_args
        self.data = data
        shown = ", ".join(f"{k}={v!r}" for k, v in error_args.items())
        label = error_name or "revert without data"
        super().__init__(f"contract reverted: {label}({shown})" if error_name else label)

    def __reduce__(self) -> tuple[type[ContractRevertError], tuple[str, dict[str, object], bytes]]:
        return (type(self), (self.error_name, self.error_args, self.data))


class TransactionTimeoutError(ChainError, TimeoutError):
    """A transaction was sent but no receipt arrived within the timeout; it may still land."""


class ChainConnectionError(ChainError, ConnectionError):
    """The JSON-RPC node at the given URL cannot be reached or is not an EVM node."""


class ContractNotFoundError(ChainError, LookupError):
    """There is no contract code at an address given for a protocol contract."""


class AttributionError(OpenLedgerError):
    """Base class for errors of :mod:`openledger.attribution`."""


class AttributionInputError(AttributionError, ValueError):
    """An adapter, snapshot, report, reward pool or policy cannot be attributed or split."""


class SnapshotMismatchError(AttributionError, ValueError):
    """The adapter's manifest names another snapshot, or an index belongs to another adapter."""


class ReceiptError(AttributionError, ValueError):
    """A usage receipt is malformed or not signed by a trusted operator."""


class GatewayError(OpenLedgerError):
    """Base class for errors of :mod:`openledger.gateway`."""


class RequestFieldError(GatewayError, ValueError):
    """A field of a request body is unsupported or holds an invalid value.

    Attributes:
        param: The field's name as the client sent it, e.g. ``"tools"`` or
            ``"messages[1].content"``.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def __reduce__(self) -> tuple[type[RequestFieldError], tuple[str, str | None]]:
        return (type(self), (str(self), self.param))


class AuthenticationError(GatewayError, PermissionError):
    """A request carries no API key, or a key that the gateway's ledger does not hold."""


class ModelNotFoundError(GatewayError, LookupError):
    """A request names a model that is neither the base model nor a served adapter."""


class RateLimitError(GatewayError, RuntimeError):
    """An API key is over one of its limits (concurrent requests); retry later."""


class PermissionDeniedError(GatewayError, PermissionError):
    """A valid API key without the role an endpoint needs (the adapter endpoints need an
    admin key)."""


class AdapterConflictError(GatewayError, ValueError):
    """An adapter of that name is served already; replace it (PUT) or delete it first."""


class AdapterIdMismatchError(GatewayError, ValueError):
    """An adapter's weights do not hash to the adapter id the caller expected; it is not
    served."""


class TokenRateLimitError(RateLimitError):
    """An API key has used its tokens per minute.

    Attributes:
        retry_after: Seconds until the key may send again.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[TokenRateLimitError], tuple[str, float]]:
        return (type(self), (str(self), self.retry_after))


class OverloadedError(GatewayError, RuntimeError):
    """The gateway is full (too many requests in flight) or draining before it stops."""


class LedgerError(GatewayError, OSError):
    """The receipt ledger file is unusable, or a receipt cannot be written (or its
    request id is recorded already)."""


class SettlementError(GatewayError, RuntimeError):
    """Settling a ledger cannot go on: an interrupted epoch belongs to another chain,
    two settles ran at once, or a receipt's credit cannot be checked on chain. Nothing
    the run would have written is kept."""


class TrainError(OpenLedgerError):
    """Base class for errors of :mod:`openledger.train`."""


class RecipeError(TrainError, ValueError):
    """A recipe field is invalid, or the recipe does not fit the model or the machine.

    The message names the field, e.g. ``target_modules`` when a module is absent from the
    base model, or ``quantization`` when 4bit/8bit is asked for without CUDA.
    """


class TrainDataError(TrainError, ValueError):
    """The training data cannot be used: empty, an unformattable schema, every example too
    long, or rows whose stated record hash does not match their fields."""


class ChatTemplateError(TrainDataError):
    """The chat template cannot be used for training: it is missing, its rendering of a
    conversation is not prefix-stable, or it never ends an assistant turn with EOS."""


class ManifestError(TrainError, ValueError):
    """An adapter folder or its ``openledger_manifest.json`` is missing, incomplete, or its
    adapter id does not match the weights file."""


class ServeError(OpenLedgerError):
    """Base class for errors of :mod:`openledger.serve`."""


class InvalidRequestError(ServeError, ValueError):
    """A request cannot be served as given: prompt too long, bad sampling parameter ...

    Only the offending request is refused; requests already in the engine keep running.
    """


class UnsupportedModelError(ServeError, ValueError):
    """The checkpoint's architecture or a setting of it (e.g. a RoPE type) is not supported."""


class EngineDeadError(ServeError, RuntimeError):
    """The async engine's background step loop raised; it serves no further requests."""


class AdapterError(ServeError):
    """Base class for errors of the adapter store (:mod:`openledger.serve.adapters`)."""


class AdapterNotFoundError(AdapterError, LookupError):
    """No adapter is registered under the name, or its source cannot be found or fetched."""


class AdapterFormatError(AdapterError, ValueError):
    """The source is no usable PEFT LoRA adapter (pickle weights, corrupt safetensors ...)."""


class AdapterMismatchError(AdapterError, ValueError):
    """The adapter was made for another base model: manifest, shapes or target modules differ."""


class AdapterSourceError(AdapterError, ValueError):
    """An adapter source breaks the download rules (see ``AdapterSourcePolicy``): a scheme
    other than https, a loopback, private or link-local address, a redirect leaving those
    rules, a body over the byte cap or the deadline, an archive over the unpack caps, or
    content that is not the pinned sha256 or hub commit."""


class AdapterCapacityError(AdapterError, RuntimeError):
    """No device slot can be freed: every slot holds a pinned or running adapter."""
