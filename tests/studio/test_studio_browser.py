"""The Studio in a real headless Chromium against a real server process on 127.0.0.1.

One walk through the tabs with a tiny Llama: accounts, a datanet, a refused upload, two
signed uploads, a snapshot; a private datanet, an access request and the owner's approval;
a training run whose loss curve fills in and its model id on the chain; a streamed answer
from the adapter and its attribution bars, another answer's attribution cancelled; an
epoch settled and a claim. Each tab
is photographed; with ``OPENLEDGER_UPDATE_SCREENSHOTS=1`` the pictures replace those in
docs/images/studio/ that docs/studio.md shows (otherwise they go to a temporary folder, so
a test run leaves the working tree as it was).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import missing_reference
from tests.studio.conftest import colour_rows, jsonl

CHROMIUM = Path("/usr/bin/chromium")
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images" / "studio"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SLOW = 120_000  # ms: model loading, training and attribution on two shared cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (skips, or fails under CI, if missing)."""
    if not CHROMIUM.is_file():
        missing_reference("no browser: apt-get install chromium (Debian's package)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_reference("no playwright: pip install playwright")
    with sync_playwright() as driver:
        found = driver.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield found
        found.close()


@pytest.fixture
def studio_url(studio_home: Path) -> Iterator[str]:
    """A Studio server process on a free 127.0.0.1 port, stopped by its PID afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "openledger.cli", "studio"]
    command += ["--home", str(studio_home), "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            output = process.stdout.read().decode() if process.poll() is not None else ""  # type: ignore[union-attr]
            pytest.fail(f"the studio server did not come up on {url}: {output[-2000:]}")
        yield url
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Where the screenshots go: docs/images/studio/ when asked to update them."""
    return IMAGES if os.environ.get("OPENLEDGER_UPDATE_SCREENSHOTS") == "1" else tmp_path


def shoot(page: Any, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 1000


def expect_message(page: Any, selector: str, text: str, kind: str = "ok") -> None:
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_contain_text(text, timeout=SLOW)
    expect(page.locator(selector)).to_have_class(f"message {kind}")


def upload(page: Any, account: str, name: str, body: bytes) -> None:
    page.select_option("#account", account)
    page.set_input_files(
        "#upload-file", files=[{"name": name, "mimeType": "text/plain", "buffer": body}]
    )
    page.click("#upload-btn")


def datanets_tab(page: Any, images: Path) -> None:
    from playwright.sync_api import expect

    for name in ("alice", "bob"):
        page.fill("#new-account", name)
        page.click("#account-create")
        expect_message(page, "#dn-message", f"account {name} created")
    page.fill("#dn-name", "colours")
    page.select_option("#dn-schema", "openledger.instruction/1")
    page.click("#dn-create")
    expect_message(page, "#dn-message", "datanet colours created")
    upload(page, "alice", "wrong.jsonl", jsonl([{"text": "a record of another schema"}]))
    expect_message(page, "#dn-message", "text", kind="error")
    assert page.locator("#records tbody tr").count() == 0
    rows = colour_rows()
    upload(page, "alice", "alice.jsonl", jsonl(rows[:5]))
    expect_message(page, "#dn-message", "5 records stored, signed by alice")
    upload(page, "bob", "bob.jsonl", jsonl(rows[5:]))
    expect_message(page, "#dn-message", "3 records stored, signed by bob")
    page.click("#snapshot-btn")
    expect_message(page, "#dn-message", "snapshot #1 of 8 records, root 0x")
    assert page.locator("#records tbody tr").count() == 8
    assert page.locator(".snapshot .root").inner_text().startswith("0x")
    page.fill("#review-reason", "duplicate of another colour")
    page.locator("#records tbody tr").last.locator("button.reject").click()
    expect_message(page, "#dn-message", "rejected, signed by bob")
    expect(page.locator("#records tbody tr td.status-rejected")).to_have_count(1, timeout=SLOW)
    expect(page.locator("#access")).to_be_hidden()
    shoot(page, images, "datanets")


def access_requests(page: Any, images: Path) -> None:
    """A private datanet: bob is refused, asks for access, alice (its owner) approves."""
    from playwright.sync_api import expect

    page.select_option("#account", "alice")
    page.fill("#dn-name", "clinic")
    page.check("#dn-private")
    page.click("#dn-create")
    expect_message(
        page, "#dn-message", "datanet clinic created (openledger.instruction/1, private)"
    )
    page.uncheck("#dn-private")
    page.select_option("#account", "bob")
    expect(page.locator("#records-note")).to_contain_text(
        "bob has no approved access request", timeout=SLOW
    )
    page.click("#access-request")
    expect_message(page, "#dn-message", "purpose must say what the data is for", kind="error")
    page.fill("#access-purpose", "a held-out evaluation")
    page.click("#access-request")
    expect_message(page, "#dn-message", "access request 1 filed by bob")
    row = page.locator("#access-requests tbody tr[data-request='1']")
    row.locator("button.approve").click()
    expect_message(page, "#dn-message", "only the owner", kind="error")
    page.select_option("#account", "alice")
    row.locator("button.approve").click()
    expect_message(page, "#dn-message", "access request 1 approved by alice")
    expect(row.locator(".access-status")).to_have_text("approved")
    page.select_option("#account", "bob")
    expect(page.locator("#records-note")).to_have_text("", timeout=SLOW)
    shoot(page, images, "access")
    page.select_option("#dn-select", "colours")


def train_tab(page: Any, images: Path, studio_home: Path) -> None:
    from playwright.sync_api import expect

    page.click("nav [data-tab=train]")
    base = str((studio_home / "models" / "tiny-llama").resolve())
    expect(page.locator(f"#tr-base option[value='{base}']")).to_have_count(1, timeout=SLOW)
    page.select_option("#tr-base", base)
    page.select_option("#tr-snapshot", "colours|1")
    page.select_option("#tr-preset", "quick look")
    page.fill("#tr-field-max_steps", "30")
    page.fill("#tr-name", "colours-r4")
    page.select_option("#tr-registrant", "alice")
    page.click("#tr-start")
    curve = page.locator("#tr-curve")
    expect(curve).not_to_have_attribute("data-points", "0", timeout=SLOW)
    expect(page.locator("#tr-status")).to_have_attribute("data-state", "done", timeout=SLOW)
    assert curve.get_attribute("data-points") == "30"
    assert page.locator("#tr-curve polyline").count() == 1
    expect(page.locator("#adapters tbody tr")).to_have_count(1, timeout=SLOW)
    expect_message(page, "#tr-message", "registered on chain")
    model_id = page.locator("#adapters tbody tr .model-id").inner_text()
    assert model_id.startswith("0x")
    assert len(model_id) == 66
    assert model_id in page.locator("#tr-message").inner_text()
    shoot(page, images, "train")


def evaluate_tab(page: Any, images: Path) -> None:
    from playwright.sync_api import expect

    page.click("nav [data-tab=evaluate]")
    expect(page.locator("#ev-adapter option[value='colours-r4']")).to_have_count(1, timeout=SLOW)
    page.select_option("#ev-adapter", "colours-r4")
    page.select_option("#ev-snapshot", "colours|1")
    page.fill("#ev-generate", "2")
    page.click("#ev-start")
    expect(page.locator("#ev-status")).to_have_text("done", timeout=SLOW)
    expect_message(page, "#ev-message", "the snapshot it was trained on: not held out")
    expect(page.locator("#ev-scores tbody tr")).to_have_count(4)
    expect(page.locator("#ev-samples tbody tr")).not_to_have_count(0)
    loss = page.locator("#ev-scores tbody tr").first.locator("td")
    assert float(loss.nth(2).inner_text()) < float(loss.nth(1).inner_text())
    shoot(page, images, "evaluate")


def chat_tab(page: Any, images: Path) -> None:
    from playwright.sync_api import expect

    page.click("nav [data-tab=chat]")
    expect(page.locator("#ch-adapter option[value='colours-r4']")).to_have_count(1, timeout=SLOW)
    page.select_option("#ch-adapter", "colours-r4")
    page.fill("#ch-input", "Code red?")
    page.click("#ch-send")
    answer = page.locator(".turn.assistant[data-done=true] .answer")
    expect(answer).to_have_count(1, timeout=SLOW)
    assert answer.inner_text().strip()
    page.click("button.attribute")
    expect(page.locator(".bar").first).to_be_visible(timeout=SLOW)
    expect_message(page, "#ch-message", "1 answer(s) wait for the next reward epoch")
    page.select_option("#ch-retrieval", "colours")
    page.fill("#ch-input", "Code blue?")
    page.click("#ch-send")
    expect(page.locator(".turn.assistant[data-done=true]")).to_have_count(2, timeout=SLOW)
    sources = page.locator(".turn.assistant").nth(1).locator(".sources li")
    expect(sources).to_have_count(3)
    assert "Code blue?" in sources.first.inner_text()
    # The second answer's attribution is cancelled: nothing is written, it can run again.
    second = page.locator(".turn.assistant").nth(1)
    second.locator("button.attribute").click()
    expect(second.locator("button.attribute-cancel")).to_be_visible(timeout=SLOW)
    second.locator("button.attribute-cancel").click()
    expect_message(page, "#ch-message", "attribution cancelled; nothing was written")
    expect(second.locator(".attribute-status")).to_have_attribute("data-state", "cancelled")
    expect(second.locator("button.attribute")).to_be_enabled()
    assert second.locator(".bar").count() == 0
    shoot(page, images, "chat")


def rewards_tab(page: Any, images: Path) -> None:
    from playwright.sync_api import expect

    page.click("nav [data-tab=rewards]")
    expect(page.locator("#rw-pending")).to_contain_text(
        "2 answer(s) metered; 2 not settled yet, 1 attributed answer(s)", timeout=SLOW
    )
    page.fill("#rw-pool", "100")
    page.click("#rw-settle")
    expect_message(page, "#rw-message", "epoch 1 settled")
    first = page.locator("#rw-epochs tbody tr").first
    expect(first.locator("button.claim")).to_be_enabled(timeout=SLOW)
    first.locator("button.claim").click()
    expect_message(page, "#rw-message", "claimed")
    expect(first.locator(".claimable")).to_have_text("claimed", timeout=SLOW)
    assert float(first.locator(".balance").inner_text()) > 0
    alice = page.locator("#rw-balances tr[data-account=alice] .tokens")
    expect(alice).to_have_text(first.locator(".balance").inner_text())
    shoot(page, images, "rewards")


def test_the_five_tabs_in_a_browser(
    browser: Any, studio_url: str, studio_home: Path, images: Path
) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(studio_url)
    datanets_tab(page, images)
    access_requests(page, images)
    train_tab(page, images, studio_home)
    evaluate_tab(page, images)
    chat_tab(page, images)
    rewards_tab(page, images)
    assert errors == []
