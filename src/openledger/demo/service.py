"""The demo as a paid service: the gateway on a loopback port, called with ``openai``.

:class:`LocalGateway` runs :func:`openledger.gateway.create_app` under uvicorn on a thread
of this process, over the demo's own engine (no second copy of the model), bound to
127.0.0.1 on a free port; leaving the ``with`` block drains it and closes its ledger.
:func:`stream_answer` asks one question with the official ``openai`` client, streaming,
and returns the text with the usage block the gateway metered (its receipt id).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openledger.exceptions import MissingDependencyError, OpenLedgerError

if TYPE_CHECKING:
    from openledger.gateway import GatewayConfig
    from openledger.serve import Engine

__all__ = ["LocalGateway", "StreamedAnswer", "stream_answer"]


class LocalGateway:
    """``openledger serve`` inside this process, for the length of a ``with`` block.

    Args:
        config: Gateway settings (its ``port`` is ignored: a free loopback port is used).
        engine: The engine to serve; the gateway registers ``config.adapters`` on it and
            leaves it usable after it stops.

    Raises:
        MissingDependencyError: The ``[server]`` extra is not installed.
    """

    def __init__(self, config: GatewayConfig, engine: Engine) -> None:
        from openledger.gateway.server import require_server_extra

        require_server_extra()
        self.config = config.model_copy(update={"host": "127.0.0.1", "port": 0})
        self.engine = engine
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The OpenAI API's base URL (``http://127.0.0.1:<port>/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LocalGateway:
        import uvicorn

        from openledger.gateway import create_app
        from openledger.serve import AsyncEngine

        app = create_app(self.config, engine=AsyncEngine(engine=self.engine))
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
        )
        self._server = server
        # NOTE: off the main thread uvicorn installs no signal handlers: Ctrl-C stays ours
        self._thread = threading.Thread(target=server.run, name="openledger-gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OpenLedgerError("the demo's gateway did not start")
            time.sleep(0.02)
        self.port = int(server.servers[0].sockets[0].getsockname()[1])
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=self.config.drain_timeout + 30)


@dataclass(frozen=True, slots=True)
class StreamedAnswer:
    """One streamed answer and what the gateway metered for it.

    Attributes:
        text: The answer.
        prompt_tokens: Prompt tokens metered.
        completion_tokens: Tokens generated.
        receipt_id: The signed receipt's id (``GET /v1/receipts/{id}``).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    receipt_id: str


def stream_answer(
    client: Any,
    model: str,
    question: str,
    max_tokens: int,
    on_delta: Callable[[str], None] | None = None,
) -> StreamedAnswer:
    """Ask ``question`` of ``model`` (the base model's or an adapter's name), streaming.

    Args:
        client: An ``openai.OpenAI`` client of the gateway.
        model: What to ask.
        question: The user message.
        max_tokens: Longest answer.
        on_delta: Called with each piece of text as it arrives.

    Raises:
        OpenLedgerError: The stream ended without its usage block (nothing was metered).
    """
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = []
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            piece = choice.delta.content or ""
            if piece:
                pieces.append(piece)
                if on_delta is not None:
                    on_delta(piece)
        if chunk.usage is not None:
            usage = chunk.usage
    if usage is None:
        raise OpenLedgerError(f"the gateway's answer to {question!r} carried no usage block")
    receipt_id = str(getattr(usage, "receipt_id", "") or (usage.model_extra or {})["receipt_id"])
    return StreamedAnswer(
        "".join(pieces), int(usage.prompt_tokens), int(usage.completion_tokens), receipt_id
    )


def openai_client(base_url: str, key: str) -> Any:
    """The official ``openai`` client of a gateway.

    Raises:
        MissingDependencyError: ``openai`` is not installed.
    """
    try:
        from openai import OpenAI
    except ImportError:
        raise MissingDependencyError(
            "the demo calls its gateway with the openai client: pip install 'openledger[demo]'"
        ) from None
    return OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
