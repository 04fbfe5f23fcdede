"""Clients of a running demo.py: the gradio client's calls and a headless chromium, for benches and tests.

bench/demo_load.py drives several gradio clients at once, bench/demo_screenshot.py drives chromium
for the README's screenshot, and tests/test_demo.py and tests/test_browser.py do the same against a
tiny model. gradio_client and playwright are imported only when used (playwright drives Debian's
chromium, apt-get install chromium; nothing downloads a browser).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ask_in_browser(
    url: str,
    document: str | Path,
    question: str,
    screenshot: str | Path,
    browser: str = CHROMIUM,
    timeout_s: float = 300,
) -> dict:
    """Upload `document`, ask `question`, wait until the streamed answer stops changing; returns the page's texts."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=browser,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 900},
        )
        try:
            page = context.new_page()
            page.goto(url, timeout=timeout_s * 1000)
            page.set_input_files("input[type=file]", str(document))
            page.wait_for_function(
                "document.querySelector('#status').innerText.includes('tokens')", timeout=timeout_s * 1000
            )
            page.fill("#question textarea", question)
            page.click("#ask")
            answer = page.locator("#answers [data-testid='bot']").last
            answer.wait_for(timeout=timeout_s * 1000)
            deadline, last = time.monotonic() + timeout_s, None
            while time.monotonic() < deadline:  # streamed: done when the text has stopped changing for 3 s
                text = answer.inner_text()
                if text.strip() and text == last:
                    break
                last = text
                page.wait_for_timeout(3000)
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            return {"status": page.locator("#status").inner_text(), "answer": answer.inner_text()}
        finally:
            context.close()


def message_text(message: dict) -> str:
    """The text of a gradio chatbot message (a string, or a list of parts)."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def ask_and_watch(client, question: str, chat: list, poll_s: float = 0.02) -> tuple[list, str, list[int]]:
    """Ask in `client`'s conversation; returns (chat, the answer, queue positions reported while waiting)."""
    from gradio_client.utils import Status

    job = client.submit(question, chat, api_name="/ask")
    positions = []
    while not job.done():
        status = job.status()
        if status.code == Status.IN_QUEUE and status.rank is not None:
            positions.append(status.rank)
        time.sleep(poll_s)
    chat, _ = job.result()
    return chat, message_text(chat[-1]).strip(), positions
