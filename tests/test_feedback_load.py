"""Load over loopback: 20 annotators submit 50 judgments each in parallel (threads, httpx) to a
real server started with ``tether label serve`` (uvicorn; SQLite, and PostgreSQL when
``TETHER_TEST_POSTGRES_URL`` is set). No judgment may be lost or stored twice, nobody may judge
an item twice, and no item may pass its overlap cap."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

import tether

ANNOTATORS, PER_ANNOTATOR, REQUIRED = 20, 50, 3
ITEMS = 400  # leased in id order, so all 20 fight over the same first items and hit the cap;
# 400 leaves every annotator 50 distinct items even when it lags far behind the others


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch):
    from argon2 import PasswordHasher

    from tether.feedback.app import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=64,
                                                            parallelism=1))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_parallel_annotators_lose_nothing_and_respect_overlap(label_db_url):
    from tether.feedback.app import projects
    from tether.feedback.app.db import make_engine, migrate, session_factory
    from tether.feedback.app.models import JudgmentRow

    engine = make_engine(label_db_url)
    migrate(engine)
    tokens = {}
    with session_factory(engine).begin() as db:
        project = projects.create_project(db, "load", "pairwise", required_judgments=REQUIRED,
                                          gold_rate=0)
        projects.import_items(db, project, [
            {"id": f"i{i}", "prompt": f"p{i}", "candidates": [{"id": "a", "text": "A"},
                                                               {"id": "b", "text": "B"}]}
            for i in range(ITEMS)])
        for n in range(ANNOTATORS):
            user = projects.create_user(db, f"a{n}", "annotator", "load-password")
            tokens[user.username] = projects.create_token(db, user)
        projects.set_members(db, project, add=list(tokens))

    # its own process, so the server and the 20 client threads do not share one GIL
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "tether.cli", "label", "serve", "--db", label_db_url,
         "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "PYTHONPATH": str(Path(tether.__file__).parents[1])},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not start in 60 s"
            try:
                if httpx.get(f"{base}/login", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)

        def annotate(username: str) -> tuple[list[str], list[int]]:
            accepted, errors = [], []
            headers = {"Authorization": f"Bearer {tokens[username]}"}
            with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
                while len(accepted) < PER_ANNOTATOR:
                    lease = client.post("/api/projects/load/next")
                    if lease.status_code != 200:
                        errors.append(lease.status_code)  # 204 here would mean a lost slot
                        break
                    result = client.post(f"/api/assignments/{lease.json()['assignment_id']}",
                                         json={"choice": "left"})
                    if result.status_code != 200:
                        errors.append(result.status_code)
                        break
                    accepted.append(result.json()["item_id"])
            return accepted, errors

        started = time.monotonic()
        with ThreadPoolExecutor(ANNOTATORS) as pool:
            results = dict(zip(tokens, pool.map(annotate, tokens)))
        elapsed = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(10)

    assert {user: errors for user, (_, errors) in results.items() if errors} == {}
    accepted = sorted((user, item) for user, (items, _) in results.items() for item in items)
    assert len(accepted) == ANNOTATORS * PER_ANNOTATOR, f"in {elapsed:.1f} s"
    assert len(set(accepted)) == len(accepted)  # nobody judged an item twice
    per_item = Counter(item for _, item in accepted)
    assert max(per_item.values()) == REQUIRED  # the cap is reached and never passed
    with session_factory(engine)() as db:
        stored = db.execute(select(JudgmentRow.annotator, JudgmentRow.item_id)).all()
        names = {i: e for i, e in db.execute(select(projects.Item.id, projects.Item.external_id))}
    assert sorted((user, names[item]) for user, item in stored) == accepted  # none lost or extra
    engine.dispose()
