"""Labeling UX over HTTP: the "12 of 40" counter, editing or taking back one's last judgment,
the quality page's explanations and chance warnings, and what an export leaves out."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from test_feedback_app import (  # noqa: F401
    api_token,
    csrf_of,
    fast_password_hashing,
    login,
    make_app,
    start,
)

from tether.feedback.app import projects, queue
from tether.feedback.app.annotator_progress import annotator_progress
from tether.feedback.app.errors import Invalid
from tether.feedback.app.quality_view import quality_view, reading


@pytest.fixture
def app(label_db_url):  # project "p": pairwise, 3 items, 2 judgments each; ann, bob, root
    app = make_app(label_db_url)
    with app.state.sessions.begin() as db:
        projects.create_user(db, "cara", "annotator", "cara-password")
        projects.set_members(db, projects.get_project(db, "p"), add=["cara"])
    return app


def counter(page: str) -> str:
    return re.search(r'<span id="counter">([^<]*)</span>', page).group(1)


def shown_item(page: str) -> str:
    return re.search(r"Question (\d+) &amp; more", page).group(1)


def judge(client: TestClient, choice: str = "left", reason: str = "") -> str:
    """Submit ``choice`` on the item on screen (pressing Start first if there is none);
    returns that item's number."""
    page = start(client).text
    action = re.search(r'action="(/p/p/label/\d+)"', page).group(1)
    response = client.post(action, data={"csrf_token": csrf_of(page), "choice": choice,
                                         "reason": reason}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return shown_item(page)


def my_judgments(app, client: TestClient, username: str) -> list[dict]:
    return client.get("/api/projects/p/judgments", headers=api_token(app, username)).json()


def test_label_page_counts_my_judgments_of_the_items_open_to_me(app):
    ann, bob, cara = TestClient(app), TestClient(app), TestClient(app)
    for client, name in ((ann, "ann"), (bob, "bob"), (cara, "cara")):
        login(client, name)
    assert counter(ann.get("/p/p/label").text) == "1 of 3"
    judge(ann)
    assert counter(ann.get("/p/p/label").text) == "2 of 3"
    judge(bob)  # the item ann judged first: it now has its 2 judgments
    # and bob's submit leased him the item ann is on, so that one is full too for now
    assert counter(cara.get("/p/p/label").text) == "1 of 1"  # the start page counts as well
    judge(ann), judge(ann)
    done = ann.get("/p/p/label").text
    assert 'id="queue-empty"' in done and "you judged 3 items" in done


def test_the_counter_predicts_how_many_items_the_queue_serves_with_gold(label_db_url):
    app = make_app(label_db_url)
    with app.state.sessions.begin() as db:
        project = projects.create_project(db, "g", "pairwise", required_judgments=1,
                                          gold_rate=0.25)
        projects.import_items(db, project, [
            {"id": f"i{i}", "prompt": "Q", "gold": {"winner": "a"} if i % 3 == 0 else None,
             "candidates": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]}
            for i in range(12)])  # 4 gold, 8 regular: at a 0.25 gold rate only 2 gold are used
        ann = projects.get_user(db, "ann")
        predicted = annotator_progress(db, project, ann)["total"]
        served = 0
        while (assignment := queue.lease_next(db, project, ann)) is not None:
            assert annotator_progress(db, project, ann) == {
                "done": served, "left": predicted - served, "total": predicted}
            queue.submit(db, assignment, ann, {"winner": "a"})
            served += 1
    assert (predicted, served) == (10, 10)


