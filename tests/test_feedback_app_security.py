"""The labeling app against hostile clients: uploads, malformed imports, login guessing,
revoked accounts and tokens, squatted names, leases and project membership (issue 17)."""

from __future__ import annotations

import asyncio
import html
import io
import json
import sys
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update
from test_feedback_app import (  # noqa: F401 (fixtures: app, fast_password_hashing)
    api_token,
    app,
    csrf_of,
    fast_password_hashing,
    login,
    make_app,
    start,
)

from tether.cli import main
from tether.feedback.app import db as db_module
from tether.feedback.app import projects, security
from tether.feedback.app.db import session_factory
from tether.feedback.app.models import ApiToken, Assignment, Item, utcnow

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


def run(*argv: str) -> int:
    old, sys.stdin = sys.stdin, io.StringIO("")
    try:
        return main(["label", *argv])
    finally:
        sys.stdin = old


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


def test_an_ai_batch_is_not_read_before_its_token_and_forms_are_capped_at_1_mib(app):
    assert post_raw(app, "/api/projects/p/judgments/bulk", length=50 * MB) == (401, 0)
    client = TestClient(app)
    judge = api_token(app, "judge")
    deep = client.post("/api/projects/p/judgments/bulk", headers=judge,
                       content=b"[" * 100_000 + b"]" * 100_000)
    assert deep.status_code == 422 and "recursion limit" in deep.json()["detail"]
    wrong = client.post("/api/projects/p/judgments/bulk", headers=judge, json=[{"task": "x"}])
    assert wrong.status_code == 422 and "0.item_id: Field required" in wrong.json()["detail"]
    login_form = post_raw(app, "/login", length=2 * MB)
    assert login_form == (413, 0)


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
    for name, (body, message) in cases.items():
        response = upload(client, name, body.encode())
        assert response.status_code == 422, name
        assert message in html.unescape(response.text), (name, response.text[-600:])
    with app.state.sessions.begin() as db:  # nothing imported from any of them
        assert projects.progress(db, projects.get_project(db, "p"))["items"] == 3
    assert upload(client, "fine.jsonl", (good + "\n").encode()).status_code == 200


def test_backoff_doubles_after_the_free_failures_and_success_clears_it():
    now = [0.0]
    backoff = security.FailureBackoff(free=2, base=1.0, longest=5.0, forget=100.0,
                                      clock=lambda: now[0])
    waits = []
    for _ in range(6):
        backoff.failed("k")
        waits.append(backoff.wait("k"))
    assert waits == [0, 0, 1, 2, 4, 5]  # doubling, capped at `longest`
    assert backoff.wait("other") == 0
    now[0] = 4.0
    assert backoff.wait("k") == 1.0
    backoff.succeeded("k")
    assert backoff.wait("k") == 0
    for _ in range(3):
        backoff.failed("k")
    now[0] += 101  # idle longer than `forget`: starts over
    backoff.failed("k")
    assert backoff.wait("k") == 0


def test_a_stranger_cannot_lock_out_the_owner(label_db_url):
    app = make_app(label_db_url, login_free_failures=3, login_backoff=(600, 900))
    stranger = TestClient(app, client=("203.0.113.9", 4000))
    for _ in range(10):
        login(stranger, "ann", "guessing-pw")
    assert login(stranger, "ann").status_code == 429  # the guesser waits, even when right
    owner = TestClient(app, client=("198.51.100.7", 4000))
    assert login(owner, "ann").status_code == 303
    # a colleague behind the stranger's address is not held up by the stranger's guesses
    colleague = TestClient(app, client=("203.0.113.9", 4001))
    assert login(colleague, "bob").status_code == 303


def test_password_hashing_runs_outside_the_write_lock(label_db_url, monkeypatch):
    app = make_app(label_db_url)
    lock = app.state.write_lock
    if not hasattr(lock, "locked"):  # PostgreSQL has no app-wide lock to stay out of
        return
    held = []
    for name in ("verify_password", "hash_password"):
        original = getattr(security, name)
        monkeypatch.setattr(security, name,
                            lambda *a, _f=original: held.append(lock.locked()) or _f(*a))
    client = TestClient(app)
    assert login(client, "ann", "wrong-password").status_code == 401
    assert login(client, "root").status_code == 303
    token = csrf_of(client.get("/admin").text)
    assert client.post("/admin/users", data={"csrf_token": token, "username": "eve",
                                             "role": "annotator",
                                             "password": "eve-password"}).status_code == 200
    assert len(held) == 3 and not any(held)


