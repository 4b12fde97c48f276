"""Preprocessing at scale: wall time and peak memory from a raw table to ready datasets.

    .venv/bin/python benchmarks/bench_preprocess_load.py                    # 1M, 3M, 10M rows, CSV and Parquet
    .venv/bin/python benchmarks/bench_preprocess_load.py --rows 1000000 --formats csv

A synthetic interaction log of 10M rows (1M users, 200k items; user activity log-normal, item
popularity Zipf-like, times increasing) is generated once with a fixed seed; each size is its first
N rows (a shorter period of the same log), written as CSV and Parquet. Each (size, format) runs in a
fresh Python process that does what ``SeqRecDataModule(path, use_cache=False)`` does up to the first
batch (read, order, k-core 5/5, id maps, leave-one-out ranges) and reports the time of each phase and
its peak resident memory (``ru_maxrss``). Results are recorded in docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

USERS, ITEMS, MAX_ROWS = 1_000_000, 200_000, 10_000_000
ROOT = Path(__file__).resolve().parents[1]


def generate(rows: int, seed: int) -> pl.DataFrame:
    """The first ``rows`` rows of the seeded log (user, item, timestamp), in time order."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.5, USERS)
    popularity = 1.0 / np.arange(1, ITEMS + 1) ** 0.9
    users = rng.choice(USERS, MAX_ROWS, p=activity / activity.sum())
    items = rng.permutation(ITEMS)[rng.choice(ITEMS, MAX_ROWS, p=popularity / popularity.sum())]
    times = 1_300_000_000 + np.sort(rng.integers(0, 10**8, MAX_ROWS))
    return pl.DataFrame({"user_id": users, "item_id": items, "timestamp": times}).head(rows)


CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from sigma_lightning.data import preprocess as pp
from sigma_lightning.data.readers import read_interactions
t1 = time.perf_counter()
frame = read_interactions(sys.argv[1])
t2 = time.perf_counter()
data = pp.preprocess(frame, pp.PreprocessConfig(5, 5), sys.argv[1])
t3 = time.perf_counter()
splits = [pp.split_positions(data.offsets, s) for s in ("train", "valid", "test")]
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "read_s": t2 - t1, "preprocess_s": t3 - t2, "split_s": t4 - t3,
                  "total_s": t4 - t1, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "users": data.num_users, "items": data.num_items, "interactions": int(data.items.numel())}))
"""


def measure(path: Path) -> dict:
    """One fresh process: phase times (imports excluded from total_s) and peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def write(frame: pl.DataFrame, folder: Path, fmt: str) -> Path:
    path = folder / f"log-{frame.height}.{fmt}"
    if not path.exists():
        frame.write_csv(path) if fmt == "csv" else frame.write_parquet(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="sizes (repeatable); default 1M, 3M, 10M")
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet"], choices=["csv", "parquet"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", help="where the generated tables go (default: a temporary folder)")
    args = parser.parse_args()
    sizes = args.rows or [1_000_000, 3_000_000, 10_000_000]
    print(f"machine: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}, polars {pl.__version__}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; seed {args.seed}")
    header = f"{'rows':>11} {'format':>8} {'read s':>7} {'prep s':>7} {'split s':>7} {'total s':>8} {'peak MiB':>9}"
    print(header + f" {'users':>9} {'items':>8} {'kept rows':>10}")
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        log = generate(max(sizes), args.seed)
        for rows in sizes:
            for fmt in args.formats:
                path = write(log.head(rows), Path(tmp), fmt)
                r = measure(path)
                print(f"{rows:>11,} {fmt:>8} {r['read_s']:>7.2f} {r['preprocess_s']:>7.2f} {r['split_s']:>7.2f} "
                      f"{r['total_s']:>8.2f} {r['peak_rss_mib']:>9,.0f} {r['users']:>9,} {r['items']:>8,} "
                      f"{r['interactions']:>10,}", flush=True)
                path.unlink()


if __name__ == "__main__":
    main()
