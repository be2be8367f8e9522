"""``tether label init|serve|create-user|deactivate-user|activate-user|create-project|members|
import|export|token|tokens|revoke-token|guidelines``

The human-feedback labeling app. Every subcommand takes ``--db`` (a SQLAlchemy URL such as
``postgresql+psycopg://user@host/db``, or a SQLite file path; default ``$TETHER_LABEL_DB`` or
``tether-label.db``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from tether.errors import ConfigError
from tether.feedback.export import EXPORT_FORMATS


def _engine(args: argparse.Namespace, *, init: bool = False):
    from sqlalchemy.exc import OperationalError

    from tether.feedback.app.db import is_initialized, make_engine, migrate

    engine = make_engine(args.db)
    try:
        if init:
            migrate(engine)
        elif not is_initialized(engine):
            raise ConfigError(f"database {engine.url.render_as_string(hide_password=True)} has no "
                              f"tether label schema; run `tether label init --db ...` first")
        else:
            migrate(engine)  # apply migrations shipped by a newer tether
    except OperationalError as error:  # server down, wrong password, unwritable file, ...
        raise ConfigError(f"cannot open the database "
                          f"{engine.url.render_as_string(hide_password=True)}: {error.orig}") from None
    return engine


def _session(args: argparse.Namespace):
    from tether.feedback.app.db import session_factory

    return session_factory(_engine(args)).begin()


def _init(args: argparse.Namespace) -> None:
    engine = _engine(args, init=True)
    print(f"database ready: {engine.url.render_as_string(hide_password=True)}")


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from tether.feedback.app import Settings, create_app

    _engine(args, init=True)
    app = create_app(Settings(db_url=args.db, secure_cookies=args.secure_cookies,
                              max_upload_mb=args.max_upload_mb))
    print(f"tether label: http://{args.host}:{args.port}/  (Ctrl+C to stop)")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def _read_password(args: argparse.Namespace) -> str | None:
    if args.role == "judge":
        return None  # API-only account
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get("TETHER_LABEL_PASSWORD"):
        return os.environ["TETHER_LABEL_PASSWORD"]
    if not sys.stdin.isatty():
        raise ConfigError("no password: pass --password-stdin, set TETHER_LABEL_PASSWORD, or "
                          "run in a terminal")
    first = getpass.getpass(f"password for {args.username}: ")
    if getpass.getpass("again: ") != first:
        raise ConfigError("the passwords differ")
    return first


def _create_user(args: argparse.Namespace) -> None:
    from tether.feedback.app import projects

    password = _read_password(args)
    with _session(args) as db:
        user = projects.create_user(db, args.username, args.role, password)
        print(f"created {user.role} {user.username}")
        if args.token:
            print(projects.create_token(db, user, "default"))


def _create_project(args: argparse.Namespace) -> None:
    from tether.feedback.app import projects

    guidelines = _read_text(args.guidelines) if args.guidelines else ""
    with _session(args) as db:
        project = projects.create_project(
            db, args.name, args.task, required_judgments=args.judgments,
            gold_rate=args.gold_rate, lease_seconds=args.lease_seconds,
            rating_scale=args.rating_scale, guidelines=guidelines)
        print(f"created {project.task} project {project.name} ({project.required_judgments} "
              f"judgments per item)")


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None


def _guidelines(args: argparse.Namespace) -> None:
    from tether.feedback.app import projects

    text = _read_text(args.file)
    with _session(args) as db:
        version = projects.set_guidelines(db, projects.get_project(db, args.project), text)
        print(f"{args.project}: guidelines version {version}")


def _import(args: argparse.Namespace) -> None:
    from tether.feedback.app import projects

    with _session(args) as db:
        project = projects.get_project(db, args.project)
        added, skipped = projects.import_items(db, project, args.file,
                                               skip_existing=args.skip_existing)
    print(f"{args.project}: imported {added} items" + (f", skipped {skipped}" if skipped else ""))


def _export(args: argparse.Namespace) -> None:
    from tether.feedback.app import projects

    with _session(args) as db:
        result = projects.export_project(db, projects.get_project(db, args.project), args.format,
                                         include_ai=not args.exclude_ai,
                                         include_gold=not args.exclude_gold)
    rows = result.rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    print(f"wrote {len(rows)} {args.format} rows to {out}")
    print(result.summary())


def _token(args: argparse.Namespace) -> None:
    from tether.feedback.app import projects

    with _session(args) as db:
        token = projects.create_token(db, projects.get_user(db, args.username), args.name,
                                      days=args.days)
    print(token)  # shown once; only its hash is stored


def _tokens(args: argparse.Namespace) -> None:
    from tether.feedback.app import projects

    with _session(args) as db:
        for token in projects.tokens_of(db, projects.get_user(db, args.username)):
            used = _when(token.last_used_at) if token.last_used_at else "never"
            print(f"{token.id}\t{token.name}\texpires {_when(token.expires_at)}\tlast used {used}")


def _when(moment) -> str:
    return moment.isoformat(timespec="seconds")


def _revoke_token(args: argparse.Namespace) -> None:
    from tether.feedback.app import projects

    if args.name is None and args.id is None and not args.all:
        raise ConfigError("say which tokens: --name NAME, --id ID (see `tether label tokens "
                          "USER`) or --all")
    with _session(args) as db:
        count = projects.revoke_tokens(db, projects.get_user(db, args.username), name=args.name,
                                       token_id=args.id)
    print(f"revoked {count} token(s) of {args.username}")
    if count == 0:
        raise ConfigError("no token matched")


def _set_active(active: bool):
    def handler(args: argparse.Namespace) -> None:
        from tether.feedback.app import projects

        with _session(args) as db:
            projects.set_active(db, projects.get_user(db, args.username), active)
        print(f"{args.username} is active" if active else
              f"{args.username} is deactivated: sessions ended, API tokens deleted, open leases "
              f"released")
    return handler


def _members(args: argparse.Namespace) -> None:
    from tether.feedback.app import projects

    with _session(args) as db:
        now = projects.set_members(db, projects.get_project(db, args.project),
                                   add=args.add, remove=args.remove)
        names = [f"{user.username} ({user.role})" for user in now]
    print(f"{args.project}: " + (", ".join(names) if names else "no members (admins only)"))


def register(commands) -> None:
    label = commands.add_parser("label", help="the human-feedback labeling web app",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = label.add_subparsers(dest="label_command", required=True)
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", default=os.environ.get("TETHER_LABEL_DB", ""),
                    help="SQLAlchemy URL or SQLite file (default: $TETHER_LABEL_DB or "
                         "tether-label.db)")

    sub.add_parser("init", parents=[db], help="create or upgrade the database schema"
                   ).set_defaults(handler=_init)

    serve = sub.add_parser("serve", parents=[db], help="run the web app")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--secure-cookies", action="store_true",
                       help="mark cookies Secure (when served over HTTPS)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--max-upload-mb", type=float, default=64.0,
                       help="largest request body, e.g. an import upload (larger: 413)")
    serve.set_defaults(handler=_serve)

    user = sub.add_parser("create-user", parents=[db], help="add an admin, annotator or judge")
    user.add_argument("username")
    user.add_argument("--role", choices=("admin", "annotator", "judge"), default="annotator")
    user.add_argument("--password-stdin", action="store_true",
                      help="read the password from the first line of stdin")
    user.add_argument("--token", action="store_true", help="also print a new API token")
    user.set_defaults(handler=_create_user)

    project = sub.add_parser("create-project", parents=[db], help="add a labeling project")
    project.add_argument("name")
    project.add_argument("--task", choices=("pairwise", "ranking", "rating"), default="pairwise")
    project.add_argument("--judgments", type=int, default=3, help="judgments per item (overlap)")
    project.add_argument("--gold-rate", type=float, default=0.1,
                         help="share of each annotator's queue drawn from gold items")
    project.add_argument("--lease-seconds", type=int, default=900,
                         help="an unfinished item returns to the queue after this long")
    project.add_argument("--rating-scale", type=int, default=7, help="ratings run 1..N")
    project.add_argument("--guidelines", help="Markdown file with the labeling guidelines")
    project.set_defaults(handler=_create_project)

    guidelines = sub.add_parser("guidelines", parents=[db],
                                help="publish a new guidelines version from a Markdown file")
    guidelines.add_argument("--project", required=True)
    guidelines.add_argument("file")
    guidelines.set_defaults(handler=_guidelines)

    imports = sub.add_parser("import", parents=[db],
                             help="import FeedbackItem JSONL (tether generate output)")
    imports.add_argument("--project", required=True)
    imports.add_argument("file")
    imports.add_argument("--skip-existing", action="store_true",
                         help="ignore items whose id is already in the project")
    imports.set_defaults(handler=_import)

    export = sub.add_parser("export", parents=[db], help="write judgments as training data")
    export.add_argument("--project", required=True)
    export.add_argument("--format", choices=EXPORT_FORMATS, default="preference",
                        help="preference: TRL prompt/chosen/rejected strings; preference-chat: "
                             "as message lists; ranking: every majority pair with group_id; "
                             "raw: one Judgment per line")
    export.add_argument("--out", required=True)
    export.add_argument("--exclude-ai", action="store_true", help="drop source=ai judgments")
    export.add_argument("--exclude-gold", action="store_true", help="drop gold items")
    export.set_defaults(handler=_export)

    token = sub.add_parser("token", parents=[db], help="print a new API token for a user")
    token.add_argument("username")
    token.add_argument("--name", default="cli", help="a label to tell tokens apart")
    token.add_argument("--days", type=float, default=90.0, help="the token expires after this")
    token.set_defaults(handler=_token)

    tokens = sub.add_parser("tokens", parents=[db], help="list a user's API tokens")
    tokens.add_argument("username")
    tokens.set_defaults(handler=_tokens)

    revoke = sub.add_parser("revoke-token", parents=[db], help="delete a user's API tokens")
    revoke.add_argument("username")
    which = revoke.add_mutually_exclusive_group()
    which.add_argument("--name", help="the tokens with this label")
    which.add_argument("--id", type=int, help="the token with this id (`tether label tokens`)")
    which.add_argument("--all", action="store_true", help="every token of the user")
    revoke.set_defaults(handler=_revoke_token)

    for name, active, text in (
            ("deactivate-user", False, "block a user: ends their sessions, deletes their API "
                                       "tokens, releases their open leases"),
            ("activate-user", True, "let a deactivated user log in again")):
        parser = sub.add_parser(name, parents=[db], help=text)
        parser.add_argument("username")
        parser.set_defaults(handler=_set_active(active))

    members = sub.add_parser("members", parents=[db],
                             help="list, add or remove a project's members (annotators and "
                                  "judges see only their projects)")
    members.add_argument("--project", required=True)
    members.add_argument("--add", nargs="+", default=[], metavar="USER")
    members.add_argument("--remove", nargs="+", default=[], metavar="USER")
    members.set_defaults(handler=_members)