def stored_item(db, project, item_id: str, ids: list[str]) -> None:
    db.add(Item(project_id=project.id, external_id=item_id, prompt="p", item_metadata={},
                candidates=[{"id": c, "text": f"text {c}", "model": "m"} for c in ids]))


def test_items_that_fail_the_import_checks_never_block_the_queue(label_db_url):
    app = make_app(label_db_url)
    with app.state.sessions.begin() as db:  # as an older tether could have stored them
        rank = projects.create_project(db, "r", "ranking", gold_rate=0)
        stored_item(db, rank, "wide", [f"c{i}" for i in range(27)])
        stored_item(db, rank, "fine", ["a", "b", "c"])
        stored_item(db, projects.get_project(db, "p"), "0-tie", ["tie", "b"])
        projects.set_members(db, rank, add=["ann", "bob"])
    for name in ("ann", "bob"):
        client = TestClient(app)
        login(client, name)
        page = start(client, "r")
        assert page.status_code == 200 and "text c0" not in page.text
        assert "text a" in page.text  # the good item, not a 500
        assert "text tie" not in start(client, "p").text
    root = TestClient(app)
    login(root, "root")
    assert "items not served</td><td>1" in root.get("/admin/p/r").text
    with app.state.sessions.begin() as db:
        problem = db.scalar(select(Item.problem).where(Item.external_id == "wide"))
    assert "at most 26 candidates" in problem
    token = csrf_of(root.get("/admin/p/r").text)
    wide = pair_line("w", ids=[f"c{i}" for i in range(27)])
    response = root.post(f"/admin/p/r/import?csrf_token={token}",
                         files={"file": ("wide.jsonl", wide.encode())})
    assert response.status_code == 422
    assert "wide.jsonl:1: field 'candidates': at most 26 candidates" in html.unescape(
        response.text)


def test_pages_and_api_reads_create_no_leases(app):
    client = TestClient(app)
    login(client, "ann")
    headers = api_token(app, "ann")

    def leases() -> int:
        with app.state.sessions.begin() as db:
            return db.scalar(select(func.count()).select_from(Assignment))

    assert 'id="start"' in client.get("/p/p/label").text
    assert client.get("/api/projects/p/next", headers=headers).status_code == 405
    assert leases() == 0
    assert 'id="judge"' in start(client).text
    assert leases() == 1
    lease = client.post("/api/projects/p/next", headers=headers).json()  # the same open lease
    assert leases() == 1 and f'/label/{lease["assignment_id"]}"' in client.get("/p/p/label").text


def test_annotators_and_judges_see_only_their_projects(app):
    with app.state.sessions.begin() as db:
        projects.create_user(db, "eve", "annotator", "eve-password")
        projects.create_project(db, "q", "pairwise")
    eve = TestClient(app)
    login(eve, "eve")
    headers = api_token(app, "eve")
    assert ">p</td>" not in eve.get("/").text
    for path in ("/p/p/label", "/p/p/guidelines", "/p/p/mine"):
        assert eve.get(path).status_code == 404, path
    assert eve.get("/api/projects", headers=headers).json() == []
    assert eve.post("/api/projects/p/next", headers=headers).status_code == 404
    assert eve.get("/api/projects/p/judgments", headers=headers).status_code == 404
    judge = api_token(app, "judge")
    assert [p["name"] for p in eve.get("/api/projects", headers=judge).json()] == ["p"]
    assert eve.get("/api/projects/q/items", headers=judge).status_code == 404

    root = TestClient(app)
    login(root, "root")
    token = csrf_of(root.get("/admin/p/p").text)
    assert root.post("/admin/p/p/members", data={"csrf_token": token, "username": "eve"}
                     ).status_code == 200
    assert ">p</td>" in eve.get("/").text and eve.get("/p/p/label").status_code == 200
    assert [p["name"] for p in eve.get("/api/projects", headers=headers).json()] == ["p"]
    root.post("/admin/p/p/members", data={"csrf_token": token, "username": "eve",
                                          "action": "remove"})
    assert eve.get("/p/p/label").status_code == 404