def test_edit_last_judgment_in_place(app):
    ann, bob = TestClient(app), TestClient(app)
    login(ann, "ann"), login(bob, "bob")
    judge(ann, "left", reason="first thought")
    (before,) = my_judgments(app, ann, "ann")

    page = ann.get("/p/p/last").text
    assert re.search(r'value="left"[^>]* checked>', page) and 'value="first thought"' in page
    action = re.search(r'form id="judge" method="post" action="(/p/p/last/\d+)"', page).group(1)
    saved = ann.post(action, data={"csrf_token": csrf_of(page), "action": "save",
                                   "choice": "right", "reason": "on second thought"},
                     follow_redirects=False)
    assert saved.headers["location"] == "/p/p/label?notice=edited"
    assert "Your last judgment was changed." in ann.get(saved.headers["location"]).text
    (after,) = my_judgments(app, ann, "ann")
    assert after["item_id"] == before["item_id"] and after["reason"] == "on second thought"
    assert after["verdict"]["winner"] != before["verdict"]["winner"]
    assert after["verdict"]["winner"] not in ("tie", "both_bad")
    # a bad verdict is refused with the form kept; nothing changes
    bad = ann.post(action, data={"csrf_token": csrf_of(page), "action": "save", "choice": "maybe"})
    assert bad.status_code == 422 and "choice must be one of" in bad.text
    assert my_judgments(app, ann, "ann") == [after]
    # only the last one, and only one's own
    assert bob.get("/p/p/last").status_code == 404
    for bobs_action in ("take_back", "save"):
        stolen = bob.post(action, data={"csrf_token": csrf_of(bob.get("/").text),
                                        "action": bobs_action, "choice": "tie"})
        assert stolen.status_code == 409, stolen.text
    judge(ann)
    stale = ann.post(action, data={"csrf_token": csrf_of(page), "action": "save",
                                   "choice": "tie"})
    assert stale.status_code == 409 and "only your last judgment" in stale.text


def test_take_back_frees_the_slot_for_someone_else(app):
    ann, bob, cara = TestClient(app), TestClient(app), TestClient(app)
    for client, name in ((ann, "ann"), (bob, "bob"), (cara, "cara")):
        login(client, name)
    first = judge(ann)
    assert judge(bob) == first  # item `first` is full (2 judgments)
    assert shown_item(start(cara).text) != first
    page = ann.get("/p/p/last").text
    action = re.search(r'action="(/p/p/last/\d+)"', page).group(1)
    taken = ann.post(action, data={"csrf_token": csrf_of(page), "action": "take_back"},
                     follow_redirects=False)
    assert taken.headers["location"] == "/p/p/label?notice=taken_back"
    assert my_judgments(app, ann, "ann") == []
    assert ann.get("/p/p/last").status_code == 404
    # ann is not offered the item again; after cara's current item, cara gets it
    seen_by_ann = {judge(ann), judge(ann)}
    assert first not in seen_by_ann and 'id="queue-empty"' in ann.get("/p/p/label").text
    assert {judge(cara), judge(cara)} >= {first}


def test_quality_page_explains_its_numbers_and_warns_below_chance(app):
    ann, bob, root = TestClient(app), TestClient(app), TestClient(app)
    for client, name in ((ann, "ann"), (bob, "bob"), (root, "root")):
        login(client, name)
    for _ in range(3):  # on every item ann prefers model-alpha's answer and bob the other one
        for client, wants_alpha in ((ann, True), (bob, False)):
            page = start(client).text
            left_is_alpha = re.search(r'<h2>A <small class="side">left</small></h2>\s*'
                                      r'<div class="text markdown rendered"><p>&lt;script', page)
            choice = "left" if bool(left_is_alpha) == wants_alpha else "right"
            judge(client, choice)
    page = root.get("/admin/p/p/quality").text
    assert "Krippendorff&#39;s alpha: how much more all annotators agree than chance" in page
    assert "Cohen&#39;s kappa: the same chance-corrected agreement for one pair" in page
    # alpha = 1 - D_o / D_e = 1 - 1 / 0.6; kappa = 0: p_o = p_e = 0
    assert '<td class="alpha-nominal">-0.67 <small>below chance</small></td>' in page
    assert "0.00 <small>near chance</small>" in page
    warnings = re.findall(r'<p class="warning" role="alert">([^<]*)</p>', page)
    assert len(warnings) == 3
    assert "disagree more often than chance" in warnings[0]
    assert "only 3 items were judged by two or more" in warnings[1]
    assert "kappa of ann and bob (3 shared items) is 0.00: agreement is at about the level " \
           "of chance" in warnings[2]


