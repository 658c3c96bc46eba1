"""The ``openledger`` command.

::

    openledger version
    openledger models list [--verify]
    openledger models download NAME [--force]
    openledger demo [--model NAME] [--question TEXT] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from openledger._version import __version__
from openledger.exceptions import ConfigError, OpenLedgerError

__all__ = ["main"]

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_QUESTION = "What is the capital of France? Answer in one sentence."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openledger", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("version", help="print the installed version")
    models = commands.add_parser("models", help="list or download base models")
    verbs = models.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="offline aliases and cached models")
    listing.add_argument("--verify", action="store_true", help="hash cached files to check them")
    download = verbs.add_parser("download", help="install and convert an offline alias")
    download.add_argument("name", help="an alias, e.g. smollm2-135m-instruct")
    download.add_argument("--force", action="store_true", help="convert again even if cached")
    demo = commands.add_parser("demo", help="load the base model and stream one chat answer")
    demo.add_argument("--model", default=DEFAULT_MODEL, help=f"default: {DEFAULT_MODEL}")
    demo.add_argument("--question", default=DEFAULT_QUESTION)
    demo.add_argument("--max-new-tokens", type=int, default=64)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return _dispatch(args, sys.stdout)
    except OpenLedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "version":
        print(f"openledger {__version__}", file=out)
    elif args.command == "models" and args.verb == "list":
        _models_list(out, verify=args.verify)
    elif args.command == "models" and args.verb == "download":
        _models_download(out, args.name, force=args.force)
    elif args.command == "demo":
        _demo(out, args.model, args.question, args.max_new_tokens)
    return 0


def _models_list(out: TextIO, *, verify: bool) -> None:
    from openledger.models import list_models

    rows = list_models(verify=verify)
    width = max(len(row.name) for row in rows)
    print(f"{'NAME':<{width}}  KIND   INSTALLED  CACHED  DESCRIPTION", file=out)
    for row in rows:
        installed = "yes" if row.installed else "no"
        cached = "yes" if row.cached else "no"
        line = f"{row.name:<{width}}  {row.kind:<5}  {installed:<9}  {cached:<6}  "
        print(line + row.description, file=out)


def _models_download(out: TextIO, name: str, *, force: bool) -> None:
    from openledger.models import download_model

    started = time.perf_counter()
    folder = download_model(name, force=force)
    print(f"{name} ready in {folder} ({time.perf_counter() - started:.1f} s)", file=out)


def _demo(out: TextIO, model_name: str, question: str, max_new_tokens: int) -> None:
    from openledger.models import load_base_model

    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    print(f"loading {model_name} ...", file=out, flush=True)
    started = time.perf_counter()
    model, tokenizer = load_base_model(model_name, device="cpu")
    print(f"loaded in {time.perf_counter() - started:.1f} s", file=out)
    print(f"\nuser> {question}\nassistant> ", end="", file=out, flush=True)
    started = time.perf_counter()
    count = 0
    for piece in _stream_chat(model, tokenizer, question, max_new_tokens):
        print(piece, end="", file=out, flush=True)
        count += 1
    elapsed = time.perf_counter() - started
    print(f"\n\n[{count} chunks streamed in {elapsed:.1f} s]", file=out)


def _stream_chat(model: Any, tokenizer: Any, question: str, limit: int) -> Iterator[str]:
    """Stream a greedy chat answer as text pieces (until the serving engine replaces it)."""
    from transformers import TextIteratorStreamer

    messages = [{"role": "user", "content": question}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = {**inputs, "max_new_tokens": limit, "do_sample": False, "streamer": streamer}
    worker = threading.Thread(target=model.generate, kwargs=kwargs, daemon=True)
    worker.start()
    yield from streamer
    worker.join()


if __name__ == "__main__":
    raise SystemExit(main())
