"""``openledger demo``: the whole loop on embedded defaults, as a command and a function.

>>> from openledger.demo import DemoConfig, run_demo
>>> result = run_demo(DemoConfig(output_dir="demo-run", fast=True))   # doctest: +SKIP
>>> sum(result.payouts.values()) == result.pool_wei                   # doctest: +SKIP
True

Two datanets shipped with the package (see :mod:`openledger.demo.corpus`) are filled by
signed contributions, snapshotted and registered on the embedded chain; one LoRA adapter
is fine-tuned per datanet and registered as a model; one engine serves both adapters and
the base model, streaming; the base model also answers from retrieved records with
citations; answers are attributed to contributors (influence and citations); an epoch is
settled and every payee claims. ``report.html`` in the output folder shows it all.
"""

from __future__ import annotations

from openledger.demo.corpus import DemoDataset, DemoQuestion, load_datasets
from openledger.demo.runner import DemoAnswer, DemoConfig, DemoResult, run_demo

__all__ = [
    "DemoAnswer",
    "DemoConfig",
    "DemoDataset",
    "DemoQuestion",
    "DemoResult",
    "load_datasets",
    "run_demo",
]
