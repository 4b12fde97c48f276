"""The C kernel's cache: keyed by what the binary depends on, checked against this CPU before it is
loaded, the prebuild command, the read-only-home fallback; and the C code's allocation failures and
thread pool."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from sigma_lightning.ops import _cscan, build

REPO = str(Path(__file__).resolve().parents[2])
CC = build.compiler()
IDENTITY = None
if CC is not None:
    try:
        IDENTITY = build.compiler_identity(CC)
    except build.BuildError:
        pass
needs_cc = pytest.mark.skipif(IDENTITY is None, reason="no working C compiler here")
needs_cpuinfo = pytest.mark.skipif(build.cpu_features() is None, reason="this CPU's features cannot be read")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty kernel cache and private temp folder; returns the cache's kernels folder."""
    monkeypatch.setenv("SIGMA_LIGHTNING_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    # -O0 builds in a fraction of the time; the cache logic does not depend on optimisation.
    monkeypatch.setattr(build, "NATIVE_FLAG_SETS", (["-march=native", "-O0"], ["-O0"]))
    monkeypatch.setattr(build, "PORTABLE_FLAG_SETS", (["-O0"],))
    return tmp_path / "cache" / "kernels"


def opened_files() -> tuple[list, object]:
    """A library opener that records (path, bytes) of every file it opens."""
    opened = []

    def open_lib(path: Path):
        opened.append((path, path.read_bytes()))
        return _cscan.open_library(path)

    return opened, open_lib


def refusal(path: Path, key: str) -> str:
    """Why build.check refuses the library ("" where it would load it)."""
    return build.check(path, key) or ""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@needs_cc
def test_key_covers_what_the_binary_depends_on_and_not_the_host(monkeypatch):
    native, portable = build.NATIVE_FLAG_SETS[0], build.PORTABLE_FLAG_SETS[0]
    base = build.make_manifest(CC, IDENTITY, native)["key"]
    monkeypatch.setattr("platform.node", lambda: "another-host")
    assert build.make_manifest(CC, IDENTITY, native)["key"] == base  # host name: no part of it
    assert build.make_manifest(CC, IDENTITY, portable)["key"] != base  # flags
    assert build.make_manifest(CC, IDENTITY + " patched", native)["key"] != base  # compiler identity
    real = build.target_macros
    monkeypatch.setattr(build, "target_macros", lambda cc, flags: [*real(cc, flags), "#define __AMX_TILE__ 1"])
    other_cpu = build.make_manifest(CC, IDENTITY, native)
    assert other_cpu["key"] != base and "amx_tile" in other_cpu["required_cpu_features"]  # CPU features
    monkeypatch.setattr(build, "target_macros", real)
    monkeypatch.setattr("platform.machine", lambda: "riscv64")
    assert build.make_manifest(CC, IDENTITY, native)["key"] != base  # machine type
    monkeypatch.undo()
    monkeypatch.setattr(build, "SOURCES", (build.SOURCES[0], Path(__file__)))
    assert build.make_manifest(CC, IDENTITY, native)["key"] != base  # source bytes
    monkeypatch.undo()
    monkeypatch.setattr(build, "HEADERS", (Path(__file__),))
    assert build.make_manifest(CC, IDENTITY, native)["key"] != base  # the shared header's bytes


@needs_cc
def test_native_build_requires_what_march_native_enables():
    macros = build.target_macros(CC, build.NATIVE_FLAG_SETS[0])
    required = build.required_features(macros)
    assert required == build.make_manifest(CC, IDENTITY, build.NATIVE_FLAG_SETS[0])["required_cpu_features"]
    have = build.cpu_features()
    if have is not None:
        assert set(required) <= have  # the compiler's view of this CPU agrees with /proc/cpuinfo
    if "#define __AVX2__ 1" in macros:
        assert "avx2" in required and "avx2" not in build.required_features(build.target_macros(CC, ["-O3"]))


@needs_cc
@needs_cpuinfo
def test_cached_build_for_other_cpu_features_is_rebuilt_not_loaded(cache, monkeypatch):
    """A library under this machine's key whose manifest needs a feature this CPU lacks (a cache
    shared with another machine) is replaced by a fresh build before anything is opened."""
    lacking = sorted(set(build.ISA_FEATURES.values()) - build.cpu_features())[:2]
    if not lacking:
        pytest.skip("this CPU has every feature the table knows")
    manifest = build.make_manifest(CC, IDENTITY, build.NATIVE_FLAG_SETS[0])
    foreign = b"a library built for a CPU with " + " ".join(lacking).encode()
    cache.mkdir(parents=True)
    path = cache / f"selective_scan_{manifest['key']}.so"
    path.write_bytes(foreign)
    claimed = {**manifest, "binary_sha256": sha(foreign),
               "required_cpu_features": [*manifest["required_cpu_features"], *lacking]}  # fmt: skip
    path.with_suffix(".json").write_text(json.dumps(claimed))
    assert "needs CPU features this CPU lacks: " + ", ".join(lacking) in refusal(path, manifest["key"])
    opened, open_lib = opened_files()
    built, lib = build.find_kernel(open_lib)
    assert opened and all(data != foreign for _, data in opened)  # the foreign file was never opened
    assert built.path == path and path.read_bytes() != foreign  # rebuilt in place
    assert set(lacking).isdisjoint(built.manifest["required_cpu_features"])
    assert lib.ss_width() == (16 if "avx512f" in build.cpu_features() else 8)  # 512-bit blocks on AVX-512


@needs_cc
def test_a_library_that_does_not_match_its_manifest_is_rebuilt(cache):
    built, _ = build.find_kernel(_cscan.open_library)
    tampered = built.path.read_bytes() + b"\0"
    copy = built.path.with_name("tampered")
    copy.write_bytes(tampered)
    os.replace(copy, built.path)  # a new file: the opened library's pages stay as they were
    assert "does not match its manifest" in refusal(built.path, built.manifest["key"])
    opened, open_lib = opened_files()
    again, _ = build.find_kernel(open_lib)
    assert again.path == built.path and all(data != tampered for _, data in opened)
    manifest = built.path.with_suffix(".json")
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "key": "another-key"}))  # a copied file
    assert "manifest has another key" in refusal(built.path, built.manifest["key"])


