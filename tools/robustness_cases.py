"""Runs the robustness cases of docs/robustness.md as a new user would: the installed `sigma`
command on files made the way users get them wrong, each in a fresh process, and prints one
markdown row per case (exit status, what stderr ended with, what was left on disk).

    git clone <repo> && cd <repo> && python3 -m venv .venv && . .venv/bin/activate
    pip install torch==2.13.0 && pip install -e .
    python tools/robustness_cases.py [--folder DIR] [--only NAME ...]

Not a test (tests/ prove each case, see the table in docs/robustness.md); this is the walk-through
from a fresh clone that the docs record. A case passes when its exit status and message are what
the docs promise; the script exits 1 if any case does not.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TINY = [
    "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--data.batch_size", "64",
    "--model.backbone.init_args.hidden_size", "16", "--trainer.accelerator", "cpu",
    "--data.synthetic.num_users", "150", "--data.synthetic.num_items", "40", "--data.synthetic.max_length", "12",
]  # fmt: skip


@dataclass
class Outcome:
    status: int
    stderr: str
    seconds: float

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclass
class Case:
    name: str
    what: str
    run: Callable[[Path], tuple[Outcome, bool, str]]  # (outcome, as promised?, note)


def sigma(folder: Path, *args: str, timeout: float = 600, signal_after: float | None = None) -> Outcome:
    """`sigma <args>` in `folder`; optionally SIGTERM after `signal_after` seconds."""
    command = [shutil.which("sigma") or "sigma", *args]
    env = {**os.environ, "SIGMA_LIGHTNING_CACHE": str(folder / "cache"), "SIGMA_LIGHTNING_DATA": str(folder / "sets")}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=folder, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    if signal_after is not None:
        time.sleep(signal_after)
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=timeout)
    return Outcome(process.returncode, stderr, time.perf_counter() - started)


def fit(folder: Path, *args: str, **kwargs) -> Outcome:
    return sigma(folder, "fit", "--config", "quickstart.yaml", *TINY, "--trainer.default_root_dir", "runs", *args, **kwargs)


def csv_rows(users: int = 40, items: int = 8) -> list[str]:
    """A log in which every user and item survives 5-core: user u saw items u..u+7 (mod 30)."""
    return [f"u{u},i{(u + t) % 30},{1000 * u + t}" for u in range(users) for t in range(items)]


def write_csv(path: Path, rows: list[str], header: str = "user,item,time") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def refused(outcome: Outcome, *needles: str) -> bool:
    """Exit status 2 and a last line `sigma: error: ...` holding every needle, with no traceback."""
    line = outcome.last_line
    return (
        outcome.status == 2
        and line.startswith("sigma: error:")
        and all(n in line for n in needles)
        and "Traceback" not in outcome.stderr
    )


# ---- the cases --------------------------------------------------------------------------------
def ragged_row(folder: Path):
    rows = csv_rows()
    rows[5] += ",extra"  # line 7 of the file
    out = fit(folder, "--data.path", str(write_csv(folder / "ragged.csv", rows)))
    return out, refused(out, "ragged.csv", "line 7"), ""


def nan_item(folder: Path):
    rows = csv_rows()
    rows[10] = "u1,NaN,1011"
    out = fit(folder, "--data.path", str(write_csv(folder / "nan.csv", rows)))
    return out, refused(out, "nan.csv", "line 12"), ""


def bom_sequence_file(folder: Path):
    lines = [" ".join([f"u{u}", *(str((u + t) % 30) for t in range(8))]) for u in range(40)]
    (folder / "bom.txt").write_bytes("\ufeff".encode() + ("\n".join(lines) + "\n").encode())
    out = fit(folder, "--data.path", "bom.txt", "--data.format", "sequence")
    return out, out.status == 0, "trains (the tests in tests/data check the id is read without the BOM)"


def gzip_file(folder: Path):
    (folder / "log.csv.gz").write_bytes(gzip.compress(write_csv(folder / "plain.csv", csv_rows()).read_bytes()))
    out = fit(folder, "--data.path", "log.csv.gz")
    return out, out.status == 0, "read transparently (gzip magic)"


def binary_file(folder: Path):
    (folder / "random.csv").write_bytes(os.urandom(4096))
    out = fit(folder, "--data.path", "random.csv")
    return out, refused(out, "random.csv") and len(out.last_line) < 400, ""


def semicolon_csv(folder: Path):
    rows = [row.replace(",", ";") for row in csv_rows()]
    out = fit(folder, "--data.path", str(write_csv(folder / "semi.csv", rows, "user;item;time")))
    return out, refused(out, "semi.csv", "sep"), ""


def latin1_csv(folder: Path):
    rows = csv_rows()
    rows[3] = "u0,caf\xe9,1003"
    (folder / "latin1.csv").write_bytes(("\n".join(["user,item,time", *rows]) + "\n").encode("latin-1"))
    out = fit(folder, "--data.path", "latin1.csv")
    return out, refused(out, "latin1.csv", "line 5", "encoding"), ""


def dev_zero(folder: Path):
    out = fit(folder, "--data.path", "/dev/zero")
    return out, refused(out, "/dev/zero") and "not found" not in out.last_line, ""


def nan_training(folder: Path):
    out = fit(folder, "--optimizer.init_args.lr", "1e6", "--trainer.max_epochs", "3", "--trainer.default_root_dir", "nan")
    checkpoints = list((folder / "nan").rglob("*.ckpt"))
    return out, refused(out, "loss is nan", "No checkpoint") and not checkpoints, f"{len(checkpoints)} checkpoints"


def bad_settings(folder: Path):
    outs = [fit(folder, flag, value) for flag, value in
            [("--model.backbone.init_args.dropout", "1.5"), ("--optimizer.init_args.lr", "-1"), ("--trainer.max_epochs", "-5")]]  # fmt: skip
    ok = all(refused(o, name) for o, name in zip(outs, ["dropout", "lr", "max_epochs"], strict=True))
    return outs[0], ok, " / ".join(str(o.status) for o in outs)


def long_data_sequences(folder: Path):
    out = fit(folder, "--data.max_seq_len", "60")
    return out, refused(out, "data.max_seq_len=60", "model.backbone.init_args.max_seq_len=50"), ""


def yaml_bomb(folder: Path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (folder / "bomb.yaml").write_text("\n".join(lines) + "\ntrainer:\n  max_epochs: *a8\n")
    out = sigma(folder, "fit", "--config", "bomb.yaml")
    return out, refused(out, "bomb.yaml") and out.seconds < 30 and len(out.stderr) < 2000, f"{out.seconds:.1f} s"


def yaml_syntax(folder: Path):
    (folder / "broken.yaml").write_text("trainer:\n  max_epochs: 1\n  callbacks: [a, b\n")
    out = sigma(folder, "fit", "--config", "broken.yaml")
    return out, refused(out, "broken.yaml", "line") and "<unicode string>" not in out.stderr, ""


def trained_run(folder: Path) -> Path:
    """A finished quickstart run under `folder/runs` (made once); its checkpoints folder."""
    checkpoints = next((folder / "runs").rglob("checkpoints"), None)
    if checkpoints is None:
        out = fit(folder, "--trainer.max_epochs", "2")
        assert out.status == 0, out.stderr[-2000:]
        checkpoints = next((folder / "runs").rglob("checkpoints"))
    return checkpoints


def unusable_checkpoints(folder: Path):
    (folder / "empty.ckpt").write_bytes(b"")
    last = trained_run(folder) / "last.ckpt"
    (folder / "truncated.ckpt").write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (folder / "folder.ckpt").mkdir()
    outs = [sigma(folder, "test", "--config", "quickstart.yaml", *TINY, "--ckpt_path", name)
            for name in ("empty.ckpt", "truncated.ckpt", "folder.ckpt")]  # fmt: skip
    ok = all(refused(o, name) for o, name in zip(outs, ["empty.ckpt", "truncated.ckpt", "folder.ckpt"], strict=True))
    return outs[1], ok, " / ".join(str(o.status) for o in outs)


def other_catalogue(folder: Path):
    last = trained_run(folder) / "last.ckpt"
    out = sigma(folder, "test", "--config", "quickstart.yaml", *TINY, "--data.synthetic.num_items", "60",
                "--ckpt_path", str(last))  # fmt: skip
    return out, refused(out, "items"), ""


def damaged_last_on_resume(folder: Path):
    root = ["--trainer.default_root_dir", "resume"]
    first = fit(folder, "--trainer.max_epochs", "2", *root)
    last = next((folder / "resume").rglob("last.ckpt"))
    last.write_bytes(last.read_bytes()[:1000])
    out = fit(folder, "--trainer.max_epochs", "3", *root, "--ckpt_path", "last")
    return out, first.status == 0 and out.status == 0 and "Falling back" in out.stderr, "resumed from the best checkpoint"


def pickled_code(folder: Path):
    marker = folder / "pwned"
    payload = (
        "import os, pickle, torch\n"
        "class Evil:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'state_dict': {{}}, 'evil': Evil()}}, '{folder / 'evil.ckpt'}')\n"
    )
    subprocess.run([sys.executable, "-c", payload], check=True)
    out = sigma(folder, "test", "--config", "quickstart.yaml", *TINY, "--ckpt_path", "evil.ckpt")
    return out, refused(out, "evil.ckpt") and not marker.exists(), f"marker file {'EXISTS' if marker.exists() else 'absent'}"


def damaged_cache(folder: Path):
    source = ["--data.path", str(write_csv(folder / "cached.csv", csv_rows()))]
    first = fit(folder, *source)
    files = list((folder / "cache").rglob("cached-*"))
    for path in files:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    out = fit(folder, *source)
    ok = first.status == 0 and bool(files) and out.status == 0 and "data cache" in out.stderr
    return out, ok, f"{len(files)} cache file(s) damaged; warned, rebuilt, trained"


def sigterm_mid_fit(folder: Path):
    run = folder / "sigterm"
    out = sigma(folder, "fit", "--config", "quickstart.yaml", *TINY, "--trainer.max_epochs", "50",
                "--trainer.default_root_dir", str(run), signal_after=25)  # fmt: skip
    saved = list(run.rglob("*.ckpt"))
    return out, out.status != 0 and bool(saved), f"{len(saved)} checkpoint(s) saved"


CASES = [
    Case("ragged-row", "CSV row with more fields than the header at line 7", ragged_row),
    Case("nan-id", "`NaN` item id at line 12", nan_item),
    Case("bom", "UTF-8 BOM in a sequence file", bom_sequence_file),
    Case("gzip", "gzip-compressed CSV", gzip_file),
    Case("binary", "random bytes named .csv", binary_file),
    Case("semicolon", "`;`-separated CSV", semicolon_csv),
    Case("latin-1", "latin-1 CSV (`café` at line 5)", latin1_csv),
    Case("dev-zero", "`--data.path /dev/zero`", dev_zero),
    Case("nan-training", "`--optimizer.init_args.lr 1e6`", nan_training),
    Case("bad-settings", "`dropout 1.5`, `lr -1`, `max_epochs -5`", bad_settings),
    Case("long-sequences", "`--data.max_seq_len 60` with SASRec's 50 positions", long_data_sequences),
    Case("yaml-bomb", "64-line YAML alias bomb", yaml_bomb),
    Case("yaml-syntax", "YAML syntax error", yaml_syntax),
    Case("unusable-ckpt", "empty, truncated and folder checkpoints", unusable_checkpoints),
    Case("other-catalogue", "checkpoint of another item catalogue", other_catalogue),
    Case("damaged-last", "truncated last.ckpt on resume", damaged_last_on_resume),
    Case("pickle", "checkpoint whose pickle would run code", pickled_code),
    Case("damaged-cache", "every data cache file with a flipped byte", damaged_cache),
    Case("sigterm", "SIGTERM 25 s into `sigma fit`", sigterm_mid_fit),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="work folder (default: a new temporary one, kept)")
    parser.add_argument("--only", nargs="+", choices=[c.name for c in CASES])
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="sigma-cases-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    failed = 0
    print(f"work folder: {folder}\n\n| case | exit | seconds | as promised | stderr's last line (cut at 160) | note |")
    print("| --- | ---: | ---: | --- | --- | --- |")
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        outcome, ok, note = case.run(folder)
        failed += not ok
        line = outcome.last_line.replace("|", "\\|")[:160]
        print(f"| {case.what} | {outcome.status} | {outcome.seconds:.1f} | {'yes' if ok else 'NO'} | `{line}` | {note} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
