"""Data pipeline timings: raw file -> ready tensors, cache -> ready tensors, batch throughput.

    .venv/bin/python benchmarks/bench_data.py                       # Beauty and ml-100k from ../shared/data
    .venv/bin/python benchmarks/bench_data.py --path my.txt --repeats 5

"Ready" means: the processed data exists (read, filtered, remapped) and the training and evaluation
datasets are built, i.e. the first batch can be gathered. Library imports are timed separately
(they are paid once per process, whatever the data). Results are recorded in docs/data.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_t0 = time.perf_counter()
import torch  # noqa: E402

from sigma_lightning.data.datamodule import SeqRecDataModule  # noqa: E402
from sigma_lightning.data.synthetic import SyntheticConfig  # noqa: E402
from timing import timed  # noqa: E402

IMPORT_S = time.perf_counter() - _t0
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def ready(dm: SeqRecDataModule) -> None:
    """Everything up to the first batch of each split."""
    _ = dm.num_items
    for split in ("train", "valid", "test"):
        dataset = dm.dataset(split)
        dataset[torch.arange(min(len(dataset), 8))]


def bench_source(path: str, repeats: int, max_seq_len: int, **kwargs) -> dict[str, float]:
    """Raw and cached load times and batch throughput for one data source."""
    # The statistics table is printed on every fresh load: render it, but out of sight.
    with tempfile.TemporaryDirectory() as cache, contextlib.redirect_stdout(io.StringIO()):
        raw = timed(lambda: ready(SeqRecDataModule(path, max_seq_len=max_seq_len, use_cache=False, **kwargs)), repeats)
        ready(SeqRecDataModule(path, max_seq_len=max_seq_len, cache_dir=cache, **kwargs))  # writes the cache
        cached = timed(
            lambda: ready(SeqRecDataModule(path, max_seq_len=max_seq_len, cache_dir=cache, **kwargs)), repeats
        )
        dm = SeqRecDataModule(path, max_seq_len=max_seq_len, cache_dir=cache, **kwargs)
        train = timed(lambda: sum(b["target"].numel() for b in dm.train_dataloader()), repeats)
        test = timed(lambda: sum(b["target"].numel() for b in dm.test_dataloader()), repeats)
        stats = dm.statistics
    return {
        "raw": raw,
        "cached": cached,
        "train_epoch": train,
        "test_pass": test,
        "train_samples_per_s": stats["train_samples"] / train[0],
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", action="append", help="data file (repeatable); default: Beauty, ml-100k, synthetic")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sources = (
        [(p, 50) for p in args.path]
        if args.path
        else [
            (str(SHARED / "beauty" / "Beauty.txt"), 50),
            (str(SHARED / "ml-100k" / "u.data"), 200),
            ("synthetic", 50),
        ]
    )
    print(f"machine: {machine()}")
    print(f"imports (torch, polars, lightning, sigma_lightning.data): {IMPORT_S:.2f} s")
    print(f"load average before: {load_average()}; seconds as median / min of {args.repeats} runs")
    columns = ("raw->ready", "cache->ready", "train epoch", "test pass")
    print(f"{'source':<22}" + "".join(f"{c:>17}" for c in columns) + f"{'train samples/s':>17}")
    for path, max_seq_len in sources:
        if path != "synthetic" and not Path(path).is_file():
            print(f"{path}: absent, skipped")
            continue
        kwargs = {"synthetic": SyntheticConfig()} if path == "synthetic" else {}
        r = bench_source(path, args.repeats, max_seq_len, batch_size=2048, **kwargs)
        cells = "".join(f"{r[k][0]:>9.3f} /{r[k][1]:>6.3f}" for k in ("raw", "cached", "train_epoch", "test_pass"))
        print(f"{Path(path).name + f' (L={max_seq_len})':<22}{cells}{r['train_samples_per_s']:>17,.0f}")
    beauty = str(SHARED / "beauty" / "Beauty.txt")
    if Path(beauty).is_file():
        with tempfile.TemporaryDirectory() as cache:
            raw = cold_process_s(beauty, None)
            cold_process_s(beauty, cache)  # writes the cache
            cached = cold_process_s(beauty, cache)
        print(f"fresh process, imports included, Beauty.txt: raw->ready {raw:.2f} s, cache->ready {cached:.2f} s")
    print(f"load average after: {load_average()}")


def load_average() -> str:
    """1/5/15-minute load averages (other processes on the machine skew the timings)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def cold_process_s(path: str, cache: str | None) -> float:
    """Wall time of a fresh Python process that imports everything and gets the data ready."""
    setting = f"cache_dir={cache!r}" if cache else "use_cache=False"
    root = str(Path(__file__).resolve().parents[1])
    code = (
        f"import contextlib, io, sys; sys.path[:0] = [{root!r}, {root + '/benchmarks'!r}]\n"
        "from benchmarks.bench_data import ready\n"
        "from sigma_lightning.data.datamodule import SeqRecDataModule\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    ready(SeqRecDataModule({path!r}, {setting}))\n"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
