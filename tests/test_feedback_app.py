"""The labeling app over HTTP (FastAPI TestClient, temporary SQLite): login, CSRF, roles,
escaping and blinding, rate limits, and the JSON API."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tether.feedback.app import Settings, create_app, projects

XSS = "<script>window.__pwned=1</script>"


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch):
    from argon2 import PasswordHasher

    from tether.feedback.app import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=64,
                                                            parallelism=1))


def make_app(db_url: str, **limits):
    app = create_app(Settings(db_url=db_url, **limits))
    with app.state.sessions.begin() as db:
        projects.create_user(db, "root", "admin", "root-password")
        for name in ("ann", "bob"):
            projects.create_user(db, name, "annotator", f"{name}-password")
        projects.create_user(db, "judge", "judge")
        project = projects.create_project(db, "p", "pairwise", required_judgments=2,
                                          gold_rate=0, guidelines="Be **fair**. <b>raw</b>")
        projects.import_items(db, project, [
            {"id": f"i{i}", "prompt": f"Question {i} & more",
             "candidates": [{"id": "secret-id-a", "text": f"{XSS} a{i}", "model": "model-alpha"},
                            {"id": "secret-id-b", "text": f"plain b{i}", "model": "model-beta"}]}
            for i in range(3)])
        projects.set_members(db, project, add=["ann", "bob", "judge"])
    return app


@pytest.fixture
def app(label_db_url):  # SQLite, and PostgreSQL when TETHER_TEST_POSTGRES_URL is set (conftest)
    return make_app(label_db_url)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client: TestClient, username: str, password: str | None = None):
    token = csrf_of(client.get("/login").text)
    return client.post("/login", follow_redirects=False, data={
        "username": username, "password": password or f"{username}-password",
        "csrf_token": token})


def start(client: TestClient, project: str = "p"):
    """Lease an item the way the page does: GET shows a start button, its POST leases."""
    page = client.get(f"/p/{project}/label").text
    return client.post(f"/p/{project}/label", data={"csrf_token": csrf_of(page)})


def api_token(app, username: str) -> dict[str, str]:
    with app.state.sessions.begin() as db:
        token = projects.create_token(db, projects.get_user(db, username))
    return {"Authorization": f"Bearer {token}"}


def test_login_sets_a_safe_session_cookie_and_wrong_passwords_fail(app):
    client = TestClient(app)
    assert client.get("/", follow_redirects=False).headers["location"] == "/login?next=/"
    assert login(client, "ann", "wrong-password").status_code == 401
    assert login(client, "nobody", "whatever-pw").status_code == 401
    assert login(client, "judge", "").status_code == 401  # API-only accounts
    response = login(client, "ann")
    assert response.status_code == 303
    cookie = next(c for c in response.headers.get_list("set-cookie")
                  if c.startswith("tether_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert client.get("/").status_code == 200
    logout = client.post("/logout", data={"csrf_token": csrf_of(client.get("/").text)},
                         follow_redirects=False)
    assert logout.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303  # session is gone


def test_login_redirect_stays_on_site(app):
    client = TestClient(app)
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", follow_redirects=False, data={
        "username": "ann", "password": "ann-password", "csrf_token": token,
        "next": "//evil.example/x"})
    assert response.headers["location"] == "/"


def test_every_form_post_needs_the_csrf_token(app):
    client = TestClient(app)
    assert login(client, "root").status_code == 303
    lease = start(client).text
    action = re.search(r'form id="judge" method="post" action="([^"]+)"', lease).group(1)
    from tether.feedback.app.web import router  # every HTML route; the API has its own

    posts = sorted({route.path for route in router.routes if "POST" in route.methods})
    assert posts == ["/admin/p/{name}/guidelines", "/admin/p/{name}/import",
                     "/admin/p/{name}/members", "/admin/projects", "/admin/users",
                     "/admin/users/{username}/active", "/admin/users/{username}/revoke-tokens",
                     "/admin/users/{username}/token", "/login", "/logout",
                     "/p/{name}/label", "/p/{name}/label/{assignment_id}",
                     "/p/{name}/last/{judgment_id}"]
    urls = {"/admin/p/{name}/guidelines": "/admin/p/p/guidelines",
            "/p/{name}/last/{judgment_id}": "/p/p/last/1",
            "/admin/p/{name}/import": "/admin/p/p/import",
            "/admin/p/{name}/members": "/admin/p/p/members",
            "/admin/users/{username}/token": "/admin/users/ann/token",
            "/admin/users/{username}/active": "/admin/users/ann/active",
            "/admin/users/{username}/revoke-tokens": "/admin/users/ann/revoke-tokens",
            "/p/{name}/label": "/p/p/label",
            "/p/{name}/label/{assignment_id}": action}
    forms = {"/admin/projects": {"name": "q", "task": "pairwise"},
             "/admin/users": {"username": "eve", "role": "annotator", "password": "eve-password"},
             "/login": {"username": "ann", "password": "ann-password"},
             "/p/{name}/label/{assignment_id}": {"choice": "left"},
             "/p/{name}/last/{judgment_id}": {"action": "take_back"},
             "/admin/p/{name}/guidelines": {"text": "new"},
             "/admin/p/{name}/members": {"username": "root"},
             "/admin/users/{username}/active": {"active": "0"}}
    files = {"/admin/p/{name}/import": {"file": ("x.jsonl", b"{}")}}
    for path in posts:
        for token in (None, "forged-token"):
            data = dict(forms.get(path, {}))
            if token:
                data["csrf_token"] = token
            response = client.post(urls.get(path, path), data=data, files=files.get(path),
                                   follow_redirects=False)
            assert response.status_code == 403, path
            assert "CSRF token is missing or stale" in response.text, path
    # nothing changed: still logged in, no user, project, judgment or guidelines version added
    with app.state.sessions.begin() as db:
        assert [u.username for u in db.scalars(projects.select(projects.User))] == [
            "root", "ann", "bob", "judge"]
        assert projects.current_guidelines(db, projects.get_project(db, "p")).version == 1
        assert projects.project_records(db, projects.get_project(db, "p"))[1] == []
    assert client.get("/").status_code == 200


def test_annotator_cannot_see_admin_pages_or_others_judgments(app):
    ann, bob = TestClient(app), TestClient(app)
    login(ann, "ann"), login(bob, "bob")
    for path in ("/admin", "/admin/p/p", "/admin/p/p/export?format=raw", "/admin/p/p/quality",
                 "/admin/p/p/leaderboard"):
        assert ann.get(path).status_code == 403, path
    page = start(bob).text
    action = re.search(r'action="(/p/p/label/\d+)"', page).group(1)
    assert bob.post(action, data={"csrf_token": csrf_of(page), "choice": "right",
                                  "reason": "bob-reason"}).status_code == 200
    # ann cannot submit on bob's assignment, nor read his judgments
    ann_page = start(ann).text
    assert ann.post(action, data={"csrf_token": csrf_of(ann_page), "choice": "left"}
                    ).status_code == 404
    assert "bob-reason" not in ann.get("/p/p/mine").text
    assert "bob-reason" in bob.get("/p/p/mine").text
    headers = api_token(app, "ann")
    assert ann.get("/api/projects/p/judgments?annotator=bob", headers=headers).status_code == 403
    assert ann.get("/api/projects/p/judgments", headers=headers).json() == []
    assert ann.get("/api/projects/p/export", headers=headers).status_code == 403
    admin = api_token(app, "root")
    (judgment,) = ann.get("/api/projects/p/judgments?annotator=bob", headers=admin).json()
    assert judgment["annotator"] == "bob" and judgment["reason"] == "bob-reason"


def test_model_output_is_escaped_and_models_are_hidden(app):
    client = TestClient(app)
    login(client, "ann")
    response = start(client)
    page = response.text
    assert XSS not in page
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    assert "Question" in page and "&amp; more" in page
    for secret in ("model-alpha", "model-beta", "secret-id-a", "secret-id-b"):
        assert secret not in page
    assert "script-src 'self'" in response.headers["content-security-policy"]
    guidelines = client.get("/p/p/guidelines").text
    assert "<strong>fair</strong>" in guidelines and "&lt;b&gt;raw&lt;/b&gt;" in guidelines
    api = client.post("/api/projects/p/next", headers=api_token(app, "ann")).json()
    assert set(api["candidates"][0]) == {"position", "text"}


def test_failed_logins_back_off_per_user_and_client(label_db_url):
    client = TestClient(make_app(label_db_url, login_free_failures=3, login_backoff=(60, 900)))
    statuses = [login(client, "ann", "wrong-password").status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 429]  # three free, the fourth starts the wait
    response = login(client, "ann")  # even the right password waits it out
    assert response.status_code == 429 and response.headers["retry-after"] == "60"
    assert login(client, "bob").status_code == 303  # another name from the same address


def test_submissions_are_rate_limited(label_db_url):
    app = make_app(label_db_url, submit_limit=(2, 60.0))
    headers = api_token(app, "ann")
    client = TestClient(app)
    statuses = []
    for _ in range(3):
        lease = client.post("/api/projects/p/next", headers=headers).json()
        statuses.append(client.post(f"/api/assignments/{lease['assignment_id']}",
                                    json={"choice": "tie"}, headers=headers).status_code)
    assert statuses == [200, 200, 429]


def test_api_labeling_bulk_ai_upload_and_export(app):
    client = TestClient(app)
    assert client.get("/api/me").status_code == 401
    assert client.get("/api/me", headers={"Authorization": "Bearer tl_nope"}).status_code == 401
    ann, judge, root = api_token(app, "ann"), api_token(app, "judge"), api_token(app, "root")
    assert client.get("/api/me", headers=ann).json() == {"username": "ann", "role": "annotator"}
    assert client.post("/api/projects/p/next", headers=judge).status_code == 403
    done = []
    while (response := client.post("/api/projects/p/next", headers=ann)).status_code == 200:
        lease = response.json()
        assert lease["task"] == "pairwise" and lease["guidelines_version"] == 1
        again = client.post("/api/projects/p/next", headers=ann).json()
        assert again["assignment_id"] == lease["assignment_id"]  # resumes the open lease
        good = next(c for c in lease["candidates"] if c["text"].startswith("<script>"))
        choice = "left" if good["position"] == 0 else "right"
        result = client.post(f"/api/assignments/{lease['assignment_id']}", headers=ann,
                             json={"choice": choice})
        assert result.status_code == 200
        done.append(result.json()["item_id"])
        repeat = client.post(f"/api/assignments/{lease['assignment_id']}", headers=ann,
                             json={"choice": choice})
        assert repeat.status_code == 409
    assert response.status_code == 204 and sorted(done) == ["i0", "i1", "i2"]
    bad = client.post("/api/assignments/1", headers=ann, json={"choice": "middle"})
    assert bad.status_code in (409, 422)

    items = client.get("/api/projects/p/items", headers=judge).json()
    assert [i["id"] for i in items] == ["i0", "i1", "i2"]
    assert set(items[0]["candidates"][0]) == {"id", "text"}  # no model names
    ai = [{"item_id": f"i{i}", "task": "pairwise", "verdict": {"winner": "secret-id-b"},
           "annotator": "ai:judge-v1", "source": "ai"} for i in range(3)]
    assert client.post("/api/projects/p/judgments/bulk", headers=ann, json=ai).status_code == 403
    created = client.post("/api/projects/p/judgments/bulk", headers=judge, json=ai)
    assert created.json() == {"created": 3, "duplicates": []}
    assert client.post("/api/projects/p/judgments/bulk", headers=judge, json=ai).json() == {
        "created": 0, "duplicates": ["i0", "i1", "i2"]}
    wrong = client.post("/api/projects/p/judgments/bulk", headers=judge,
                        json=[{**ai[0], "verdict": {"winner": "zzz"}}])
    assert wrong.status_code == 422 and "winner 'zzz' is not a candidate" in wrong.json()["detail"]

    # one human vote for a, one AI vote for b: a split, so no pair unless AI is left out
    assert client.get("/api/projects/p/export?format=preference", headers=root).text == ""
    human_only = client.get("/api/projects/p/export?format=preference&ai=false", headers=root)
    rows = [r for r in human_only.text.splitlines()]
    assert len(rows) == 3 and all('"chosen": "<script>' in r for r in rows)
    raw = client.get("/api/projects/p/export?format=raw", headers=root).text.splitlines()
    assert len(raw) == 6


def test_admin_pages_work_and_guidelines_edits_make_versions(app):
    client = TestClient(app)
    login(client, "root")
    page = client.get("/admin/p/p").text
    assert "0 / 3 items complete" in page
    response = client.post("/admin/p/p/guidelines", data={"csrf_token": csrf_of(page),
                                                          "text": "# v2"})
    assert response.status_code == 200 and "Guidelines version 2" in response.text
    upload = client.post(f"/admin/p/p/import?csrf_token={csrf_of(page)}", files={
        "file": ("more.jsonl", b'{"id": "n1", "prompt": "p", "candidates": '
                               b'[{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]}\n{oops\n')})
    assert upload.status_code == 422 and "more.jsonl:2: invalid JSON" in upload.text
    created = client.post("/admin/users", data={"csrf_token": csrf_of(page), "username": "eve",
                                                "role": "annotator", "password": "short"})
    assert created.status_code == 422 and "at least 8 characters" in created.text
    token = client.post("/admin/users/ann/token", data={"csrf_token": csrf_of(page)})
    secret = re.search(r'<pre class="token" id="new-token">(tl_[^<]+)</pre>', token.text).group(1)
    assert client.get("/api/me", headers={"Authorization": f"Bearer {secret}"}).json()[
        "username"] == "ann"


def test_quality_and_leaderboard_pages(app):
    ann, bob, root = TestClient(app), TestClient(app), TestClient(app)
    for client, name in ((ann, "ann"), (bob, "bob"), (root, "root")):
        login(client, name)
    for client in (ann, bob):  # both prefer the candidate of model-alpha on every item
        start(client)
        while 'id="judge"' in (page := client.get("/p/p/label").text):
            action = re.search(r'action="(/p/p/label/\d+)"', page).group(1)
            left = re.search(r'<h2>A <small class="side">left</small></h2>\s*'
                             r'<div class="text markdown rendered"><p>([^<]*)', page)
            choice = "left" if left.group(1).startswith("&lt;script") else "right"
            client.post(action, data={"csrf_token": csrf_of(page), "choice": choice})
    quality = root.get("/admin/p/p/quality")
    assert quality.status_code == 200
    # two annotators agreeing on all three items: alpha is undefined for a single category, raw
    # agreement is 1
    assert re.search(r'<td class="raw">1.00</td>', quality.text)
    assert "alpha is undefined: every verdict is the same" in quality.text
    board = root.get("/admin/p/p/leaderboard?bootstrap=20")
    assert board.status_code == 200
    names = re.findall(r"<td>(model-\w+)</td>", board.text)
    assert names == ["model-alpha", "model-beta"]
