"""A real browser (Debian's headless Chromium through Playwright) labels with the keyboard only,
renders Markdown responses safely, and lays pages out in one column on a phone.

Needs ``apt-get install chromium`` and ``pip install playwright`` (no Playwright browser
download: the system Chromium is used). Screenshots at 375 px and 1280 px wide go to
``runs/screenshots/`` (``$TETHER_SCREENSHOTS`` overrides) for a person to look at.
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
SCREENSHOTS = Path(os.environ.get("TETHER_SCREENSHOTS",
                                  Path(__file__).resolve().parents[1] / "runs" / "screenshots"))
MARKDOWN_ANSWER = """Use a **set** to drop duplicates; see [the docs](https://docs.python.org/3/).

```python
def unique(items: list[str]) -> list[str]:
    seen = set()  # keeps the first occurrence
    return [x for x in items if not (x in seen or seen.add(x))]
```

- keeps order
- O(n) time

[do not click](javascript:window.__pwned=1) ![tracker](https://tracker.example/p.png)
<img src=x onerror="window.__pwned=1">"""
PLAIN_ANSWER = ("Sort the list and walk it, skipping a value equal to the one before. "
                "This loses the original order, which the question did not ask to keep. "
                "A_very_long_identifier_without_spaces_that_must_wrap_instead_of_widening_the_page")

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
        _markdown_project(db)
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


def _markdown_project(db) -> None:
    """Project "md": Markdown answers, two annotators who disagree on half the items (the
    quality page has numbers to explain), and one item nobody judged (the export leaves it out).
    """
    from tether.feedback.app import projects, queue

    projects.create_user(db, "bob", "annotator", "bob-password")
    project = projects.create_project(db, "md", "pairwise", required_judgments=2, gold_rate=0,
                                      guidelines="Prefer answers that **run**.")
    projects.set_members(db, project, add=["ann", "bob"])
    projects.import_items(db, project, [
        {"id": f"m{i}", "prompt": f"How do I remove duplicates from a list in Python? ({i})",
         "candidates": [{"id": "md", "text": MARKDOWN_ANSWER}, {"id": "plain", "text": PLAIN_ANSWER}]}
        for i in range(9)])
    for name, always_md in (("root", True), ("bob", False)):
        user = projects.get_user(db, name)
        for n in range(8):
            assignment = queue.lease_next(db, project, user)
            winner = "md" if always_md or n % 2 else "plain"
            queue.submit(db, assignment, user, {"winner": winner})


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


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


def press_start(page) -> None:
    """Take an item the way an annotator does: the start button has focus, Enter presses it
    (leases are POSTs; the GET showed the button)."""
    page.wait_for_selector("#start:focus")
    with page.expect_navigation():
        page.keyboard.press("Enter")


def test_keyboard_labeling_blinded_inert_model_output_and_export(server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            login(page, server, "ann", "ann-password")
            assert page.url == f"{server}/"
            page.goto(f"{server}/p/pw/label")
            press_start(page)

            # the script in a candidate is shown as text and never runs
            first = page.locator(".candidate .text.rendered").all_inner_texts()
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
                left, right = page.locator(".candidate .text.rendered").all_inner_texts()
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


def open_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM,
                                      args=["--no-sandbox", "--disable-gpu"])


def test_markdown_responses_render_highlighted_and_inert(server):
    with sync_api.sync_playwright() as playwright:
        browser = open_browser(playwright)
        try:
            page = browser.new_page()
            login(page, server, "ann", "ann-password")
            page.goto(f"{server}/p/md/label")
            press_start(page)
            answer = page.locator(".candidate .text.rendered", has=page.locator("pre"))
            assert answer.locator("strong").inner_text() == "set"
            assert answer.locator("li").all_inner_texts() == ["keeps order", "O(n) time"]
            keyword = answer.locator("pre code span.k").first
            assert keyword.inner_text() == "def"
            # code.css reached the page under the CSP: keywords are coloured, bold
            style = keyword.evaluate("k => [getComputedStyle(k).color, getComputedStyle(k).fontWeight]")
            assert style == ["rgb(0, 128, 0)", "700"]
            links = answer.locator("a")
            assert links.evaluate_all("as => as.map(a => a.href)") == [
                "https://docs.python.org/3/", "https://tracker.example/p.png"]
            assert "javascript:window.__pwned=1" in answer.inner_text()  # shown, not a link
            assert page.locator(".candidate img").count() == 0
            assert page.evaluate("typeof window.__pwned") == "undefined"
            # m shows the Markdown source, and back
            page.keyboard.press("m")
            assert not answer.is_visible()
            source = page.locator(".candidate pre.source", has_text="```python").first
            assert source.is_visible()
            page.keyboard.press("m")
            assert answer.is_visible() and not source.is_visible()
        finally:
            browser.close()


def _boxes(page, selector: str) -> list[dict]:
    return [page.locator(selector).nth(i).bounding_box()
            for i in range(page.locator(selector).count())]


def _no_sideways_scrolling(page, width: int, what: str) -> None:
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{what}: the page is {scroll} px wide in a {width} px window"


@pytest.mark.parametrize("width", [375, 1280])
def test_layout_one_column_on_a_phone_and_screenshots(server, width):
    with sync_api.sync_playwright() as playwright:
        browser = open_browser(playwright)
        try:
            context = browser.new_context(viewport={"width": width, "height": 800})
            page = context.new_page()
            login(page, server, "ann", "ann-password")
            page.goto(f"{server}/p/md/label")
            assert page.locator("#counter").inner_text() == "1 of 1"  # on the start page too
            _no_sideways_scrolling(page, width, "start page")
            screenshot(page, f"start-{width}")
            press_start(page)
            assert page.locator("#counter").inner_text() == "1 of 1"
            first, second = _boxes(page, ".candidate")
            if width < 600:  # stacked, each the full width of the column
                assert second["y"] >= first["y"] + first["height"]
                assert abs(first["x"] - second["x"]) < 1
                assert first["width"] > width * 0.85
                assert not page.locator(".keys-hint").is_visible()
            else:  # side by side
                assert abs(first["y"] - second["y"]) < 1
                assert second["x"] >= first["x"] + first["width"]
            _no_sideways_scrolling(page, width, "label page")
            screenshot(page, f"label-{width}")

            page.keyboard.press("1") if width >= 600 else page.locator("text=A is better").click()
            with page.expect_navigation():
                page.locator("button[value=submit]").click()
            assert page.locator("#queue-empty").is_visible()
            with page.expect_navigation():
                page.locator("#edit-last").click()
            assert page.locator("input[value=left]").is_checked()
            _no_sideways_scrolling(page, width, "edit page")
            screenshot(page, f"edit-last-{width}")

            admin = browser.new_context(viewport={"width": width, "height": 800}).new_page()
            login(admin, server, "root", "root-password")
            admin.goto(f"{server}/admin/p/md/quality")
            assert admin.locator(".warning").count() >= 1
            _no_sideways_scrolling(admin, width, "quality page")
            screenshot(admin, f"quality-{width}")
            admin.goto(f"{server}/admin/p/md")
            assert "left out" in admin.locator("#exports").inner_text()
            _no_sideways_scrolling(admin, width, "admin project page")
            screenshot(admin, f"admin-project-{width}")
        finally:
            browser.close()


def test_keyboard_counter_and_undo(server):
    with sync_api.sync_playwright() as playwright:
        browser = open_browser(playwright)
        try:
            page = browser.new_page()
            login(page, server, "ann", "ann-password")
            page.goto(f"{server}/p/pw/label")
            assert page.locator("#counter").inner_text() == "1 of 6"
            press_start(page)
            assert page.locator("#counter").inner_text() == "1 of 6"
            question = page.locator(".prompt").inner_text()
            page.keyboard.press("a")
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert page.locator("#counter").inner_text() == "2 of 6"
            with page.expect_navigation():
                page.keyboard.press("u")  # edit the last judgment
            assert page.locator(".prompt").inner_text() == question
            assert page.locator("input[value=left]").is_checked()
            assert page.locator(".candidate.chosen").count() == 1
            page.keyboard.press("b")
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert "Your last judgment was changed." in page.locator("[role=status]").inner_text()
            assert page.locator("#counter").inner_text() == "2 of 6"
            with page.expect_navigation():
                page.keyboard.press("u")
            assert page.locator("input[value=right]").is_checked()
            with page.expect_navigation():
                page.locator("#take-back").click()
            assert "taken back" in page.locator("[role=status]").inner_text()
            assert page.locator("#counter").inner_text() == "1 of 5"  # that item is gone for ann
        finally:
            browser.close()
