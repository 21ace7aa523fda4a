"""The bot's side of ``bench e2e``: bot-like operations at a fixed rate.

Started by ``bench e2e`` (crates/bench/src/e2e.rs), which owns the bot's
database (the outbox migration applied), the relay and every service; this
script only publishes the way the bot does::

    python clients/python/bench/e2e_publisher.py --database-url URL \\
        --nats-url URL --prefix P --rate 500 --duration 10 \\
        --first-seq 1000000 --processes 2 --concurrency 8 --out FILE

Each operation adds a user, ``commit()``, ``refresh()``, then
``emit("user.created", ..., db=db)`` (after the commit: the emitter
commits the outbox row on a connection of its own, which the relay then
publishes). The payload carries ``bench_seq``. For each event one line
``seq t0 t1 t2`` goes to ``--out``: wall-clock nanoseconds
(``time.time_ns()``, the clock ``bench e2e`` reads too) just before the
caller's COMMIT is sent, when it returned and when ``emit`` returned. The
last line is ``cpu SECONDS``: the user + system CPU the publishing
processes spent publishing (from their first operation to their last,
without the interpreter's start). Operation errors go to stderr and make the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import List, Tuple

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))

import asyncpg  # noqa: E402
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine  # noqa: E402

from bedolaga_events import EventEmitter  # noqa: E402
from emit_bench import DDL, User, payload  # noqa: E402

Stamp = Tuple[int, int, int, int]


async def produce(args, index: int, step: int) -> Tuple[List[Stamp], List[str], float]:
    rate = args.rate / step
    engine = create_async_engine(
        args.database_url.replace("postgres://", "postgresql+asyncpg://", 1),
        pool_size=2 * args.concurrency,
        max_overflow=args.concurrency,
    )
    emitter = EventEmitter(raise_errors=True)
    stamps: List[Stamp] = []
    errors: List[str] = []
    slots = asyncio.Semaphore(args.concurrency)
    try:
        await emitter.connect(args.nats_url, args.prefix)
        Session = async_sessionmaker(engine, expire_on_commit=False)
        before = resource.getrusage(resource.RUSAGE_SELF)

        async def op(seq: int) -> None:
            async with slots:
                try:
                    async with Session() as db:
                        user = User(telegram_id=seq, first_name="Иван")
                        db.add(user)
                        t0 = time.time_ns()
                        await db.commit()
                        t1 = time.time_ns()
                        await db.refresh(user)
                        await emitter.emit("user.created", payload(user, seq), db=db)
                        stamps.append((seq, t0, t1, time.time_ns()))
                except Exception as e:  # noqa: BLE001 - reported, fails the run
                    errors.append(repr(e))

        total = int(rate * args.duration)
        tasks = []
        start = time.perf_counter()
        for k in range(total):
            wait = start + k / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(op(args.first_seq + index + step * k)))
        await asyncio.gather(*tasks)
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await emitter.close()
        await engine.dispose()
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return stamps, errors, cpu


def produce_in_process(args, index: int, step: int):
    return asyncio.run(produce(args, index, step))


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--nats-url", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--first-seq", type=int, default=0)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    conn = await asyncpg.connect(args.database_url)
    exists = await conn.fetchval("SELECT to_regclass('users') IS NOT NULL")
    if not exists:
        await conn.execute(DDL)
    await conn.close()

    n = args.processes
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = await asyncio.gather(
            *(loop.run_in_executor(pool, produce_in_process, args, i, n) for i in range(n))
        )
    cpu = sum(p[2] for p in parts)
    errors = [e for p in parts for e in p[1]]
    with open(args.out, "w") as out:
        for stamps, _, _ in parts:
            for s in stamps:
                out.write("%d %d %d %d\n" % s)
        out.write(f"cpu {cpu:.3f}\n")
    for e in errors[:5]:
        print("operation failed:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
