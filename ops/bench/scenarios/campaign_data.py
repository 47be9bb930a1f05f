"""A campaign's data at a million: a templated enqueue, the opt-out list
(imported, kept, checked at enqueue), and the per-recipient report, each at 1,000,000.

The report's records are written here as a finished campaign's would be (sent or failed, a
DIDWW id, a callback's status, code and times), since sending a million messages through the
simulator would take the whole benchmark's time; the report reads them exactly as it reads a
real campaign's. `smsq optout import` and `smsq report` run as the user runs them, as
processes, so their wall time and peak memory are theirs alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from ledger import keys, records
from ledger.campaigns import Campaign
from ledger.states import State
from ops.bench.harness import SOURCE, BenchStack, Context, numbers
from ops.bench.measure import CpuMeter
from ops.bench.report import Row, ScenarioResult
from producer.enqueue import Producer
from producer.numbers import normalize_recipients
from producer.recipients import read_recipients

NAME = "campaign"
TEMPLATE = "Hi {name}, your code is {code}. Reply STOP to opt out."
# Ten fields per recipient, given as objects through the Python API (normalize_recipients).
WIDE_FIELDS = tuple(f"f{n}" for n in range(10))
WIDE_TEMPLATE = "Hi " + " ".join(f"{{{name}}}" for name in WIDE_FIELDS)
TARGET_ENQUEUE_PER_S = 100_000
TARGET_REPORT_S = 10.0
# "Flat memory": the report of 1,000,000 rows may hold at most this much more than the
# report of a tenth as many (the Python interpreter and its imports are the rest).
TARGET_REPORT_GROWTH_MB = 16.0
# Every other number of the opted-out campaign is on the list.
OPTED_OUT_SHARE = 2


def _templated_csv(path: Path, destinations: Sequence[str]) -> Path:
    with path.open("w") as out:
        out.write("destination,name,code\n")
        out.writelines(
            f"+{n},Customer {i},{i % 1_000_000:06d}\n" for i, n in enumerate(destinations)
        )
    return path


def _numbers_file(path: Path, destinations: Sequence[str]) -> Path:
    with path.open("w") as out:
        out.writelines(f"+{n}\n" for n in destinations)
    return path


def _smsq(bench: BenchStack, folder: Path, *args: str) -> tuple[float, float, str]:
    """Run `smsq ARGS` against the stack: (wall seconds, its peak RSS in MB, its stdout)."""
    smsq = Path(sys.executable).with_name("smsq")
    out_path, err_path = folder / "smsq.out", folder / "smsq.err"
    started = time.perf_counter()
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen([str(smsq), *args], env=bench.stack.env(), stdout=out, stderr=err)
        # Reaped here, not by Popen, for this one process's resource usage.
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        detail = err_path.read_text().strip()[-400:]
        raise RuntimeError(f"smsq {' '.join(args[:2])} exited {code}: {detail}")
    return elapsed, usage.ru_maxrss / 1024, out_path.read_text()


def _finish(bench: BenchStack, cid: str) -> int:
    """Rewrite a queued campaign's records as a finished campaign's: 95% sent, 5% failed,
    each with a DIDWW id, a status, a code and times. Returns the number of records."""
    redis = bench.redis
    raw = redis.hgetall(keys.campaign(cid))
    c = Campaign.from_hash(cid, raw)
    start = int(time.time()) - 3600
    total = 0
    pipe = redis.pipeline(transaction=False)
    for batch_no in range(c.batches):
        data = redis.get(keys.batch(cid, batch_no)) or b""
        out = bytearray()
        for record in records.iter_batch(c.first_index(batch_no), data):
            failed = record.index % 20 == 0
            out += records.pack(
                State.FAILED if failed else State.SENT,
                record.destination,
                attempts=1,
                fragments=record.fragments,
                flags=(3 if failed else 1) * records.STATUS_UNIT,
                code_id=101 if failed else None,
                t1=start + record.index // 1000,
                t2=4,
                id_key=uuid.uuid4().bytes,
            )
            total += 1
        pipe.set(keys.batch(cid, batch_no), bytes(out))
        if batch_no % 200 == 199:
            pipe.execute()
    pipe.execute()
    return total


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(NAME)
    count = ctx.sizes.campaign_data_messages
    folder = ctx.folder(NAME)
    destinations = numbers(count, prefix="4940")
    templated = _templated_csv(folder / "templated.csv", destinations)
    with ctx.stack(NAME) as bench:
        producer = Producer(bench.settings())
        try:
            # 1. The opt-out list, imported first so the templated campaign is checked against
            # a list that is not empty (an empty list skips the check).
            opted = destinations[::OPTED_OUT_SHARE]
            list_file = _numbers_file(folder / "optouts.txt", [f"4950{n[4:]}" for n in opted])
            before = bench.used_memory()
            import_s, _, import_out = _smsq(bench, folder, "optout", "import", str(list_file))
            optout_bytes = (bench.used_memory() - before) / len(opted)
            # 2. A templated campaign: two fields per recipient, none of them on the list.
            before = bench.used_memory()
            meter = CpuMeter(bench.pids())
            started = time.perf_counter()
            parsed = read_recipients(templated)
            queued = producer.enqueue(SOURCE, TEMPLATE, parsed, name="templated")
            enqueue_s = time.perf_counter() - started
            meter.stop()
            templated_bytes = (bench.used_memory() - before) / count
            if queued.queued != count:
                raise RuntimeError(f"queued {queued.queued} of {count} templated recipients")
            templated_cid = queued.campaign_id

            # 2b. Ten fields per recipient, as objects (the Python API's and HTTP's form).
            wide = [
                {"destination": n, "fields": {f: f"v{i % 97}" for f in WIDE_FIELDS}}
                for i, n in enumerate(numbers(count, prefix="4945"))
            ]
            started = time.perf_counter()
            wide_queued = producer.enqueue(
                SOURCE, WIDE_TEMPLATE, normalize_recipients(wide), name="ten fields"
            )
            wide_s = time.perf_counter() - started
            del wide
            if wide_queued.queued != count:
                raise RuntimeError(f"queued {wide_queued.queued} of {count} ten-field recipients")

            # 2c. A reference per recipient (an order id), as objects: its enqueue rate and
            # what the references add to Redis's memory per message.
            referenced = [
                {"destination": n, "reference": f"order-{i:08d}"}
                for i, n in enumerate(numbers(count, prefix="4946"))
            ]
            before = bench.used_memory()
            started = time.perf_counter()
            ref_queued = producer.enqueue(
                SOURCE, "Your order has shipped", normalize_recipients(referenced), name="refs"
            )
            ref_s = time.perf_counter() - started
            ref_bytes = (bench.used_memory() - before) / count
            del referenced
            if ref_queued.queued != count:
                raise RuntimeError(f"queued {ref_queued.queued} of {count} referenced recipients")

            # 3. The list as it is checked: a campaign's numbers, half of them on it.
            campaign_numbers = [f"4950{n[4:]}" for n in destinations]
            campaign_file = _numbers_file(folder / "campaign.txt", campaign_numbers)
            started = time.perf_counter()
            parsed = read_recipients(campaign_file)
            checked = producer.enqueue(SOURCE, "Plain text", parsed, name="opt-outs")
            checked_s = time.perf_counter() - started
            if checked.suppressed != len(opted) or checked.queued != count - len(opted):
                raise RuntimeError(
                    f"opt-outs: {checked.suppressed} suppressed and {checked.queued} queued; "
                    f"expected {len(opted)} and {count - len(opted)}"
                )
        finally:
            producer.close()

        # 4. The report of a finished campaign: first a tenth of the rows, then all of them.
        rows = _finish(bench, templated_cid)
        out_small = folder / "report-small.csv"
        small_cid = bench.enqueue(max(1, count // 10), prefix="4960").campaign_id
        _finish(bench, small_cid)
        small_s, small_mb, _ = _smsq(
            bench, folder, "report", small_cid, "--format", "csv", "--output", str(out_small)
        )
        out_full = folder / "report.csv"
        report_s, report_mb, _ = _smsq(
            bench, folder, "report", templated_cid, "--format", "csv", "--output", str(out_full)
        )
        lines = sum(1 for _ in out_full.open()) - 1
        if lines != rows:
            raise RuntimeError(f"the report has {lines} rows for {rows} messages")
        report_bytes = out_full.stat().st_size
        for path in (out_small, out_full):
            os.unlink(path)

    enqueue_rate = count / enqueue_s
    checked_rate = count / checked_s
    growth_mb = report_mb - small_mb
    result.rows = [
        Row(NAME, "templated enqueue, 2 fields (recipients/s)", "msg/s", enqueue_rate,
            target=TARGET_ENQUEUE_PER_S,
            why=f"{count:,} recipients in {enqueue_s:.2f} s; the enqueuing process "
            f"{meter.cores('bench'):.2f} cores, redis-server {meter.cores('redis'):.2f}"),
        Row(NAME, "Redis memory per queued templated message", "bytes", templated_bytes),
        Row(NAME, "enqueue of recipients with 10 fields, as objects (recipients/s)", "msg/s",
            count / wide_s, target=TARGET_ENQUEUE_PER_S,
            why=f"{count:,} recipients in {wide_s:.2f} s"),
        Row(NAME, "enqueue of recipients with a reference each, as objects (recipients/s)",
            "msg/s", count / ref_s, target=TARGET_ENQUEUE_PER_S,
            why=f"{count:,} recipients in {ref_s:.2f} s"),
        Row(NAME, "Redis memory per queued message with a 14-character reference", "bytes",
            ref_bytes),
        Row(NAME, "enqueue with opt-out checks, half on the list (recipients/s)", "msg/s",
            checked_rate, target=TARGET_ENQUEUE_PER_S,
            why=f"{count:,} recipients checked against {len(opted):,} opt-outs in "
            f"{checked_s:.2f} s"),
        Row(NAME, f"smsq optout import of {len(opted):,} numbers", "s", import_s),
        Row(NAME, "Redis memory per opted-out number", "bytes", optout_bytes),
        Row(NAME, f"smsq report of {rows:,} rows (CSV)", "s", report_s,
            target=TARGET_REPORT_S, better="lower"),
        Row(NAME, f"report's peak memory growth, {rows // 10:,} to {rows:,} rows", "MB",
            growth_mb, target=TARGET_REPORT_GROWTH_MB, better="lower",
            why=f"peak RSS {small_mb:.0f} MB for {rows // 10:,} rows, {report_mb:.0f} MB for "
            f"{rows:,}"),
    ]  # fmt: skip
    result.notes = [
        f"templated: a CSV of {count:,} lines (destination, name, code) and the template "
        f"{TEMPLATE!r}, through producer.enqueue.Producer as `smsq send` does, checked "
        f"against an opt-out list of {len(opted):,} numbers (none of its own on it); "
        f"{small_s:.1f} s for the report of {rows // 10:,} rows",
        f"opt-outs: `smsq optout import` of {len(opted):,} numbers ({import_out.strip()}), then "
        f"a campaign of {count:,} numbers of which {len(opted):,} are on the list: they are "
        "counted suppressed at enqueue; the workers check each number again inside the claim "
        "script (SISMEMBER, no extra round trip: see the cpu scenario's commands per message)",
        f"report: `smsq report CAMPAIGN --format csv --output FILE` as a process, {rows:,} "
        f"records rewritten as a finished campaign's (95% sent, 5% failed code 101, each "
        f"with a DIDWW id); {report_bytes / 1e6:.0f} MB of CSV; peak RSS from the process's "
        "rusage",
    ]
    return result
