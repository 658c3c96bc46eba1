"""notebooks/quickstart.ipynb runs from top to bottom in a Jupyter kernel (fast mode: a tiny model).

The notebook is stored with its outputs cleared; this test executes a copy with nbclient and
ipykernel and checks what it displayed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def code_cells(notebook: Any) -> list[Any]:
    """Return the notebook's code cells."""
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def outputs_text(cell: Any) -> str:
    """Return a code cell's stream text and plain-text results, concatenated."""
    parts = [o.get("text", "") for o in cell.outputs if o.output_type == "stream"]
    parts += [o.get("data", {}).get("text/plain", "") for o in cell.outputs]
    return "".join(parts)


def mime_types(cell: Any) -> set[str]:
    """Return the MIME types of a code cell's rich outputs."""
    return {mime for o in cell.outputs for mime in o.get("data", {})}


def test_notebook_is_stored_without_outputs() -> None:
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in code_cells(notebook):
        assert cell.outputs == []
        assert cell.execution_count is None


def test_notebook_reads_the_fast_setting_first() -> None:
    nbformat = pytest.importorskip("nbformat")
    first = code_cells(nbformat.read(NOTEBOOK, as_version=4))[0].source
    assert 'os.environ.get("OPENLEDGER_NOTEBOOK_FAST") == "1"' in first
    assert 'BASE = "smollm2-135m-instruct"' in first


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    folder = tmp_path_factory.mktemp("notebook")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENLEDGER_NOTEBOOK_FAST", "1")
        # NOTE: the kernel inherits the environment; one thread is fastest for a tiny model
        # on shared cores, and temporary folders go under pytest's.
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("TMPDIR", str(folder))
        client = nbclient.NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(folder)}},
        )
        client.execute()
    return notebook


def test_no_cell_fails(executed: Any) -> None:
    for cell in code_cells(executed):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, errors[0].get("evalue") if errors else ""
    assert all(cell.execution_count is not None for cell in code_cells(executed))


def test_fast_mode_used_the_tiny_model(executed: Any) -> None:
    text = outputs_text(code_cells(executed)[0])
    assert "tiny-llama" in text
    assert "training steps: 30" in text


def test_rich_displays_are_present(executed: Any) -> None:
    cells = code_cells(executed)
    by_source = {cell.source.splitlines()[-1]: cell for cell in cells}
    assert "text/html" in mime_types(by_source["dn"])
    assert "text/html" in mime_types(by_source["snap"])
    training = next(c for c in cells if "ol.train.finetune(" in c.source)
    assert "image/png" in mime_types(training)  # the live loss plot
    report = by_source["report"]
    html = "".join(
        o["data"]["text/html"] for o in report.outputs if "text/html" in o.get("data", {})
    )
    assert "Attribution (datainf)" in html
    assert "image/png" in mime_types(by_source["report.plot();"])


def test_payouts_sum_to_the_pool_and_were_claimed(executed: Any) -> None:
    last = code_cells(executed)[-1]
    text = outputs_text(last)
    payouts = [
        int(amount) for amount in re.findall(r"^payout 0x[0-9a-fA-F]{40} (\d+)$", text, re.M)
    ]
    pool, paid = map(int, re.findall(r"^pool (\d+) paid (\d+)$", text, re.M)[0])
    assert len(payouts) >= 2  # the developer and at least one contributor
    assert sum(payouts) == paid == pool == 10**18
    assert "text/html" in mime_types(last)
    epoch_html = "".join(
        o["data"]["text/html"] for o in last.outputs if "text/html" in o.get("data", {})
    )
    assert "Epoch 1 (root 0x" in epoch_html
    assert f"<b>{10**18}</b>" in epoch_html