@needs_cc
@needs_cpuinfo
def test_without_a_compiler_only_a_prebuilt_kernel_this_cpu_can_run_is_loaded(cache, monkeypatch):
    native, _ = build.find_kernel(_cscan.open_library)
    portable, _ = build.find_kernel(_cscan.open_library, portable=True)
    extra = sorted(set(native.manifest["required_cpu_features"]) - set(portable.manifest["required_cpu_features"]))
    if native.path == portable.path or not extra:
        pytest.skip("-march=native enables nothing beyond the default target here")
    monkeypatch.setattr(build, "compiler", lambda: None)
    opened, open_lib = opened_files()
    assert build.find_kernel(open_lib)[0].path == native.path  # this CPU: the best prebuilt one
    have = build.cpu_features()
    monkeypatch.setattr(build, "cpu_features", lambda: have - {extra[0]})  # a CPU without it
    opened.clear()
    assert build.find_kernel(open_lib)[0].path == portable.path
    assert [p for p, _ in opened] == [portable.path]  # the native build was never opened
    baseline = portable.manifest["required_cpu_features"]
    if baseline:
        monkeypatch.setattr(build, "cpu_features", lambda: have - {baseline[0]})
        opened.clear()
        with pytest.raises(build.BuildError, match="no C compiler found.*no prebuilt kernel in"):
            build.find_kernel(open_lib)
        assert opened == []


@needs_cc
def test_read_only_cache_builds_in_a_private_temp_folder(cache, monkeypatch):
    compile_into = build._compile

    def read_only_cache(cc, manifest, out_dir):
        if out_dir == cache:
            raise OSError(30, "Read-only file system", str(out_dir))  # EROFS
        return compile_into(cc, manifest, out_dir)

    monkeypatch.setattr(build, "_compile", read_only_cache)
    built, _ = build.find_kernel(_cscan.open_library)
    private = Path(tempfile.gettempdir()) / f"sigma_lightning-{os.getuid()}" / "kernels"
    assert built.path.parent == private and private.stat().st_mode & 0o777 == 0o700
    assert build.find_kernel(_cscan.open_library)[0].path == built.path  # found there next time
    private.chmod(0o777)  # writable by others: never loaded from, never built into
    assert private not in build.kernel_dirs()
    with pytest.raises(build.BuildError, match="writable by others"):
        build.find_kernel(_cscan.open_library)


def _python(code: str) -> str:
    """Runs `code` in a fresh interpreter; its stdout (it must exit with status 0)."""
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": REPO},
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout


