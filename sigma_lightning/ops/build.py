"""Building the C selective scan, and the cache of built libraries, keyed by what a binary depends on.

    python -m sigma_lightning.ops.build             # build (or find) the kernel for this machine
    python -m sigma_lightning.ops.build --portable  # without -march=native: for images shared by CPUs

A library is cached under `cache_dir("kernels")` (sigma_lightning/paths.py) as
`selective_scan_<key>.so`, where the key is a hash of everything the binary depends on: the source
bytes, the compiler's `--version` output, the flags, `platform.machine()` and the target the
compiler builds for with those flags. The target is read from the macros the compiler predefines
(`cc <flags> -dM -E`): with `-march=native` they name the CPU model and every instruction-set
extension the compiler may use (`__AVX2__`, `__AVX512F__`, `__ARM_FEATURE_SVE`, ...), on gcc and
clang alike. Two machines whose CPUs differ therefore never share a key, whatever their host names.

Beside each library, `selective_scan_<key>.json` (the manifest) records the key's inputs, the
library's SHA-256 and the CPU features it needs, named as the kernel names them in /proc/cpuinfo.
Before a library is loaded its manifest is checked: same source, same machine type, the library
unchanged, and every feature it needs present on this CPU. A library that fails the check is
rebuilt (or, without a compiler, skipped), never loaded: an instruction the CPU lacks would kill
the process with SIGILL, which Python cannot catch. Without a compiler, any cached library whose
manifest passes the check is used, so an image can ship kernels built by this command.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sigma_lightning.paths import cache_dir

CSRC = Path(__file__).parent / "csrc"
# Compiled together into one library; the header they share enters the source hash too.
SOURCES = (CSRC / "selective_scan.c", CSRC / "depthwise_conv.c", CSRC / "gru.c", CSRC / "fastmath_eval.c")
HEADERS = (CSRC / "fastmath.h",)
# Tried in order until one builds and passes the manifest check. -fopenmp-simd honours the
# `#pragma omp simd` hints (no OpenMP runtime needed); -fno-trapping-math lets the loops'
# conditional expressions vectorise; -ffp-contract=fast allows FMA. None changes results beyond
# float rounding (-ffast-math would: it breaks the rounding trick in exp2_f32).
VECTOR_FLAGS = ["-O3", "-fopenmp-simd", "-fno-trapping-math", "-ffp-contract=fast"]
NATIVE_FLAG_SETS = (["-march=native", *VECTOR_FLAGS], VECTOR_FLAGS, ["-O3"])
PORTABLE_FLAG_SETS = (VECTOR_FLAGS, ["-O3"])
BASE_FLAGS = ["-std=c99", "-shared", "-fPIC"]
# Predefined macro -> the CPU feature as /proc/cpuinfo names it, for the instruction sets a
# compiler may emit for this source (vector and scalar arithmetic). Macros outside this table still
# enter the key; only these are checked against the running CPU.
ISA_FEATURES = {
    "__MMX__": "mmx", "__SSE__": "sse", "__SSE2__": "sse2", "__SSE3__": "pni", "__SSSE3__": "ssse3",
    "__SSE4_1__": "sse4_1", "__SSE4_2__": "sse4_2", "__SSE4A__": "sse4a", "__AVX__": "avx",
    "__AVX2__": "avx2", "__FMA__": "fma", "__FMA4__": "fma4", "__F16C__": "f16c", "__BMI__": "bmi1",
    "__BMI2__": "bmi2", "__LZCNT__": "abm", "__POPCNT__": "popcnt", "__MOVBE__": "movbe",
    "__AVX512F__": "avx512f", "__AVX512CD__": "avx512cd", "__AVX512BW__": "avx512bw",
    "__AVX512DQ__": "avx512dq", "__AVX512VL__": "avx512vl", "__AVX512IFMA__": "avx512ifma",
    "__AVX512VBMI__": "avx512vbmi", "__AVX512VBMI2__": "avx512_vbmi2", "__AVX512VNNI__": "avx512_vnni",
    "__AVX512BITALG__": "avx512_bitalg", "__AVX512VPOPCNTDQ__": "avx512_vpopcntdq",
    "__AVX512BF16__": "avx512_bf16", "__AVX512FP16__": "avx512_fp16",
    "__AVX512VP2INTERSECT__": "avx512_vp2intersect", "__AVXVNNI__": "avx_vnni", "__AMX_TILE__": "amx_tile",
    "__ARM_NEON": "asimd", "__ARM_FEATURE_SVE": "sve", "__ARM_FEATURE_SVE2": "sve2",
    "__ARM_FEATURE_DOTPROD": "asimddp", "__ARM_FEATURE_FP16_VECTOR_ARITHMETIC": "asimdhp",
    "__ARM_FEATURE_BF16_VECTOR_ARITHMETIC": "bf16", "__ARM_FEATURE_MATMUL_INT8": "i8mm",
}  # fmt: skip
PREFIX = "selective_scan_"
T = TypeVar("T")


class BuildError(RuntimeError):
    """The kernel could not be built or found; the message says why and what to do."""


@dataclass(frozen=True)
class Built:
    """A library that passed its manifest check."""

    path: Path
    manifest: dict


def compiler() -> str | None:
    """The C compiler: $CC, else cc, gcc or clang on the PATH (None if none)."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_sha256() -> str:
    """One hash of every source and header the library is built from, in a fixed order."""
    return _sha256(b"".join(_sha256(path.read_bytes()).encode() for path in (*SOURCES, *HEADERS)))


