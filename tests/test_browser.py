"""The chat page in a real browser: Debian's headless Chromium driven by Playwright, against
`python medbot_web.py` serving the embedded default (SmolLM2-135M) on localhost.

Needs the system Chromium (`apt-get install chromium`; Playwright's own browser download does not
work offline). Without it the test skips, unless MEDBOT_REQUIRE_BROWSER=1 (CI sets it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from medbot_chat import DISCLAIMER

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
QUESTION = "I have had a dry cough and a mild fever for three days. What should I do?"
EMERGENCY = "I have crushing chest pain spreading to my left arm and I am sweating"


def _serve(tmp_path_factory, extra: list[str], env: dict[str, str] | None = None):
    """Start `medbot_web.py` on a free port; yield its URL; stop it."""
    if CHROMIUM is None:
        if os.environ.get("MEDBOT_REQUIRE_BROWSER"):
            pytest.fail("MEDBOT_REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("web") / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "medbot_web.py", "--port", str(port), "--max-new-tokens", "96", *extra],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ | (env or {}),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code in (200, 401):
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the web app did not start; see {log.name}")
        time.sleep(1)
    yield url
    proc.terminate()
    proc.wait(30)
    log.close()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    yield from _serve(tmp_path_factory, [])


@pytest.fixture(scope="module")
def password_url(tmp_path_factory):
    """A public server (all interfaces): the page asks for user `medbot` and the key as password."""
    yield from _serve(tmp_path_factory, ["--host", "0.0.0.0"], {"MEDBOT_API_KEY": "browser-test-key"})


@pytest.fixture
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(app_url)
        yield page
        browser.close()


def ask(page, question: str, timeout_s: float = 120) -> list[str]:
    """Send a question; the bot's last message text, sampled until the final reply arrives."""
    bots = page.locator('[data-testid="bot"]')
    before = bots.count()
    box = page.get_by_role("textbox").first
    box.fill(question)
    box.press("Enter")
    seen: list[str] = []
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if bots.count() > before:
            text = bots.last.inner_text()
            if not seen or text != seen[-1]:
                seen.append(text)
            if DISCLAIMER[:40] in text and not text.endswith("…"):
                return seen
        time.sleep(0.05)
    raise AssertionError(f"no final answer within {timeout_s}s; saw {seen[-3:]}")


def test_page_streams_answers_keeps_the_conversation_and_shows_the_disclaimer(page):
    assert "Not for medical use" in page.locator("#disclaimer").inner_text()
    seen = ask(page, QUESTION)
    final = seen[-1]
    answer = final.split(DISCLAIMER[:40])[0].strip()
    assert answer and "### " not in answer
    partial = [s for s in seen[:-1] if s.endswith("…")]
    assert partial, f"no intermediate state was shown: {seen}"  # it streamed, not one final update
    assert not page.locator("#emergency-banner").is_visible()
    assert not page.locator("#urgent-banner").is_visible()
    ask(page, "And should I take anything for the fever?")
    assert page.locator('[data-testid="bot"]').count() == 2  # the conversation is kept
    assert page.locator('[data-testid="user"]').count() == 2


def test_emergency_message_shows_the_banner(page):
    seen = ask(page, EMERGENCY)
    banner = page.locator("#emergency-banner")
    banner.wait_for(state="visible", timeout=10_000)
    assert "emergency" in banner.inner_text().lower()
    assert not page.locator("#urgent-banner").is_visible()  # urgent has its own, separate banner
    assert "emergency" in seen[-1].lower() and DISCLAIMER[:40] in seen[-1]


def test_a_password_page_logs_in_and_chats(password_url):
    """The Guard keeps Gradio's session-less routes closed; the login page and the chat still work."""
    import httpx
    from playwright.sync_api import sync_playwright

    assert httpx.get(f"{password_url}/gradio_api/app_id").status_code == 401
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(password_url)
        page.get_by_label("username").fill("medbot")
        page.get_by_label("password").fill("browser-test-key")
        page.get_by_role("button", name="Login").click()
        page.get_by_role("textbox").first.wait_for(timeout=30_000)
        seen = ask(page, QUESTION)
        assert DISCLAIMER[:40] in seen[-1]
        token = page.evaluate("fetch('/gradio_api/app_id').then(r => r.status)")
        assert token == 200  # the logged-in session reaches them
        browser.close()