def test_quality_view_readings_and_warnings():
    assert [reading(v) for v in (None, 0.9, 0.7, 0.5, 0.1, -0.3)] == [
        "undefined", "reliable", "tentative", "low", "near chance", "below chance"]

    def report(alpha, units=40, kappa=0.5):
        return {"judgments": 9, "items_judged": 3, "annotators": 2, "left_bias": 0.5,
                "median_seconds": 3.0, "per_annotator": [],
                "tasks": {"pairwise": {"units": units, "alpha_nominal": alpha,
                                       "alpha_ordinal": alpha, "raw_agreement": 0.5,
                                       "kappa": [{"a": "ann", "b": "bob", "shared": units,
                                                  "agreement": 0.5, "kappa": kappa}]}}}

    assert quality_view(report(0.85))["warnings"] == []
    (near,) = quality_view(report(0.1))["warnings"]
    assert "about the level of chance" in near and "0.10" in near
    below = quality_view(report(-0.4, kappa=-0.4))["warnings"]
    assert len(below) == 2 and all("more often than chance" in w for w in below)
    assert "Cohen's kappa of ann and bob (40 shared items)" in below[1]
    (few,) = quality_view(report(0.9, units=5))["warnings"]
    assert "only 5 items were judged by two or more" in few
    (none,) = quality_view(report(None, units=0, kappa=None))["warnings"]
    assert "no item has been judged by two annotators yet" in none


def test_admin_page_says_what_each_export_leaves_out(app):
    ann, root = TestClient(app), TestClient(app)
    login(ann, "ann"), login(root, "root")
    judge(ann, "left")
    judge(ann, "tie")
    page = root.get("/admin/p/p").text
    exports = dict(re.findall(r'format=([\w-]+)" download>[^<]*</a></td>\s*'
                              r'<td class="dropped">([^<]*)</td>', page))
    assert exports["preference"].startswith("1 preference rows; 2 items left out: ")
    assert "1 the majority said tie or both bad" in exports["preference"]
    assert "1 not judged yet" in exports["preference"]
    assert exports["raw"] == "2 raw rows; no judgments left out"


@pytest.mark.parametrize("task", ["ranking", "rating"])
def test_a_stored_ranking_or_rating_fills_the_edit_form_by_shown_position(label_db_url, task):
    from tether.feedback.app import revisions

    app = make_app(label_db_url)
    with app.state.sessions.begin() as db:
        project = projects.create_project(db, "r", task, required_judgments=1, gold_rate=0)
        projects.import_items(db, project, [{"id": "x", "prompt": "Q", "candidates": [
            {"id": c, "text": f"answer {c}"} for c in ("a", "b", "c")]}])
        ann = projects.get_user(db, "ann")
        assignment = queue.lease_next(db, project, ann)
        shown = {"ranks": [2, 1, 3]} if task == "ranking" else {"ratings": [5, 1, 7]}
        row = queue.submit(db, assignment, ann,
                           queue.verdict_from_positions(task, assignment.order, **shown))
        key = "rank" if task == "ranking" else "rating"
        values = next(iter(shown.values()))
        assert revisions.shown_values(row, assignment.order) == {
            f"{key}_{i}": value for i, value in enumerate(values)}
        if task == "ranking":
            revisions.edit(db, project, row, {"not_rankable": True}, "all wrong")
            assert revisions.shown_values(row, assignment.order) == {"not_rankable": True}
            assert row.reason == "all wrong"
        before = dict(row.verdict)
        with pytest.raises(Invalid, match=f"needs a {key} for every candidate"):
            revisions.edit(db, project, row, {f"{key}s": {"a": 1}}, None)
        assert row.verdict == before


# ---- the UX under the security rules (membership, POST-only leases, bad stored items) ----

def leases(app) -> list[tuple[str, str]]:
    """(item, status) of every assignment, by item."""
    from sqlalchemy import select

    from tether.feedback.app.models import Assignment, Item

    with app.state.sessions.begin() as db:
        return sorted(db.execute(select(Item.external_id, Assignment.status)
                                 .join(Item, Item.id == Assignment.item_id)).all())


def judged_without_a_next_lease(app, username: str) -> None:
    """One judgment by ``username`` in project p and no open lease after it (as when the queue
    had nothing more to give when they submitted)."""
    with app.state.sessions.begin() as db:
        user, project = projects.get_user(db, username), projects.get_project(db, "p")
        queue.submit(db, queue.lease_next(db, project, user), user, {"winner": "secret-id-a"})


