"""The whole loop on one machine: datanets -> chain -> fine-tuning -> serving -> RAG ->
attribution -> settlement -> claims, printed stage by stage and written to an HTML report.

Everything runs in process on the embedded defaults: SQLite datanets, the py-evm chain,
the offline SmolLM2 base model (or, with ``fast=True``, a tiny random Llama), our serving
engine, and influence / citation attribution. The demo's accounts are derived from their
names (``keccak256("openledger-demo/<name>")``), so every run prints the same addresses;
their keys are public and only fit for a demo chain.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from openledger.demo.corpus import load_datasets
from openledger.exceptions import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from openledger.demo.stages import Stages

__all__ = ["DemoAnswer", "DemoConfig", "DemoResult", "run_demo"]

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
MARKER_FILE = ".openledger-demo"
GENERAL_QUESTION = "What is the capital of France? Answer in one sentence."


@dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`run_demo` (the ``openledger demo`` command).

    Attributes:
        output_dir: Folder for the datanets, adapters, index and ``report.html``. A folder
            left by an earlier demo run is replaced; any other non-empty folder is refused.
        fast: Tiny random Llama, 6 records per contributor and short training: the
            whole loop in about a minute (what CI runs). Answers are then gibberish.
        base_model: Base model name or folder (default ``smollm2-135m-instruct``; in fast
            mode a tiny Llama written into ``output_dir``).
        pool_wei: Reward pool of the epoch, in wei of the protocol's token.
        developer_bps: Model developer's cut in basis points.
        protocol_bps: Protocol treasury's cut in basis points.
        max_tokens: Longest answer in tokens.
        progress: Progress bars for training and indexing (default: when standard error
            is a terminal).
    """

    output_dir: Path = Path("openledger-demo")
    fast: bool = False
    base_model: str | None = None
    pool_wei: int = 100 * 10**18
    developer_bps: int = 1_000
    protocol_bps: int = 500
    max_tokens: int = 40
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.pool_wei <= 0:
            raise ConfigError(f"pool_wei must be positive, got {self.pool_wei}")
        if not 0 <= self.developer_bps + self.protocol_bps <= 10_000:
            raise ConfigError("developer_bps + protocol_bps must be within 0..10000")
        if self.developer_bps < 0 or self.protocol_bps < 0:
            raise ConfigError("basis points must not be negative")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class DemoAnswer:
    """One answer the demo served.

    Attributes:
        question: The question asked.
        adapter: The adapter (datanet name) that answered, or None for the base model.
        text: The answer.
        tokens: Prompt plus completion tokens served.
        seconds: Wall time of the request.
        retrieval: True for a retrieval-augmented answer (with citations).
        citations: ``(number, record hash, contributor name)`` for each citation.
        shares: Contributor name -> attribution share (influence or citations).
        teacher: The contributor whose records teach the answer, if the demo knows one.
        expected: A fragment of the answer the teacher's records give.
        receipt_id: The gateway's signed receipt of the answer (None: served beside it).
    """

    question: str
    adapter: str | None
    text: str
    tokens: int
    seconds: float
    retrieval: bool = False
    citations: list[tuple[int, str, str]] = field(default_factory=list)
    shares: dict[str, float] = field(default_factory=dict)
    teacher: str | None = None
    expected: str | None = None
    receipt_id: str | None = None

    @property
    def states_fact(self) -> bool | None:
        """Whether the answer states ``expected`` (None when the demo knows no fact)."""
        return None if not self.expected else self.expected.casefold() in self.text.casefold()


