"""A real browser (Debian's headless Chromium through Playwright) labels with the keyboard only.

Needs ``apt-get install chromium`` and ``pip install playwright`` (no Playwright browser
download: the system Chromium is used).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
XSS = "<script>window.__pwned=1</script>"

if not Path(CHROMIUM).exists():
    if os.environ.get("TETHER_REQUIRE_BROWSER"):  # CI sets it: a skipped browser test is a failure there
        pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch):
    from argon2 import PasswordHasher

    from tether.feedback.app import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=64,
                                                            parallelism=1))


@pytest.fixture
def server(tmp_path):
    """The app under uvicorn on a free loopback port, in a thread."""
    import uvicorn

    from tether.feedback.app import Settings, create_app, projects

    app = create_app(Settings(db_url=str(tmp_path / "label.db")))
    with app.state.sessions.begin() as db:
        projects.create_user(db, "root", "admin", "root-password")
        projects.create_user(db, "ann", "annotator", "ann-password")
        project = projects.create_project(db, "pw", "pairwise", required_judgments=1,
                                          gold_rate=0, guidelines="Prefer **honest** answers.")
        projects.import_items(db, project, [
            {"id": f"i{i}", "prompt": f"Question {i}?",
             "candidates": [{"id": "x", "text": (XSS + " ") * (i == 0) + f"first {i}",
                             "model": "model-x"},
                            {"id": "y", "text": f"second {i}", "model": "model-y"}]}
            for i in range(6)])
        projects.set_members(db, project, add=["ann"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(10)


def login(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/login")
    # The username box has autofocus; wait until it has it (a loaded machine can be slow to
    # apply it, and keys typed before then go nowhere).
    page.wait_for_selector("input[name=username]:focus")
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "/login" not in page.url, f"login as {username} failed: {page.inner_text('body')[:200]}"


def test_keyboard_labeling_blinded_inert_model_output_and_export(server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            login(page, server, "ann", "ann-password")
            assert page.url == f"{server}/"
            page.goto(f"{server}/p/pw/label")
            # taking an item is a POST: the start button has focus, Enter presses it
            page.wait_for_selector("#start:focus")
            with page.expect_navigation():
                page.keyboard.press("Enter")

            # the script in a candidate is shown as text and never runs
            first = page.locator(".candidate pre.text").all_inner_texts()
            assert any(text.startswith(XSS) for text in first)
            assert page.evaluate("typeof window.__pwned") == "undefined"
            assert "model-x" not in page.content() and "model-y" not in page.content()

            page.keyboard.press("?")
            assert page.locator("#help").is_visible()
            page.keyboard.press("?")
            assert not page.locator("#help").is_visible()
            page.keyboard.press("g")
            assert "honest" in page.locator("#guidelines").inner_text()
            page.keyboard.press("Escape")

            chosen = []
            for n, key in enumerate(["1", "b", "2", "a", "1"]):
                left, right = page.locator(".candidate pre.text").all_inner_texts()
                chosen.append(left if key in "1a" else right)
                if n == 0:  # a reason, typed after r; Esc leaves the box
                    page.keyboard.press("r")
                    page.keyboard.type("clearer")
                    page.keyboard.press("Escape")
                page.keyboard.press(key)
                with page.expect_navigation():
                    page.keyboard.press("Enter")
            assert page.evaluate("typeof window.__pwned") == "undefined"

            admin = browser.new_context()
            admin_page = admin.new_page()
            login(admin_page, server, "root", "root-password")
            raw = admin.request.get(f"{server}/admin/p/pw/export?format=raw").text()
            assert raw.startswith("{"), f"raw export is not JSONL: {raw[:200]!r}"
            pairs = admin.request.get(f"{server}/admin/p/pw/export?format=preference").text()
        finally:
            browser.close()
    judgments = [json.loads(line) for line in raw.splitlines()]
    assert [j["annotator"] for j in judgments] == ["ann"] * 5
    assert judgments[0]["reason"] == "clearer"
    assert all(j["seconds"] is not None and j["shown_left"] in ("x", "y") for j in judgments)
    rows = [json.loads(line) for line in pairs.splitlines()]
    assert [r["id"] for r in rows] == ["i0", "i1", "i2", "i3", "i4"]
    assert [r["chosen"] for r in rows] == chosen