def test_the_edit_page_and_take_back_lease_nothing_and_the_start_page_keeps_the_counter(app):
    judged_without_a_next_lease(app, "ann")
    ann = TestClient(app)
    login(ann, "ann")
    before = leases(app)
    start_page = ann.get("/p/p/label").text
    assert 'id="start"' in start_page and counter(start_page) == "2 of 3"
    assert 'id="edit-last"' in start_page  # u works from the start page too
    page = ann.get("/p/p/last").text
    assert 'id="take-back"' in page and leases(app) == before  # the GET took nothing
    action = re.search(r'action="(/p/p/last/\d+)"', page).group(1)
    taken = ann.post(action, data={"csrf_token": csrf_of(page), "action": "take_back"})
    # the item went back through the queue, skipped for ann, and nothing else was leased
    assert leases(app) == [("i0", "skipped")]
    assert 'id="start"' in taken.text and counter(taken.text) == "1 of 2"
    assert "taken back; the item goes to another annotator" in taken.text
    assert 'id="edit-last"' not in taken.text  # nothing left to change


def test_withdraw_gives_back_only_ones_own_submitted_item(app):
    from tether.feedback.app.errors import Conflict, NotFound

    with app.state.sessions.begin() as db:
        ann, bob = projects.get_user(db, "ann"), projects.get_user(db, "bob")
        project = projects.get_project(db, "p")
        leased = queue.lease_next(db, project, ann)
        with pytest.raises(Conflict, match="not submitted"):
            queue.withdraw(db, leased, ann)
        queue.submit(db, leased, ann, {"winner": "secret-id-a"})
        with pytest.raises(NotFound):
            queue.withdraw(db, leased, bob)
        queue.withdraw(db, leased, ann)
        assert leased.status == "skipped"
        assert queue.lease_next(db, project, ann).item_id != leased.item_id
        assert queue.lease_next(db, project, bob).item_id == leased.item_id  # its slot is open


def test_a_former_member_can_neither_open_nor_change_their_last_judgment(app):
    ann = TestClient(app)
    login(ann, "ann")
    judge(ann, "left")
    (before,) = my_judgments(app, ann, "ann")
    page = ann.get("/p/p/last").text
    action = re.search(r'action="(/p/p/last/\d+)"', page).group(1)
    with app.state.sessions.begin() as db:
        projects.set_members(db, projects.get_project(db, "p"), remove=["ann"])
    assert ann.get("/p/p/last").status_code == 404
    for what in ("save", "take_back"):
        response = ann.post(action, data={"csrf_token": csrf_of(page), "action": what,
                                          "choice": "right"})
        assert response.status_code == 404, what
    with app.state.sessions.begin() as db:
        (kept,) = projects.project_records(db, projects.get_project(db, "p"))[1]
    assert kept.verdict == before["verdict"] and kept.reason is None
    assert ("i0", "submitted") in leases(app)


def test_items_the_queue_passes_over_are_not_counted_nor_shown_on_the_edit_page(label_db_url):
    from tether.feedback.app.models import Item

    app = make_app(label_db_url)
    with app.state.sessions.begin() as db:  # as an older tether could have stored them
        project = projects.create_project(db, "r", "ranking", required_judgments=1,
                                          gold_rate=0)
        projects.set_members(db, project, add=["ann"])
        for external_id, k in (("wide", 27), ("a", 3), ("b", 3)):
            db.add(Item(project_id=project.id, external_id=external_id, prompt="Q",
                        item_metadata={}, candidates=[{"id": f"c{i}", "text": f"text {i}"}
                                                      for i in range(k)]))
    ann = TestClient(app)
    login(ann, "ann")
    page = start(ann, "r").text  # the queue passes over "wide" and marks it
    assert "text 26" not in page and counter(page) == "1 of 2"
    action = re.search(r'action="(/p/r/label/\d+)"', page).group(1)
    ann.post(action, data={"csrf_token": csrf_of(page), "rank_0": "1", "rank_1": "2",
                           "rank_2": "3"})
    with app.state.sessions.begin() as db:  # the judged item is widened by hand afterwards
        item = db.scalar(projects.select(Item).where(Item.external_id == "a"))
        item.candidates = [*item.candidates, *({"id": f"x{i}", "text": "x"} for i in range(24))]
    edit = ann.get("/p/r/last")
    assert edit.status_code == 409 and "can no longer be shown" in edit.text
