"""Fixtures: a fresh PostgreSQL database per test, a unique NATS prefix per
test, the outbox-relay binary as a process, and a private nats-server for
tests that stop NATS (the shared server is never stopped)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
import nats  # noqa: E402

from bedolaga_events import names  # noqa: E402
from bedolaga_events.outbox import migration_sql  # noqa: E402

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
PG_SERVER = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parents[3]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_db(server: str, db: str) -> str:
    base, _, _ = server.rpartition("/")
    return f"{base}/{db}"


@pytest.fixture
def database() -> Iterator[str]:
    """A new database with the outbox migration applied; its URL."""
    name = f"test_{uuid.uuid4().hex}"

    async def create() -> None:
        admin = await asyncpg.connect(PG_SERVER)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(_with_db(PG_SERVER, name))
        try:
            await conn.execute(migration_sql())
        finally:
            await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(PG_SERVER)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    run(create())
    yield _with_db(PG_SERVER, name)
    run(drop())


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A new database with nothing in it (e.g. for the Rust services, which
    migrate their own schema); its URL."""
    name = f"test_{uuid.uuid4().hex}"

    async def create() -> None:
        admin = await asyncpg.connect(PG_SERVER)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    async def drop() -> None:
        admin = await asyncpg.connect(PG_SERVER)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    run(create())
    yield _with_db(PG_SERVER, name)
    run(drop())


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgres://", "postgresql+asyncpg://", 1)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A NATS prefix of its own (streams EVENTS_t<hex>, which
    deploy/lib.sh prunes when a run leaves them behind)."""
    p = f"t{uuid.uuid4().hex}"
    yield p

    async def cleanup() -> None:
        try:
            nc = await nats.connect(NATS_URL)
        except Exception:
            return
        try:
            js = nc.jetstream()
            for stream in (names(p)[1], f"DEADLETTER_{p}"):
                try:
                    await js.delete_stream(stream)
                except Exception:
                    pass
        finally:
            await nc.close()

    run(cleanup())


def relay_bin() -> Optional[str]:
    env = os.environ.get("OUTBOX_RELAY_BIN")
    if env:
        return env
    return service_bin("outbox-relay")


def service_bin(name: str) -> Optional[str]:
    """A binary of this workspace: in BEDOLAGA_BIN_DIR when set, else in
    $CARGO_TARGET_DIR (or target/) debug, then release."""
    dirs = []
    if os.environ.get("BEDOLAGA_BIN_DIR"):
        dirs.append(Path(os.environ["BEDOLAGA_BIN_DIR"]))
    target = Path(os.environ.get("CARGO_TARGET_DIR", str(REPO / "target")))
    dirs += [target / "debug", target / "release"]
    for d in dirs:
        p = d / name
        if p.exists():
            return str(p)
    return None


class RelayProcess:
    """The outbox-relay binary, started with its ops port known."""

    def __init__(self, database_url: str, nats_url: str, prefix: str, **env: str) -> None:
        binary = relay_bin()
        if binary is None:
            if os.environ.get("BEDOLAGA_REQUIRE_RELAY"):
                pytest.fail("outbox-relay binary not found (set OUTBOX_RELAY_BIN)")
            pytest.skip("outbox-relay not built: cargo build -p outbox-relay, or set OUTBOX_RELAY_BIN")
        self.port = free_port()
        full_env = dict(os.environ)
        full_env.update(
            OUTBOX_DATABASE_URL=database_url,
            NATS_URL=nats_url,
            NATS_PREFIX=prefix,
            RELAY_BIND=f"127.0.0.1:{self.port}",
            RELAY_STATS_INTERVAL="200ms",
            RUST_LOG=os.environ.get("RELAY_LOG", "warn"),
        )
        full_env.update(env)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([binary], env=full_env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"outbox-relay exited: {self.output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"outbox-relay did not answer /healthz: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def metrics(self) -> Dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            text = r.read().decode()
        out: Dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and " " in line:
                k, v = line.rsplit(" ", 1)
                try:
                    out[k] = float(v)
                except ValueError:
                    pass
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)


@pytest.fixture
def relays() -> Iterator[List[RelayProcess]]:
    """Relays a test starts land here and are stopped after it."""
    started: List[RelayProcess] = []
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.kill()


class PrivateNats:
    """A nats-server with JetStream on a free port and its own store; the
    tests may stop and restart it."""

    def __init__(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(binary).exists():
            pytest.skip("nats-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.store = tempfile.mkdtemp(prefix="bedolaga-nats-")
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4096).startswith(b"INFO"):
                        time.sleep(0.2)  # JetStream comes up just after the listener
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.store, ignore_errors=True)


@pytest.fixture
def private_nats() -> Iterator[PrivateNats]:
    n = PrivateNats()
    yield n
    n.close()


async def stream_messages(nats_url: str, prefix: str) -> List[Dict[str, Any]]:
    """Every message of the prefix's events stream: subject, Nats-Msg-Id, raw
    data and the parsed envelope."""
    import json

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stream = names(prefix)[1]
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            m = await js.get_msg(stream, seq)
            out.append(
                {
                    "seq": m.seq,
                    "subject": m.subject,
                    "msg_id": (m.headers or {}).get("Nats-Msg-Id"),
                    "data": m.data,
                    "envelope": json.loads(m.data),
                }
            )
        return out
    finally:
        await nc.close()


async def stream_len(nats_url: str, prefix: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        try:
            return int((await nc.jetstream().stream_info(names(prefix)[1])).state.messages)
        except nats.js.errors.NotFoundError:
            return 0
    finally:
        await nc.close()


async def wait_stream_len(nats_url: str, prefix: str, want: int, within: float = 15.0) -> int:
    deadline = time.monotonic() + within
    n = 0
    while time.monotonic() < deadline:
        n = await stream_len(nats_url, prefix)
        if n >= want:
            return n
        await asyncio.sleep(0.05)
    return n


async def outbox_len(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM event_outbox"))
    finally:
        await conn.close()