def _ask_compiler(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"`{' '.join(cmd)}` could not run: {e}") from None
    if res.returncode != 0:
        raise BuildError(f"`{' '.join(cmd)}` failed: {res.stderr.strip()[-1000:]}")
    return res.stdout


def target_macros(cc: str, flags: list[str]) -> list[str]:
    """The macros `cc` predefines when building with `flags`: the target it compiles for."""
    out = _ask_compiler([cc, *flags, "-dM", "-E", "-x", "c", os.devnull])
    return sorted(line.strip() for line in out.splitlines() if line.startswith("#define "))


def required_features(macros: list[str]) -> list[str]:
    """The CPU features (cpuinfo names) a binary built for these macros may use."""
    names = {line.split()[1] for line in macros}
    return sorted(feature for macro, feature in ISA_FEATURES.items() if macro in names)


def cpu_features() -> frozenset[str] | None:
    """This CPU's features as the kernel lists them (Linux /proc/cpuinfo: `flags` on x86, `Features`
    on ARM); None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def compiler_identity(cc: str) -> str:
    """`cc --version`'s output; raises BuildError where the compiler does not run."""
    return _ask_compiler([cc, "--version"]).strip()


def make_manifest(cc: str, identity: str, flags: list[str]) -> dict:
    """What a build with `cc` and `flags` on this machine depends on, and its key (no binary yet)."""
    macros = target_macros(cc, flags)
    inputs = {
        "source_sha256": source_sha256(),
        "compiler": identity,
        "flags": [*flags, *BASE_FLAGS],
        "machine": platform.machine(),
        "target_macros": macros,
    }
    key = _sha256(json.dumps(inputs, sort_keys=True).encode())[:20]
    return {"key": key, **inputs, "compiler_path": cc, "required_cpu_features": required_features(macros)}


def check(path: Path, key: str | None = None) -> str | None:
    """Why the library at `path` must not be loaded on this machine (None: it may be). `key`: the key
    this machine's compiler gives; without one, the CPU's features must be known to trust a build."""
    try:
        manifest = json.loads(path.with_suffix(".json").read_text())
        binary = path.read_bytes()
    except (OSError, ValueError) as e:
        return f"{path.name} has no readable manifest ({type(e).__name__})"
    if key is not None and manifest.get("key") != key:
        return f"{path.name}'s manifest has another key"
    if manifest.get("source_sha256") != source_sha256():
        return f"{path.name} was built from another version of the source"
    if manifest.get("machine") != platform.machine() or manifest.get("binary_sha256") != _sha256(binary):
        return f"{path.name} was built for another machine type or does not match its manifest"
    have = cpu_features()
    if have is None:
        return None if key is not None else "this CPU's features cannot be read to check a prebuilt kernel"
    missing = sorted(set(manifest.get("required_cpu_features", [])) - have)
    return f"{path.name} needs CPU features this CPU lacks: {', '.join(missing)}" if missing else None


def kernel_dirs() -> list[Path]:
    """Where libraries are looked for: the package's cache, then the private temp folder if it exists."""
    private = _private_temp_dir(create=False)
    return [cache_dir("kernels"), *([private] if private is not None else [])]