def test_an_ai_judge_cannot_squat_a_name(app):
    client = TestClient(app)
    judge = api_token(app, "judge")
    vote = {"item_id": "i0", "task": "pairwise", "verdict": {"winner": "secret-id-a"},
            "source": "ai", "annotator": "carol"}
    assert client.post("/api/projects/p/judgments/bulk", headers=judge, json=[vote]).json() == {
        "created": 1, "duplicates": []}
    with app.state.sessions.begin() as db:  # a person called carol joins later
        projects.create_user(db, "carol", "annotator", "carol-password")
        projects.set_members(db, projects.get_project(db, "p"), add=["carol"])
    carol = api_token(app, "carol")
    lease = client.post("/api/projects/p/next", headers=carol).json()
    assert client.post(f"/api/assignments/{lease['assignment_id']}", headers=carol,
                       json={"choice": "tie"}).status_code == 200
    raw = client.get("/api/projects/p/export?format=raw", headers=api_token(app, "root"))
    names = sorted((row["item_id"], row["annotator"]) for row in map(json.loads,
                                                                      raw.text.splitlines()))
    assert names == [("i0", "carol"), ("i0", "judge/carol")]


def test_deactivated_users_and_revoked_or_expired_tokens_are_refused(label_db_url, capsys):
    app = make_app(label_db_url)
    db = label_db_url
    client = TestClient(app)
    login(client, "ann")
    headers = api_token(app, "ann")
    assert client.get("/").status_code == 200
    assert run("deactivate-user", "ann", "--db", db) == 0
    assert client.get("/", follow_redirects=False).status_code == 303  # session ended
    assert client.get("/api/me", headers=headers).status_code == 401  # token deleted
    assert login(TestClient(app), "ann").status_code == 401
    assert run("activate-user", "ann", "--db", db) == 0
    assert login(TestClient(app), "ann").status_code == 303

    capsys.readouterr()
    assert run("token", "bob", "--db", db, "--name", "laptop", "--days", "30") == 0
    laptop = {"Authorization": f"Bearer {capsys.readouterr().out.strip()}"}
    bot = api_token(app, "bob")
    assert client.get("/api/me", headers=laptop).status_code == 200
    assert run("tokens", "bob", "--db", db) == 0
    listing = capsys.readouterr().out
    assert "\tlaptop\texpires " in listing and "\tdefault\t" in listing
    assert run("revoke-token", "bob", "--name", "laptop", "--db", db) == 0
    assert client.get("/api/me", headers=laptop).status_code == 401
    assert client.get("/api/me", headers=bot).status_code == 200  # the other token still works
    with app.state.sessions.begin() as session:  # time passes
        session.execute(update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert client.get("/api/me", headers=bot).status_code == 401
    assert run("revoke-token", "bob", "--db", db) == 2  # says which tokens


def test_upgrading_keeps_access_and_gives_old_tokens_an_expiry(label_db_url):
    from alembic import command
    from alembic.config import Config

    from tether.feedback.app.db import make_engine, migrate

    engine = make_engine(label_db_url)
    config = Config()
    config.set_main_option("script_location", str(Path(db_module.__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        now = utcnow()
        for sql in ("INSERT INTO users VALUES (1, 'root', 'admin', NULL, true, :now)",
                    "INSERT INTO users VALUES (2, 'ann', 'annotator', NULL, true, :now)",
                    "INSERT INTO projects VALUES (1, 'p', 'pairwise', 1, 0.0, 60, 7, :now)",
                    "INSERT INTO api_tokens VALUES (1, 2, 'old', 'h', :now, NULL)"):
            connection.execute(text(sql), {"now": now})
    assert migrate(engine) == "0002"
    with session_factory(engine).begin() as db:
        assert [u.username for u in projects.members(db, projects.get_project(db, "p"))] == [
            "ann"]
        expires = db.scalar(select(ApiToken.expires_at))
        assert timedelta(days=89) < expires - now < timedelta(days=91)
    engine.dispose()


def test_admins_deactivate_users_and_revoke_tokens_on_the_admin_page(app):
    root, ann = TestClient(app), TestClient(app)
    login(root, "root"), login(ann, "ann")
    headers = api_token(app, "ann")
    token = csrf_of(root.get("/admin").text)
    response = root.post("/admin/users/ann/revoke-tokens", data={"csrf_token": token})
    assert "Revoked 1 API token(s) of ann." in response.text
    assert ann.get("/api/me", headers=headers).status_code == 401
    assert ann.get("/").status_code == 200  # the web session is another matter
    root.post("/admin/users/ann/active", data={"csrf_token": token, "active": "0"})
    assert ann.get("/", follow_redirects=False).status_code == 303
    assert login(TestClient(app), "ann").status_code == 401
    root.post("/admin/users/ann/active", data={"csrf_token": token, "active": "1"})
    assert login(TestClient(app), "ann").status_code == 303
    refused = root.post("/admin/users/root/active", data={"csrf_token": token, "active": "0"})
    assert refused.status_code == 422 and root.get("/admin").status_code == 200
