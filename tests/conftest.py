import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see tether/cli.py

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models gain nothing from threads, and results stay repeatable


@pytest.fixture(autouse=True, scope="session")
def matmul_peaks_file(tmp_path_factory):
    """Training runs in tests measure the matmul peak for their MFU line: keep it out of the user's
    cache, where a peak measured while the suite loads the cores would make real runs' MFU read high."""
    import tether.engine.flops as flops

    cache = tmp_path_factory.mktemp("peaks") / "matmul_peaks.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flops, "peak_cache_path", lambda: cache)
        yield cache


@pytest.fixture
def tiny():
    from tether.models.tiny import tiny_llama

    return tiny_llama(seed=0)


@pytest.fixture(params=["sqlite", "postgresql"])
def label_db_url(request, tmp_path):
    """A fresh, empty database for the labeling app: a SQLite file, or a new PostgreSQL database
    (created on the server ``TETHER_TEST_POSTGRES_URL`` points at, dropped after the test)."""
    if request.param == "sqlite":
        yield str(tmp_path / "label.db")
        return
    base = os.environ.get("TETHER_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("TETHER_TEST_POSTGRES_URL is not set (e.g. postgresql+psycopg://tether:"
                    "tether@127.0.0.1/tether_test; `make postgres` sets one up)")
    import time
    import uuid

    from sqlalchemy import create_engine, make_url

    name = f"tether_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")  # CREATE DATABASE needs it
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        from sqlalchemy.exc import DBAPIError

        for attempt in range(5):  # FORCE: the test's pool may still hold connections; a
            try:  # backend of another role (autovacuum) cannot be ended, but soon leaves
                with admin.connect() as connection:
                    connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except DBAPIError:
                if attempt == 4:
                    raise
                time.sleep(0.5)
        admin.dispose()


@pytest.fixture(autouse=True)
def _precision_must_be_chosen(monkeypatch):
    """No test may inherit ``train.bf16: auto``: it means bf16 on machines with AMX or a GPU and
    float32 elsewhere, so the same test would check different numerics on different machines.
    A test chooses ``train.bf16=false`` or ``true`` (or parametrizes both)."""

    def refuse():
        raise AssertionError("this test inherits train.bf16: auto; choose train.bf16=false or true in the test")

    monkeypatch.setattr("tether.hardware.bf16_is_fast", refuse)