@dataclass
class DemoResult:
    """What a demo run did, in numbers (also rendered in ``report.html``).

    Attributes:
        output_dir: The run's folder.
        report_path: The HTML report.
        base_model: The base model served.
        datanets: Per datanet: name, title, records, contributors, snapshot root, chain id.
        training: Per adapter: name, adapter id, model id, losses, seconds, loss curve.
        answers: Every answer served.
        pool_wei: The epoch's pool.
        epoch_id: The settled epoch.
        receipts: The gateway's receipts: id, adapters, tokens, payer, whether credited.
        payouts: Payee name -> wei.
        claimed: Payee name -> token balance after claiming.
        names: Address -> name of every demo account.
        timings: Stage -> seconds.
    """

    output_dir: Path
    report_path: Path
    base_model: str
    datanets: list[dict[str, Any]] = field(default_factory=list)
    training: list[dict[str, Any]] = field(default_factory=list)
    answers: list[DemoAnswer] = field(default_factory=list)
    pool_wei: int = 0
    epoch_id: int = 0
    receipts: list[dict[str, Any]] = field(default_factory=list)
    payouts: dict[str, int] = field(default_factory=dict)
    claimed: dict[str, int] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def run_demo(config: DemoConfig | None = None, out: TextIO | None = None) -> DemoResult:
    """Run the demo end to end and write ``report.html``; returns what happened.

    Args:
        config: Settings (default :class:`DemoConfig`).
        out: Where the stage summaries go (default standard output).

    Raises:
        ConfigError: ``output_dir`` is a non-empty folder that no demo run made.
        MissingDependencyError: A package of the ``demo`` extra (bm25s, FastAPI,
            uvicorn, prometheus-client, openai) is not installed.
        OpenLedgerError: Any layer's error, unchanged.
    """
    from openledger.demo.stages import Stages

    config = config or DemoConfig()
    missing = [n for n in _NEEDS if importlib.util.find_spec(n) is None]
    if missing:
        raise MissingDependencyError(
            f"the demo needs {', '.join(missing)} (retrieval, the gateway and its client): "
            "pip install 'openledger[demo]'"
        )
    folder = _fresh_folder(Path(config.output_dir))
    base = config.base_model or (None if config.fast else DEFAULT_BASE_MODEL)
    console = Console(out or sys.stdout)
    stages = Stages(config, folder, console, load_datasets())
    with _quiet():
        return _run(stages, console, base)


_NEEDS = ("bm25s", "fastapi", "uvicorn", "prometheus_client", "openai")


def _run(stages: Stages, console: Console, base: str | None) -> DemoResult:
    timings = stages.result.timings
    with console.stage("base model", timings):
        stages.base_model(base)
    with console.stage("datanets: signed contributions and snapshots", timings):
        stages.datanets()
    with console.stage("chain: register datanets and publish snapshots", timings):
        stages.register()
    with console.stage("fine-tune one LoRA adapter per datanet", timings):
        stages.train()
    with console.stage("serve the adapters and the base model over the OpenAI API", timings):
        stages.serve()
    with console.stage("retrieval-augmented answers with citations", timings):
        stages.rag()
    with console.stage("attribute the answers to contributors", timings):
        stages.attribute()
    with console.stage("settle an epoch from the gateway's ledger; payees claim", timings):
        stages.settle()
    return stages.finish()


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence library chatter (weight-loading bars, debug logs, deprecation notes).

    The demo's own progress bars (training, indexing) stay.
    """
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    # NOTE: bm25s sets its own logger to DEBUG when imported: import it before quieting.
    importlib.import_module("bm25s")
    loggers = {name: logging.getLogger(name) for name in ("bm25s", "httpx")}
    levels = {name: logger.level for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


class Console:
    """Prints numbered stage headings and indented lines, and times each stage."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.number = 0

    @contextmanager
    def stage(self, title: str, timings: dict[str, float]) -> Iterator[None]:
        """Print ``[n] title``, run the block, then its duration."""
        self.number += 1
        self.write(f"\n[{self.number}] {title}")
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        timings[title] = seconds
        self.write(f"    ({seconds:.1f} s)")

    def write(self, text: str = "", *, end: str = "\n") -> None:
        """Print ``text`` and flush."""
        print(text, end=end, file=self.out, flush=True)

    def line(self, text: str) -> None:
        """Print an indented line."""
        self.write(f"    {text}")


def _fresh_folder(folder: Path) -> Path:
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / MARKER_FILE).is_file():
            raise ConfigError(
                f"{folder} is not empty and was not made by `openledger demo`; "
                "pass an empty or new folder with --output"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER_FILE).write_text("made by `openledger demo`; replaced by the next run\n")
    return folder