def _private_temp_dir(create: bool = True) -> Path | None:
    """A folder of this user's alone in the temp dir, for homes that cannot be written; None (or,
    when creating, BuildError) where it is missing or others could have written to it."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    path = Path(tempfile.gettempdir()) / f"sigma_lightning-{uid}" / "kernels"
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    elif not path.is_dir():
        return None
    for folder in (path.parent, path):
        st = folder.stat()
        if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
            if create:
                raise BuildError(f"{folder} belongs to someone else or is writable by others; not using it")
            return None  # never load a library others could have put there
    return path


def _compile(cc: str, manifest: dict, out_dir: Path) -> Path:
    """Build into `out_dir` and write the manifest; both files appear atomically, library first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PREFIX}{manifest['key']}.so"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".build_", suffix=".so")
    os.close(fd)
    try:
        cmd = [cc, *manifest["flags"], *map(str, SOURCES), "-o", tmp]
        _ask_compiler(cmd)
        done = {**manifest, "binary_sha256": _sha256(Path(tmp).read_bytes())}
        Path(tmp + ".json").write_text(json.dumps(done, indent=1, sort_keys=True))
        os.replace(tmp, target)  # atomic: readers see no file or the whole file
        os.replace(tmp + ".json", target.with_suffix(".json"))
    finally:
        for leftover in (tmp, tmp + ".json"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return target


def _build_somewhere(cc: str, manifest: dict) -> Path:
    try:
        return _compile(cc, manifest, cache_dir("kernels"))
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise BuildError(f"could not write the kernel to {cache_dir('kernels')}: {e}") from None
        return _compile(cc, manifest, _private_temp_dir())  # read-only home


def cached_or_built(cc: str, identity: str, flags: list[str]) -> Built:
    """The library for `cc` and `flags` on this machine: from the cache if its manifest passes the
    check, else freshly built (replacing a cached one that failed). Raises BuildError."""
    manifest = make_manifest(cc, identity, flags)
    name = f"{PREFIX}{manifest['key']}.so"
    for folder in kernel_dirs():
        if (folder / name).exists() and check(folder / name, manifest["key"]) is None:
            return Built(folder / name, json.loads((folder / name).with_suffix(".json").read_text()))
    path = _build_somewhere(cc, manifest)
    reason = check(path, manifest["key"])
    if reason is not None:  # e.g. the compiler's idea of -march=native differs from /proc/cpuinfo
        raise BuildError(reason)
    return Built(path, json.loads(path.with_suffix(".json").read_text()))


def prebuilt() -> list[Built]:
    """Cached libraries that pass the check without a compiler, those needing most features first."""
    found = []
    for folder in kernel_dirs():
        for path in sorted(folder.glob(f"{PREFIX}*.so")) if folder.is_dir() else []:
            if check(path) is None:
                found.append(Built(path, json.loads(path.with_suffix(".json").read_text())))
    return sorted(found, key=lambda b: -len(b.manifest.get("required_cpu_features", [])))


def find_kernel(open_lib: Callable[[Path], T], portable: bool = False) -> tuple[Built, T]:
    """Build or find the library and open it with `open_lib` (which raises OSError or RuntimeError
    where it cannot): each flag set in turn with the compiler, then (unless `portable`) prebuilt
    libraries. Raises BuildError with every reason."""
    reasons: list[str] = []
    for make in _candidates(portable, reasons):
        try:
            built = make()
            return built, open_lib(built.path)
        except (BuildError, OSError, RuntimeError) as e:
            reasons.append(str(e))
    where = " or ".join(str(d) for d in kernel_dirs())
    raise BuildError("; ".join([*reasons, f"no prebuilt kernel in {where} matches this CPU"]))


def _candidates(portable: bool, reasons: list[str]) -> Iterator[Callable[[], Built]]:
    """Ways to get a library, best first; appends to `reasons` why the compiler cannot be used."""
    cc = compiler()
    try:
        identity = compiler_identity(cc) if cc else None
    except BuildError as e:
        reasons.append(str(e))
        identity = None
    if cc is None:
        reasons.append("no C compiler found (set CC or install cc, gcc or clang)")
    for flags in (PORTABLE_FLAG_SETS if portable else NATIVE_FLAG_SETS) if identity else ():
        yield lambda flags=flags: cached_or_built(cc, identity, flags)
    for built in [] if portable else prebuilt():
        yield lambda built=built: built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sigma_lightning.ops.build",
        description="Build the C selective scan into the kernel cache (for images and clusters).",
    )
    parser.add_argument("--portable", action="store_true",
                        help="build without -march=native: runs on any CPU of this machine type")
    args = parser.parse_args(argv)
    from sigma_lightning.ops import _cscan  # the loader checks that the library opens and fits

    try:
        built, _ = find_kernel(_cscan.open_library, portable=args.portable)
    except BuildError as e:
        print(f"sigma: error: could not build the C selective scan: {e}", file=sys.stderr)
        return 1
    m = built.manifest
    print(f"kernel: {built.path}")
    print("backend: C kernel (the fast selective scan on CPU tensors)")
    print(f"compiler: {m['compiler_path']} ({m['compiler'].splitlines()[0]})")
    print(f"flags: {' '.join(m['flags'])}")
    print(f"needs CPU features: {' '.join(m['required_cpu_features']) or '(none checked)'}")
    print(f"cache: {cache_dir('kernels')} (set SIGMA_LIGHTNING_CACHE to move it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
