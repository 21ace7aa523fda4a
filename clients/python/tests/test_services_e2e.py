"""End to end through this project's services: the bot-like CRUD functions
emit with ``db=``, outbox-relay publishes, and the real webhook-registry,
delivery-worker and gateway binaries deliver. Every committed event reaches
the webhook receiver and the gateway WebSocket exactly once; rolled-back
ones never do.

Skipped when the binaries are not built (``cargo build --bins``); with
BEDOLAGA_REQUIRE_RELAY set (deploy/test.sh) a missing binary fails."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

import pytest

from botlike import bot_sessions, create_oauth_user, create_transaction, create_user, install_bot_tables
from conftest import NATS_URL, RelayProcess, free_port, run, service_bin, sqlalchemy_url, stream_messages

SERVICES = ("webhook-registry", "delivery-worker", "gateway")


def binaries() -> Dict[str, str]:
    found = {name: service_bin(name) for name in SERVICES}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        if os.environ.get("BEDOLAGA_REQUIRE_RELAY"):
            pytest.fail(f"not built: {', '.join(missing)} (cargo build --workspace --bins)")
        pytest.skip(f"not built: {', '.join(missing)} (cargo build --workspace --bins)")
    return {n: str(p) for n, p in found.items()}


class Service:
    """One of the services as a process on a free port of 127.0.0.1."""

    def __init__(self, binary: str, bind_var: str, env: Dict[str, str]) -> None:
        self.name = os.path.basename(binary)
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        full_env = {"PATH": os.environ.get("PATH", ""), **env, bind_var: f"127.0.0.1:{self.port}"}
        self.proc = subprocess.Popen([binary], env=full_env, stdout=self.log, stderr=self.log)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-4000:]

    def wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.output()}")
            try:
                with urllib.request.urlopen(self.url("/readyz"), timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {within}s: {self.output()}")

    def metric(self, name: str) -> Optional[float]:
        with urllib.request.urlopen(self.url("/metrics"), timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers 200."""

    def __init__(self) -> None:
        self.requests: List[Tuple[str, Dict[str, str], bytes]] = []
        lock = threading.Lock()
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def services(empty_database: str, prefix: str):
    """Registry, worker and gateway on their own database and the test's
    NATS prefix, a token, and a `*` webhook to a local receiver."""
    bins = binaries()
    # Webhook secrets are stored sealed: the registry and the worker share a
    # key file of this test's own.
    key_file = os.path.join(tempfile.mkdtemp(prefix="bedolaga-keys-"), "secrets.key")
    with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write("test " + base64.b64encode(os.urandom(32)).decode() + "\n")
    common = {
        "SECRETS_KEY_FILE": key_file,
        "DATABASE_URL": empty_database,
        "NATS_URL": NATS_URL,
        "NATS_PREFIX": prefix,
        "DELIVERY_ALLOW_PRIVATE_TARGETS": "true",
        "RUST_LOG": os.environ.get("SERVICES_LOG", "warn"),
    }
    started: List[Service] = []
    receiver = Receiver()
    try:
        registry = Service(bins["webhook-registry"], "REGISTRY_BIND", {**common, "REGISTRY_WORKERS": "1"})
        started.append(registry)
        registry.wait_ready()
        out = subprocess.run(
            [bins["webhook-registry"], "token", "create", "--name", "python-e2e"],
            env={"PATH": os.environ.get("PATH", ""), "DATABASE_URL": empty_database, "RUST_LOG": "warn"},
            capture_output=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr.decode("utf-8", "replace")
        token = out.stdout.decode().strip()
        request = urllib.request.Request(
            registry.url("/webhooks"),
            data=json.dumps(
                {
                    "name": "all",
                    "url": f"http://127.0.0.1:{receiver.port}/all",
                    "event_type": "*",
                    "secret": "s3cret",
                }
            ).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 201
            hook_id = json.loads(r.read())["id"]
        worker = Service(
            bins["delivery-worker"],
            "WORKER_BIND",
            {
                **common,
                "DELIVERY_RETRY_SCHEDULE": "1s,1s,1s",
                "DELIVERY_RETRY_POLL": "200ms",
                # Webhooks imported from the bot (no change notice) are seen soon.
                "DELIVERY_CACHE_REFRESH": "500ms",
            },
        )
        started.append(worker)
        worker.wait_ready()
        deadline = time.monotonic() + 30
        while worker.metric("delivery_webhooks_cached") != 1.0:
            assert time.monotonic() < deadline, "the worker did not load the webhook"
            time.sleep(0.1)
        gateway = Service(bins["gateway"], "GATEWAY_BIND", {**common, "GATEWAY_WORKERS": "1"})
        started.append(gateway)
        gateway.wait_ready()
        yield {
            "token": token,
            "hook_id": hook_id,
            "receiver": receiver,
            "ws_url": f"ws://127.0.0.1:{gateway.port}/ws",
            "services": started,
            "registry_bin": bins["webhook-registry"],
            "key_file": key_file,
            "database": empty_database,
            "worker": worker,
        }
    finally:
        for s in reversed(started):
            s.stop()
        receiver.close()


# The bot's own webhook tables (its migration 0001, as ../shared/BOT.md
# describes them), for `import-bot`.
BOT_WEBHOOK_DDL = """
CREATE TABLE web_api_tokens (
    id serial PRIMARY KEY, name varchar(255) NOT NULL, token_hash varchar(128) NOT NULL UNIQUE,
    token_prefix varchar(32) NOT NULL, description text, created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(), expires_at timestamptz, last_used_at timestamptz,
    last_used_ip varchar(64), is_active boolean NOT NULL DEFAULT true, created_by varchar(255));
CREATE TABLE webhooks (
    id serial PRIMARY KEY, name varchar(255) NOT NULL, url text NOT NULL, secret varchar(128),
    event_type varchar(50) NOT NULL, is_active boolean NOT NULL, description text,
    created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now(),
    last_triggered_at timestamptz, failure_count integer NOT NULL, success_count integer NOT NULL);
CREATE TABLE webhook_deliveries (
    id serial PRIMARY KEY, webhook_id integer NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    event_type varchar(50) NOT NULL, payload json NOT NULL, response_status integer,
    response_body text, status varchar(20) NOT NULL, error_message text,
    attempt_number integer NOT NULL, created_at timestamptz DEFAULT now(),
    delivered_at timestamptz, next_retry_at timestamptz);
"""

BOT_SECRET = "секрет-бота"


def import_bot_webhook(bot_db: str, services: Dict[str, Any]) -> int:
    """A webhook of the bot's own (payment.completed, with a secret) brought
    over by `webhook-registry import-bot`, as an operator moving over does;
    returns its id once the worker has loaded it."""
    import asyncpg

    receiver: Receiver = services["receiver"]

    async def create() -> None:
        conn = await asyncpg.connect(bot_db)
        try:
            await conn.execute(BOT_WEBHOOK_DDL)
            await conn.execute(
                "INSERT INTO webhooks (id, name, url, secret, event_type, is_active, failure_count, success_count) "
                "VALUES (50, 'CRM', $1, $2, 'payment.completed', true, 3, 40)",
                f"http://127.0.0.1:{receiver.port}/bot",
                BOT_SECRET,
            )
        finally:
            await conn.close()

    run(create())
    out = subprocess.run(
        [services["registry_bin"], "import-bot", "--from", bot_db],
        env={
            "PATH": os.environ.get("PATH", ""),
            "SECRETS_KEY_FILE": services["key_file"],
            "DATABASE_URL": services["database"],
            "RUST_LOG": "warn",
        },
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode("utf-8", "replace")
    deadline = time.monotonic() + 30
    while services["worker"].metric("delivery_webhooks_cached") != 2.0:
        assert time.monotonic() < deadline, "the worker did not load the imported webhook"
        time.sleep(0.1)
    return 50


def test_committed_bot_events_reach_webhooks_and_the_gateway_once(
    database: str, prefix: str, relays, services: Dict[str, Any]
) -> None:
    import hashlib
    import hmac

    import websockets

    bot_db = database
    run(install_bot_tables(bot_db))
    bot_hook = import_bot_webhook(bot_db, services)
    relays.append(RelayProcess(bot_db, NATS_URL, prefix))

    async def go() -> None:
        ws_events: List[Dict[str, Any]] = []
        url = f"{services['ws_url']}?token={services['token']}"
        async with websockets.connect(url, open_timeout=10) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert welcome == {
                "type": "connection",
                "status": "connected",
                "message": "WebSocket connection established",
            }

            async def read() -> None:
                async for frame in ws:
                    msg = json.loads(frame)
                    if msg.get("type") in ("user.created", "payment.completed", "transaction.created"):
                        ws_events.append(msg)

            reader = asyncio.create_task(read())
            engine, Session = bot_sessions(sqlalchemy_url(bot_db))
            # Emitted after the bot's commit; the caller rolls back, closes,
            # commits again.
            async with Session() as db:
                u1 = (await create_user(db, 7001, "Иван")).id  # rollback expires the object
                await db.rollback()
            db = Session()
            await create_transaction(db, u1, "deposit", 15050)
            await db.close()
            async with Session() as db:
                await create_transaction(db, u1, "subscription_payment", -9900, description="Подписка")
                await db.commit()
            # Emitted inside a transaction that wrote: rolled back, then committed.
            async with Session() as db:
                await create_oauth_user(db, "never@example.com")
                await db.rollback()
            async with Session() as db:
                await create_oauth_user(db, "kept@example.com")
                await db.commit()
            await engine.dispose()

            receiver: Receiver = services["receiver"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (len(receiver.requests) < 5 or len(ws_events) < 4):
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)  # a duplicate or a rolled-back event would arrive meanwhile
            reader.cancel()

        stored = await stream_messages(NATS_URL, prefix)
        ids = [m["msg_id"] for m in stored]
        assert len(ids) == 4 and len(set(ids)) == 4
        assert "never@example.com" not in json.dumps([m["envelope"] for m in stored])

        # The gateway: each event once, the payload as the bot wrote it
        # (key order included).
        assert sorted(e["id"] for e in ws_events) == sorted(ids)
        by_id = {m["msg_id"]: m["envelope"] for m in stored}
        for e in ws_events:
            assert list(e)[:3] == ["type", "payload", "timestamp"]
            assert list(e["payload"]) == list(by_id[e["id"]]["payload"])
            assert e["payload"] == by_id[e["id"]]["payload"]
        user_event = next(e for e in ws_events if e["payload"].get("telegram_id") == 7001)
        assert list(user_event["payload"])[:3] == ["user_id", "telegram_id", "username"]

        # The webhook: each event once (webhook-id is msg_<event id>_<hook id>).
        hook = services["hook_id"]
        posted = [(h["webhook-id"], h["x-webhook-event"], json.loads(b)) for p, h, b in receiver.requests if p == "/all"]
        assert sorted(w for w, _, _ in posted) == sorted(f"msg_{i}_{hook}" for i in ids)
        for webhook_id, event_type, body in posted:
            env = by_id[webhook_id[len("msg_") : -len(f"_{hook}")]]
            assert event_type == env["type"]
            assert body == env["payload"]
        assert "never@example.com" not in json.dumps([b for _, _, b in posted])

        # The webhook imported from the bot (body_format "bot"): its one
        # payment.completed carries exactly the bot's bytes (the payload's
        # order, Cyrillic unescaped), and a receiver verifying the bot's way
        # (re-serialise with ensure_ascii=False, HMAC that) accepts it.
        to_bot = [(h, b) for p, h, b in receiver.requests if p == "/bot"]
        payments = [m["envelope"] for m in stored if m["envelope"]["type"] == "payment.completed"]
        assert len(to_bot) == 1 and len(payments) == 1, to_bot
        headers, body = to_bot[0]
        assert headers["webhook-id"].endswith(f"_{bot_hook}")
        assert body == json.dumps(payments[0]["payload"], default=str, ensure_ascii=False).encode()
        again = json.dumps(json.loads(body), ensure_ascii=False).encode()
        expected = hmac.new(BOT_SECRET.encode(), again, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(expected, headers["x-webhook-signature"].replace("sha256=", ""))

    run(go())
