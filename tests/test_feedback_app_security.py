"""The labeling app against hostile clients: uploads, malformed imports, login guessing,
revoked accounts and tokens, squatted names, leases and project membership (issue 17)."""

from __future__ import annotations

import asyncio
import html
import json

from fastapi.testclient import TestClient

from tether.feedback.app import Settings, create_app, projects
from test_feedback_app import (  # noqa: F401 (fixtures: app, fast_password_hashing)
    api_token, app, csrf_of, fast_password_hashing, login, make_app,
)

MB = 2**20


def post_raw(app, path: str, *, length: int | None, cookie: str = "",
             chunk: int = MB) -> tuple[int, int]:
    """POST a body of ``length`` bytes (chunked when None: 300 MB) straight to the ASGI app;
    returns (status, bytes the app pulled)."""
    total = length if length is not None else 300 * MB
    pulled = 0
    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"cookie", cookie.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path.split("?")[0], "raw_path": path.encode(),
             "query_string": path.partition("?")[2].encode(), "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 5000), "server": ("test", 80)}
    status = []

    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'

    async def receive():
        nonlocal pulled
        size = min(chunk, total - pulled)
        body = (head + b"{" * size)[:size] if pulled == 0 else b"{" * size
        pulled += size
        return {"type": "http.request", "body": body, "more_body": pulled < total}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    asyncio.run(app(scope, receive, send))
    return status[0], pulled


def session_cookie(client: TestClient) -> str:
    return f"tether_session={client.cookies['tether_session']}"


def test_an_upload_is_not_read_before_login_csrf_and_size_pass(label_db_url, tmp_path):
    app = make_app(label_db_url, max_upload_mb=1000)  # the cap alone would not stop 300 MB
    assert post_raw(app, "/admin/p/p/import", length=300 * MB) == (303, 0)  # to /login
    ann, root = TestClient(app), TestClient(app)
    login(ann, "ann"), login(root, "root")
    token = csrf_of(root.get("/admin/p/p").text)
    assert post_raw(app, "/admin/p/p/import", length=300 * MB,
                    cookie=session_cookie(ann)) == (403, 0)  # annotators are not admins
    assert post_raw(app, "/admin/p/p/import?csrf_token=forged", length=300 * MB,
                    cookie=session_cookie(root)) == (403, 0)

    capped = make_app(str(tmp_path / "capped.db"), max_upload_mb=2)
    root = TestClient(capped)
    login(root, "root")
    token = csrf_of(root.get("/admin/p/p").text)
    path = f"/admin/p/p/import?csrf_token={token}"
    assert post_raw(capped, path, length=300 * MB, cookie=session_cookie(root)) == (413, 0)
    status, pulled = post_raw(capped, path, length=None, cookie=session_cookie(root))
    assert status == 413 and pulled <= 3 * MB  # chunked: stopped once past the cap


def upload(client: TestClient, name: str, data: bytes):
    token = csrf_of(client.get("/admin/p/p").text)
    return client.post(f"/admin/p/p/import?csrf_token={token}", files={"file": (name, data)})


def pair_line(item_id: str, ids=("a", "b"), **extra) -> str:
    return json.dumps({"id": item_id, "prompt": "p", **extra,
                       "candidates": [{"id": c, "text": f"text {c}"} for c in ids]})


def test_malformed_uploads_answer_422_with_the_line(app):
    client = TestClient(app)
    login(client, "root")
    good = pair_line("ok")
    cases = {
        "deep.jsonl": (good + "\n" + "[" * 100_000 + "]" * 100_000,
                       "deep.jsonl:2: invalid JSON: nested too deeply"),
        "nested.jsonl": (good + "\n" + pair_line("n", metadata={"x": json.loads(
            "[" * 200 + "]" * 200)}), "nested.jsonl:2: nested more than 32 levels"),
        "digits.jsonl": ('{"id": "d", "prompt": ' + "7" * 5000 + "}",
                         "digits.jsonl:1: invalid JSON: Exceeds the limit (4300 digits)"),
        "reserved.jsonl": (good + "\n" + pair_line("r", ids=("tie", "b")),
                           "reserved.jsonl:2: field 'candidates': candidate ids ['tie'] are "
                           "reserved"),
        ".": ("{oops", "upload.jsonl:1: invalid JSON"),
        "..": ("{oops", "upload.jsonl:1: invalid JSON"),
    }
    for name, (text, message) in cases.items():
        response = upload(client, name, text.encode())
        assert response.status_code == 422, name
        assert message in html.unescape(response.text), (name, response.text[-600:])
    with app.state.sessions.begin() as db:  # nothing imported from any of them
        assert projects.progress(db, projects.get_project(db, "p"))["items"] == 3
    assert upload(client, "fine.jsonl", (good + "\n").encode()).status_code == 200