def _prebuild(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sigma_lightning.ops.build", *args],
        env={**os.environ, "PYTHONPATH": REPO, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
@needs_cc
def test_prebuild_command(tmp_path):
    env = {"SIGMA_LIGHTNING_CACHE": str(tmp_path), "TMPDIR": str(tmp_path)}
    for args, march in (((), True), (("--portable",), False)):
        res = _prebuild(*args, **env)
        assert res.returncode == 0, res.stderr
        lines = dict(line.split(": ", 1) for line in res.stdout.splitlines())
        path = Path(lines["kernel"])
        assert path.parent == tmp_path / "kernels" and path.is_file() and path.with_suffix(".json").is_file()
        assert lines["backend"].startswith("C kernel") and ("-march=native" in lines["flags"]) == march
    assert len(list((tmp_path / "kernels").glob("*.so"))) == 2


@pytest.mark.slow
def test_prebuild_command_fails_clearly_without_a_compiler(tmp_path):
    res = _prebuild(SIGMA_LIGHTNING_CACHE=str(tmp_path), TMPDIR=str(tmp_path), CC=str(tmp_path / "no-such-cc"))
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith("sigma: error: could not build the C selective scan: ")
    assert "no-such-cc --version` could not run" in res.stderr and "no prebuilt kernel in" in res.stderr


def _no_memory_args(**sizes) -> _cscan._Args:
    return _cscan._Args(**{"D": 8, "L": 1, "N": 1, "G": 1, "sLD": 8, "sLN": 1, **sizes})


@needs_cc
def test_absurd_scratch_sizes_are_refused_not_allocated():
    lib = _cscan.load()
    for fn in (lib.ss_fwd, lib.ss_bwd):
        with pytest.raises(MemoryError, match=f"could not allocate its per-thread scratch in {fn.__name__}"):
            _cscan.run_in_ranges(fn, _no_memory_args(N=2**60), 1, 1)


@pytest.mark.slow
@needs_cc
def test_failed_malloc_raises_memory_error(tmp_path):
    """With the address space capped, malloc returns NULL: the kernel reports it, Python raises
    MemoryError, and the process lives on."""
    code = "\n".join([
        "import resource, torch",
        "from sigma_lightning.ops import _cscan",
        "lib = _cscan.load()",
        "soft, hard = resource.getrlimit(resource.RLIMIT_AS)",
        "vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()",
        "resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, hard))  # 1 GiB more: scratch needs 8+",
        "for fn in (lib.ss_fwd, lib.ss_bwd):",
        "    try:",
        "        _cscan.run_in_ranges(fn, _cscan._Args(D=8, L=1, N=2**28, G=1, sLD=8, sLN=2**28), 1, 1)",
        "    except MemoryError as e:",
        "        print('MemoryError', fn.__name__)",
    ])  # fmt: skip
    assert _python(code).split("\n")[:2] == ["MemoryError ss_fwd", "MemoryError ss_bwd"]


def _scan_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sigma_scan")]


@needs_cc
def test_resizing_the_thread_pool_does_not_leak_threads():
    from sigma_lightning.ops.selective_scan import selective_scan_fast, use_fast_backend

    u = torch.randn(4, 64, 64)  # (B, D, L): 32 work items, enough for 4 threads
    args = (u, torch.rand_like(u), -torch.rand(64, 16), torch.randn(4, 16, 64), torch.randn(4, 16, 64))
    before = torch.get_num_threads()
    replaced = []  # held here, so that only an explicit shutdown ends their threads
    try:
        with use_fast_backend("c"):
            for threads in (2, 3, 4, 2, 3):
                torch.set_num_threads(threads)
                selective_scan_fast(*args)
                replaced.append(_cscan._pool[1])
                assert _cscan._pool[0] == threads
                assert not any(t.is_alive() for pool in replaced[:-1] for t in pool._threads)
                alive = _scan_threads()
                assert 1 <= len(alive) <= threads, (threads, [t.name for t in alive])
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@needs_cc
def test_a_forked_child_gets_a_pool_of_its_own():
    code = "\n".join([
        "import os, signal, torch",
        "from sigma_lightning.ops import _cscan",
        "from sigma_lightning.ops.selective_scan import selective_scan_fast, use_fast_backend",
        "torch.set_num_threads(2)",
        "u = torch.randn(4, 64, 64)",
        "args = (u, torch.rand_like(u), -torch.rand(64, 16), torch.randn(4, 16, 64), torch.randn(4, 16, 64))",
        "with use_fast_backend('c'):",
        "    expected = selective_scan_fast(*args)",
        "    parent_pool = _cscan._pool[1]",
        "    pid = os.fork()",
        "    if pid == 0:",
        "        signal.alarm(60)  # a hang in the child ends it instead of the test",
        "        fresh = _cscan._pool is None",
        "        same = torch.equal(selective_scan_fast(*args), expected) and _cscan._pool[1] is not parent_pool",
        "        os._exit(0 if fresh and same else 1)",
        "    _, status = os.waitpid(pid, 0)",
        "print(os.waitstatus_to_exitcode(status))",
    ])  # fmt: skip
    assert _python(code).strip() == "0"
