"""The demo's shipped data: two small community datanets and the questions asked of them.

Both datanets are written for the demo and ship inside the package as JSONL (one record
per line: ``contributor``, ``instruction``, ``response``). Their facts are about places
that do not exist (the harbour city of Port Almera and the Greenhollow community garden),
so the base model cannot know them: what the fine-tuned adapters answer comes from the
contributors' records, and attribution can tell whose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

__all__ = ["DemoDataset", "DemoQuestion", "load_datasets"]


@dataclass(frozen=True, slots=True)
class DemoQuestion:
    """A question the demo asks, and the contributor whose records teach its answer.

    Attributes:
        text: The question.
        teacher: The contributor (by name) whose records alone hold the answer.
        expected: A fragment of the right answer.
    """

    text: str
    teacher: str
    expected: str


@dataclass(frozen=True, slots=True)
class DemoDataset:
    """One shipped datanet.

    Attributes:
        name: Datanet name (also the adapter's name).
        title: A human title.
        description: One sentence about it.
        records: ``(contributor name, {"instruction": ..., "response": ...})`` in file order.
        questions: Questions for its adapter.
        rag_question: A question answered by retrieval over its snapshot with the base model.
    """

    name: str
    title: str
    description: str
    records: tuple[tuple[str, dict[str, str]], ...] = field(repr=False)
    questions: tuple[DemoQuestion, ...]
    rag_question: DemoQuestion

    @property
    def contributors(self) -> tuple[str, ...]:
        """Contributor names in order of first appearance."""
        return tuple(dict.fromkeys(name for name, _ in self.records))

    def by_contributor(self, limit: int | None = None) -> dict[str, list[dict[str, str]]]:
        """Records grouped by contributor, at most ``limit`` each (``None``: all)."""
        groups: dict[str, list[dict[str, str]]] = {name: [] for name in self.contributors}
        for name, record in self.records:
            if limit is None or len(groups[name]) < limit:
                groups[name].append(record)
        return groups


_DATASETS = (
    (
        "harbour-transit",
        "Port Almera transit guide",
        "Ferries, trams, night buses and fares of the harbour city of Port Almera.",
        "harbour_transit.jsonl",
        (
            DemoQuestion("When does the first Blue Ferry leave?", "alice", "5:40"),
            DemoQuestion("How much is a day pass in Port Almera?", "dave", "7 marks"),
        ),
        DemoQuestion("Where does night bus N3 go?", "carol", "from Quay 2 to University Hill"),
    ),
    (
        "greenhollow-garden",
        "Greenhollow garden handbook",
        "Tomato varieties, herbs, soil and pests of the Greenhollow community garden.",
        "greenhollow_garden.jsonl",
        (
            DemoQuestion("How many days until Greenhollow Gold tomatoes are ready?", "erin", "68"),
            DemoQuestion("How do I deal with slugs?", "heidi", "beer traps"),
        ),
        DemoQuestion("How often should I turn the compost?", "grace", "two weeks"),
    ),
)


def load_datasets() -> tuple[DemoDataset, ...]:
    """Read the shipped datanets (package data under ``openledger/demo/data``)."""
    folder = resources.files("openledger.demo").joinpath("data")
    found = []
    for name, title, description, filename, questions, rag_question in _DATASETS:
        text = folder.joinpath(filename).read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        records = tuple(
            (row["contributor"], {"instruction": row["instruction"], "response": row["response"]})
            for row in rows
        )
        found.append(DemoDataset(name, title, description, records, questions, rag_question))
    return tuple(found)
