"""Benchmark of ``EventEmitter.emit`` as the bot calls it.

One command (from the repository root, with the Python client's test
virtualenv of deploy/lib.sh, the machine's PostgreSQL and NATS, and a built
``outbox-relay``)::

    python clients/python/bench/emit_bench.py \\
        --database-url postgres://postgres@127.0.0.1:5432/postgres \\
        --nats-url nats://127.0.0.1:4222
    # defaults: --calls 2000 --rate 500 --duration 20 --concurrency 16 --processes 1
    # outbox-relay: --relay-bin, else $OUTBOX_RELAY_BIN, else
    # $CARGO_TARGET_DIR (or target/) release, then debug

It creates a temporary database (the outbox migration and a ``users``
table) and a unique NATS prefix, and removes both at the end.

1. *emit overhead* (no relay running), ``--calls`` timed calls per path
   after 100 warm-up calls; only the ``emit`` call is timed:
   - ``join``: the session has flushed an INSERT (its transaction has an
     xid); emit checks that and inserts into the caller's transaction
     (rolled back afterwards);
   - ``join, insert only``: ``write_outbox`` in the same situation (what
     ``emit(db=)`` did before: one INSERT, no check), for comparison;
   - ``own``: the bot's pattern, ``commit()`` + ``refresh()`` then emit:
     the row is committed in a transaction of its own on a second pooled
     connection;
   - ``direct``: no ``db``, published to JetStream, waiting for the ack.
2. *commit → NATS* at ``--rate`` events/s for ``--duration`` seconds,
   through the real ``outbox-relay`` (idle and listening): bot-like
   operations (add a user, ``commit()``, ``refresh()``, ``emit(db=db)``) are
   started on a fixed schedule, at most ``--concurrency`` at a time (the
   achieved rate is printed, with a warning when it falls short). Each
   latency runs from just before the caller's COMMIT is sent to the event's
   arrival at a core NATS subscriber (its own connection and thread). The
   *window* is the time from the caller's COMMIT returning to the outbox
   row's commit (``emit`` returning): a crash inside it loses the event.

Bounded: phase 2 stops scheduling after ``--duration`` and waits at most
10 s for the last events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

import asyncpg  # noqa: E402
import nats  # noqa: E402
from sqlalchemy import BigInteger, Integer, String, text  # noqa: E402
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column  # noqa: E402

from bedolaga_events import EventEmitter, names  # noqa: E402
from bedolaga_events.outbox import migration_sql, write_outbox  # noqa: E402

REPO = HERE.parents[3]
DDL = """
CREATE TABLE users (
    id          SERIAL PRIMARY KEY,
    telegram_id BIGINT,
    first_name  VARCHAR(255),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    telegram_id: Mapped[int] = mapped_column(BigInteger)
    first_name: Mapped[str] = mapped_column(String(255))


def payload(user: User, seq: int) -> Dict[str, object]:
    return {
        "user_id": user.id,
        "telegram_id": user.telegram_id,
        "username": None,
        "first_name": user.first_name,
        "last_name": "Петров 👨‍💻",
        "referral_code": f"ref{seq}",
        "referred_by_id": None,
        "bench_seq": seq,
    }


def pct(values: List[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def ms(v: float) -> str:
    return f"{v * 1000:.2f}"


def summary(name: str, values: List[float], ps=(50, 99)) -> str:
    parts = [f"p{p:g} {ms(pct(values, p))} ms" for p in ps]
    return f"{name}: n={len(values)} " + ", ".join(parts) + f", max {ms(max(values))} ms"


def relay_binary(arg: Optional[str]) -> str:
    if arg:
        return arg
    if os.environ.get("OUTBOX_RELAY_BIN"):
        return os.environ["OUTBOX_RELAY_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", str(REPO / "target")))
    for profile in ("release", "debug"):
        p = target / profile / "outbox-relay"
        if p.exists():
            return str(p)
    sys.exit("outbox-relay not found: cargo build --release -p outbox-relay, or --relay-bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Arrivals(threading.Thread):
    """A core NATS subscriber on its own connection and event loop: records
    perf_counter() at each event's arrival, by the payload's bench_seq."""

    def __init__(self, nats_url: str, subject: str) -> None:
        super().__init__(daemon=True)
        self.nats_url, self.subject = nats_url, subject
        self.at: Dict[int, float] = {}
        self.duplicates = 0
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._stopping: Optional[asyncio.Event] = None

    def run(self) -> None:
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        nc = await nats.connect(self.nats_url)

        async def on_msg(msg) -> None:
            now = time.perf_counter()
            seq = json.loads(msg.data)["payload"]["bench_seq"]
            if seq in self.at:
                self.duplicates += 1
            else:
                self.at[seq] = now

        await nc.subscribe(self.subject, cb=on_msg)
        await nc.flush()
        self.ready.set()
        await self._stopping.wait()
        await nc.close()

    def stop(self) -> None:
        if self._stopping is not None:
            self.loop.call_soon_threadsafe(self._stopping.set)
        self.join(10)


async def overhead(Session, emitter: EventEmitter, calls: int) -> Dict[str, List[float]]:
    results: Dict[str, List[float]] = {"join": [], "join, insert only": [], "own": [], "direct": []}
    seq = 0
    for path in results:
        for i in range(100 + calls):
            seq += 1
            if path == "direct":
                t0 = time.perf_counter()
                await emitter.emit("user.created", {"user_id": seq, "bench_seq": seq})
                dt = time.perf_counter() - t0
            else:
                async with Session() as db:
                    user = User(telegram_id=seq, first_name="Иван")
                    db.add(user)
                    if path == "own":
                        await db.commit()
                        await db.refresh(user)
                    else:
                        await db.flush()
                    t0 = time.perf_counter()
                    if path == "join, insert only":
                        await write_outbox(db, "user.created", payload(user, seq))
                    else:
                        await emitter.emit("user.created", payload(user, seq), db=db)
                    dt = time.perf_counter() - t0
                    if path != "own":
                        await db.rollback()
            if i >= 100:
                results[path].append(dt)
    return results


async def produce(
    Session, emitter: EventEmitter, rate: float, duration: float, concurrency: int, index: int = 0, step: int = 1
) -> Dict[str, object]:
    """Runs bot-like operations on a fixed schedule; event numbers are
    ``index + step * k`` so that several processes never share one.
    Times are ``time.perf_counter()`` (CLOCK_MONOTONIC: comparable across
    processes of this machine)."""
    total = int(rate * duration)
    before_commit: Dict[int, float] = {}
    commit_time: List[float] = []
    window: List[float] = []
    emitted_at: Dict[int, float] = {}
    errors: List[str] = []
    slots = asyncio.Semaphore(concurrency)
    late = 0

    async def op(seq: int) -> None:
        async with slots:
            try:
                async with Session() as db:
                    user = User(telegram_id=seq, first_name="Иван")
                    db.add(user)
                    t0 = time.perf_counter()
                    before_commit[seq] = t0
                    await db.commit()
                    t1 = time.perf_counter()
                    await db.refresh(user)
                    await emitter.emit("user.created", payload(user, seq), db=db)
                    t2 = time.perf_counter()
                    commit_time.append(t1 - t0)
                    window.append(t2 - t1)
                    emitted_at[seq] = t2
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(repr(e))

    tasks = []
    start = time.perf_counter()
    for k in range(total):
        due = start + k / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -0.005:
            late += 1
        tasks.append(asyncio.create_task(op(index + step * k)))
    await asyncio.gather(*tasks)
    return {
        "total": total,
        "before_commit": before_commit,
        "emitted_at": emitted_at,
        "commit": commit_time,
        "window": window,
        "errors": errors,
        "late_starts": late,
        "elapsed": time.perf_counter() - start,
    }


def produce_in_process(db_url: str, nats_url: str, prefix: str, rate: float, duration: float,
                       concurrency: int, index: int, step: int) -> Dict[str, object]:
    """One publishing process of ``--processes``: its own engine (the
    bot's pool size per process) and emitter."""

    async def run() -> Dict[str, object]:
        engine = create_async_engine(
            db_url.replace("postgres://", "postgresql+asyncpg://", 1),
            pool_size=2 * concurrency,
            max_overflow=concurrency,
        )
        emitter = EventEmitter(raise_errors=True)
        try:
            await emitter.connect(nats_url, prefix)
            Session = async_sessionmaker(engine, expire_on_commit=False)
            return await produce(Session, emitter, rate, duration, concurrency, index, step)
        finally:
            await emitter.close()
            await engine.dispose()

    return asyncio.run(run())


async def latency(args, db_url: str, prefix: str, arrivals: Arrivals) -> Dict[str, object]:
    """Phase 2 in ``--processes`` processes at ``rate / processes`` each."""
    n = args.processes
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = await asyncio.gather(*(
            loop.run_in_executor(pool, produce_in_process, db_url, args.nats_url, prefix,
                                 args.rate / n, args.duration, args.concurrency, i, n)
            for i in range(n)
        ))
    before_commit: Dict[int, float] = {}
    emitted_at: Dict[int, float] = {}
    for part in parts:
        before_commit.update(part["before_commit"])
        emitted_at.update(part["emitted_at"])
    deadline = time.perf_counter() + 10
    while len(arrivals.at) < len(emitted_at) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    return {
        "total": sum(p["total"] for p in parts),
        "emitted": len(emitted_at),
        "arrived": len(arrivals.at),
        "duplicates": arrivals.duplicates,
        "errors": [e for p in parts for e in p["errors"]],
        "late_starts": sum(p["late_starts"] for p in parts),
        "elapsed": max(p["elapsed"] for p in parts),
        "latency": [arrivals.at[s] - t for s, t in before_commit.items() if s in arrivals.at],
        "after_emit": [arrivals.at[s] - t for s, t in emitted_at.items() if s in arrivals.at],
        "commit": [c for p in parts for c in p["commit"]],
        "window": [w for p in parts for w in p["window"]],
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    ap.add_argument("--relay-bin")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--duration", type=float, default=20.0)
    # One bot-like operation (commit, refresh, emit's second transaction)
    # takes ~15 ms here, so 500/s needs at least 8 at a time; with 4 a run
    # reached 266 events/s.
    ap.add_argument("--concurrency", type=int, default=16)
    # A bot-like operation costs the Python process about 2-3 ms of CPU
    # (SQLAlchemy ORM, asyncpg), so one process tops out near 300/s here;
    # the bot runs several workers too.
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()

    relay_bin = relay_binary(args.relay_bin)
    db_name = f"emit_bench_{uuid.uuid4().hex[:12]}"
    prefix = f"bench{uuid.uuid4().hex[:12]}"
    base = args.database_url.rpartition("/")[0]
    db_url = f"{base}/{db_name}"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{db_name}"')
    await admin.close()
    relay = None
    arrivals = None
    engine = None
    emitter = EventEmitter(raise_errors=True)
    try:
        conn = await asyncpg.connect(db_url)
        await conn.execute(migration_sql())
        await conn.execute(DDL)
        await conn.close()
        # Pool: the bench's sessions plus the after-commit path's second connection.
        engine = create_async_engine(
            db_url.replace("postgres://", "postgresql+asyncpg://", 1),
            pool_size=2 * args.concurrency,
            max_overflow=args.concurrency,
        )
        Session = async_sessionmaker(engine, expire_on_commit=False)
        await emitter.connect(args.nats_url, prefix)

        print(f"emit overhead, {args.calls} calls per path (no relay running):")
        for name, values in (await overhead(Session, emitter, args.calls)).items():
            print("  " + summary(name, values))
        async with engine.begin() as c:
            await c.execute(text("TRUNCATE event_outbox"))

        port = free_port()
        log = tempfile.TemporaryFile()
        env = dict(
            os.environ,
            OUTBOX_DATABASE_URL=db_url,
            NATS_URL=args.nats_url,
            NATS_PREFIX=prefix,
            RELAY_BIND=f"127.0.0.1:{port}",
            RUST_LOG="warn",
        )
        relay = subprocess.Popen([relay_bin], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if relay.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                sys.exit(f"outbox-relay did not start: {log.read().decode(errors='replace')}")
            await asyncio.sleep(0.05)
        arrivals = Arrivals(args.nats_url, f"{names(prefix)[0]}.>")
        arrivals.start()
        arrivals.ready.wait(10)
        await asyncio.sleep(0.5)

        print(
            f"\ncommit -> NATS through outbox-relay ({relay_bin}), {args.rate} events/s for "
            f"{args.duration:g} s, {args.processes} publishing process(es), at most "
            f"{args.concurrency} operations at a time in each:"
        )
        r = await latency(args, db_url, prefix, arrivals)
        print(
            f"  scheduled {r['total']}, emitted {r['emitted']}, arrived {r['arrived']}, "
            f"duplicates {r['duplicates']}, errors {len(r['errors'])}, "
            f"achieved {r['emitted'] / r['elapsed']:.0f} events/s, starts >5 ms late {r['late_starts']}"
        )
        for e in r["errors"][:3]:
            print("  error:", e)
        achieved = r["emitted"] / r["elapsed"]
        if achieved < 0.95 * args.rate:
            print(
                f"  WARNING: {achieved:.0f} events/s, below the {args.rate}/s asked for: operations "
                f"queued for one of the {args.concurrency} slots (raise --concurrency); "
                "latencies start at the COMMIT, after that queue"
            )
        print("  " + summary("commit -> NATS (from before the caller's COMMIT)", r["latency"], (50, 99, 99.9)))
        print("  " + summary("emit returned -> NATS", r["after_emit"], (50, 99, 99.9)))
        print("  " + summary("window: caller's COMMIT returned -> outbox row committed", r["window"], (50, 99, 99.9)))
        print("  " + summary("the caller's own COMMIT", r["commit"], (50, 99)))
        if r["latency"]:
            print(f"  mean commit -> NATS {ms(statistics.mean(r['latency']))} ms")
    finally:
        # The relay first: nothing below may leave it running.
        if relay is not None and relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(10)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait(5)
        if arrivals is not None:
            try:
                arrivals.stop()
            except Exception as e:  # noqa: BLE001 - best effort
                print("arrivals thread did not stop:", repr(e), file=sys.stderr)
        try:
            nc = await nats.connect(args.nats_url)
            js = nc.jetstream()
            for stream in (names(prefix)[1], f"DEADLETTER_{prefix}"):
                try:
                    await js.delete_stream(stream)
                except Exception:  # noqa: BLE001 - may not exist
                    pass
            await nc.close()
        except Exception:  # noqa: BLE001 - best effort
            pass
        await emitter.close()
        if engine is not None:
            await engine.dispose()
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
