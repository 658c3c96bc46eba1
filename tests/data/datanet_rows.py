"""Row factories shared by the datanet tests."""

from __future__ import annotations


def rows(n: int, tag: str = "") -> list[dict[str, str]]:
    """Distinct instruction rows with unrelated wording (no near-duplicates among them)."""
    return [
        {
            "instruction": f"Question {tag}{i}: explain topic number {i * 7919 % 10007} {tag}",
            "response": f"Answer {tag}{i} with detail {i * 104729 % 99991} and {i**2} {tag}",
        }
        for i in range(n)
    ]
