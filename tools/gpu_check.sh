#!/usr/bin/env bash
# The GPU checks of mixed precision and the fused kernels, as one script for a session that is lent
# a CUDA machine (docs/precision.md, "On a GPU"). The machine has no internet: bring the kernels'
# wheels (or sdists and nvcc) and the Beauty file along. From the repository root, with the venv
# active (torch with CUDA, .[test]):
#
#   tools/gpu_check.sh [--kernels DIR] [--data BEAUTY_TXT] [--out DIR] [--steps LIST] [--steps-per-fit N]
#   tools/gpu_check.sh --cpu-dry-run [--out DIR] [--steps LIST]   # the same steps on this CPU machine
#
# Steps (--steps, comma-separated; default all, in this order): env, kernels, scan, efficiency, tests,
# fits, sigma_epoch, compile, ddp. One command may run 10 minutes and a session has 15 of device time:
# `--steps env,kernels,scan,efficiency,tests` then `--steps fits,sigma_epoch,compile,ddp` splits them.
#   env          GPU model, driver, torch and CUDA versions, what `scan_impl=auto` runs
#   kernels      install mamba_ssm / causal_conv1d from DIR: wheels with --no-deps --no-index, else
#                sdists built for sm_90 (MAMBA_FORCE_BUILD, TORCH_CUDA_ARCH_LIST=9.0, --no-build-isolation)
#   tests        the cuda-marked tests, tests/ops, tests/nn and tests/test_precision.py on this machine
#   scan         the cuda scan against the reference scan: outputs and gradients of the scan alone
#                (fp32, bf16 inputs, with/without z, L up to 2049 to cross the kernel's chunk) and
#                of a masked Mamba block, max abs differences printed
#   efficiency   benchmarks/bench_efficiency.py --device cuda (docs/efficiency.md, "On a GPU"): every
#                backbone's training throughput, inference batch and memory at the papers' setting, the
#                length sweep at batches 32 / 128; JSON, tables and plot in OUT
#   fits         bf16-mixed and 16-mixed fits of every backbone for --steps-per-fit steps (default 300,
#                in epochs of 50 batches)
#                without NaN: a finite loss at every step (sigma's guard stops on one) and finite weights
#   sigma_epoch  one Beauty SIGMA epoch with scan_impl=cuda and one with fast: epoch time, val metrics
#   compile      benchmarks/bench_compile.py --device cuda: every Mamba backbone and SASRec eager and with
#                model.compile (inductor), batch 2048; JSON in OUT
#   ddp          with two or more GPUs, a 2-GPU DDP fit and test (gloo-free: nccl)
# Every step writes its log to OUT/<step>.log and a PASS/FAIL/SKIP line to OUT/summary.txt; the exit
# status is 1 if any step failed.
#
# --cpu-dry-run runs the same steps on a CPU: the scan step with tests/ops/test_cuda_plumbing.py's
# stand-ins as the kernels (mamba_ssm's selective_scan_ref and causal-conv1d's causal_conv1d_ref behind
# the kernels' signatures), the fits with bf16-mixed on tiny synthetic data and 16-mixed expected to be
# refused with sigma's one-line error, tests on the CPU (cuda-marked ones skip), the two benchmarks on
# the CPU at toy sizes (compile with aot_eager); kernels, sigma_epoch and ddp are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0 KERNELS="" DATA="" OUT="" STEPS="env,kernels,scan,efficiency,tests,fits,sigma_epoch,compile,ddp" FIT_STEPS=300
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1 ;;
    --kernels) KERNELS="$2"; shift ;;
    --data) DATA="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --steps) STEPS="$2"; shift ;;
    --steps-per-fit) FIT_STEPS="$2"; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-runs/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
FAILED=0
export DRY OUT FIT_STEPS DATA PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

wanted() { [[ ",$STEPS," == *",$1,"* ]]; }
record() {  # record <step> <status> <note>
  echo "$1: $2${3:+ ($3)}" | tee -a "$SUMMARY"
  [ "$2" = FAIL ] && FAILED=1
  return 0
}
run_step() {  # run_step <step> <command...>: PASS on exit status 0
  local step="$1"; shift
  local start=$SECONDS
  if "$@" > "$OUT/$step.log" 2>&1; then record "$step" PASS "$((SECONDS - start)) s"
  else record "$step" FAIL "$((SECONDS - start)) s, see $OUT/$step.log"; fi
}

step_env() {
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python - <<'EOF'
import os, platform, torch
from sigma_lightning.ops.selective_scan import scan_backend_report
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version(), "| GPUs", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print(f"  cuda:{i}", torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
for pkg in ("mamba_ssm", "causal_conv1d", "triton"):
    try:
        print(pkg, __import__(pkg).__version__)
    except Exception as e:
        print(pkg, "does not import:", type(e).__name__, e)
device = "cpu" if os.environ["DRY"] == "1" else "cuda"
print(scan_backend_report(device, "auto"))
EOF
}

step_kernels() {
  [ -n "$KERNELS" ] || { echo "no --kernels DIR given"; return 1; }
  if ls "$KERNELS"/mamba_ssm-*.whl > /dev/null 2>&1; then
    pip install --no-deps --no-index "$KERNELS"/causal_conv1d-*.whl "$KERNELS"/mamba_ssm-*.whl || return 1
  else  # sdists, built here for the H200 only (sm_90), with this machine's torch and nvcc
    MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS="$(nproc)" \
      pip install --no-deps --no-index --no-build-isolation -v \
      "$KERNELS"/causal_conv1d-*.tar.gz "$KERNELS"/mamba_ssm-*.tar.gz || return 1
  fi
  python -c "
from sigma_lightning.ops._cuda import cuda_kernels
k = cuda_kernels()
print('selective_scan_fn:', k.selective_scan_fn, '| causal_conv1d_fn:', k.causal_conv1d_fn, '| error:', k.error)
assert k.extension is not None and k.causal_conv1d_fn is not None, 'the kernels do not import'"
}

step_tests() {
  python -m pytest -q -p no:cacheprovider -m cuda -rs tests || [ $? -eq 5 ] || return 1  # 5: none collected
  python -m pytest -q -p no:cacheprovider -x tests/ops tests/nn tests/test_precision.py
}

step_scan() {
  python - <<'EOF'
"""cuda scan vs the reference scan (outputs, gradients), the scan alone and a masked Mamba block."""
import os
import torch
from sigma_lightning import Mamba
from sigma_lightning.ops import _cuda
from sigma_lightning.ops.selective_scan import selective_scan

if os.environ["DRY"] == "1":  # the kernels' stand-ins (their signatures, checks, mamba_ssm's own references)
    from sigma_lightning.nn import mamba as mamba_file
    from tests.ops.test_cuda_plumbing import SelectiveScanExtension, causal_conv1d_fn
    kernels = _cuda.CudaKernels(object(), causal_conv1d_fn, SelectiveScanExtension(), False, None)
    _cuda.cuda_kernels = mamba_file.cuda_kernels = lambda: kernels
    _cuda.cuda_error = lambda device: None
    device, lengths = torch.device("cpu"), (1, 7, 50)
else:
    device, lengths = torch.device("cuda"), (1, 7, 50, 200, 2049)  # 2049: two of the kernel's chunks
torch.manual_seed(0)

def inputs(b, d, L, n, dtype, has_z):
    r = lambda *s: torch.randn(*s, device=device).to(dtype).requires_grad_()
    return dict(u=r(b, d, L), delta=(0.5 * torch.rand(b, d, L, device=device) - 1).to(dtype).requires_grad_(),
                A=(-torch.exp(0.5 * torch.randn(d, n, device=device))).requires_grad_(), B=r(b, n, L), C=r(b, n, L),
                D=torch.randn(d, device=device, requires_grad=True), z=r(b, d, L) if has_z else None,
                delta_bias=torch.randn(d, device=device, requires_grad=True))

for dtype in (torch.float32, torch.bfloat16):
    for has_z in (True, False):
        for L in lengths:
            x = inputs(2, 16, L, 8, dtype, has_z)
            leaves = [t for t in x.values() if t is not None]
            outs, grads = {}, {}
            for impl in ("cuda", "reference"):
                out, last = selective_scan(**x, delta_softplus=True, return_last_state=True, impl=impl)
                outs[impl] = (out.float(), last.float())
                grads[impl] = torch.autograd.grad(out.float().square().sum(), leaves)
            rel = lambda a, b: ((a - b).abs().max() / b.abs().max().clamp(min=1)).item()  # noqa: E731
            d_out = rel(outs["cuda"][0], outs["reference"][0])
            d_last = rel(outs["cuda"][1], outs["reference"][1])
            d_grad = max(((g - h).abs().max() / h.abs().max().clamp(min=1)).item()
                         for g, h in zip(grads["cuda"], grads["reference"]))
            tol = 1e-3 if dtype == torch.float32 else 2e-2  # bf16: outputs and gradients rounded to bf16
            print(f"scan {str(dtype):15} z={has_z!s:5} L={L:5}: max differences relative to max(1, max|reference|):"
                  f" out {d_out:.2e}, last state {d_last:.2e}, gradients {d_grad:.2e}")
            assert max(d_out, d_last, d_grad) < tol, (dtype, has_z, L)

torch.manual_seed(0)
block = Mamba(64, d_state=32, scan_impl="reference").to(device)
cuda_block = Mamba(64, d_state=32, scan_impl="cuda").to(device)
cuda_block.load_state_dict(block.state_dict())
h = torch.randn(8, 50, 64, device=device, requires_grad=True)
mask = torch.arange(50, device=device).expand(8, 50) >= torch.randint(0, 50, (8, 1), device=device)  # left padding
results = {}
for name, b in (("reference", block), ("cuda", cuda_block)):
    out = b(h, mask)
    results[name] = (out, torch.autograd.grad(out.square().sum(), [h, *b.parameters()]))
d_out = (results["cuda"][0] - results["reference"][0]).abs().max().item()
d_grad = max(((g - r).abs().max() / r.abs().max().clamp(min=1)).item()
             for g, r in zip(results["cuda"][1], results["reference"][1]))
print(f"Mamba block (d_model 64, d_state 32, L 50, masked): max|out| diff {d_out:.2e}, gradients {d_grad:.2e}")
assert d_out < 1e-3 and d_grad < 1e-3
print("scan: cuda equals reference" + (" (stand-in kernels on the CPU)" if os.environ["DRY"] == "1" else ""))
EOF
}

step_fits() {
  python - <<'EOF'
"""bf16-mixed and 16-mixed fits of every backbone: finite loss at every step and finite weights."""
import math, os, sys, tempfile
import torch
from sigma_lightning.cli import SigmaExit, run_sigma

dry = os.environ["DRY"] == "1"
steps = 20 if dry else int(os.environ["FIT_STEPS"])
per_epoch = 10 if dry else 50  # Beauty has 65 full batches an epoch, the synthetic set more
steps = max(1, steps // per_epoch) * per_epoch
out = os.environ["OUT"]
data = os.environ.get("DATA")
if dry or not data:  # synthetic: the same everywhere, no file needed
    source = ["--data.path", "synthetic", "--data.synthetic.num_users", "400" if dry else "20000",
              "--data.synthetic.num_items", "60" if dry else "5000", "--data.max_seq_len", "20" if dry else "50",
              "--data.batch_size", "64" if dry else "512"]
else:
    source = ["--data.path", data, "--data.bucket_by_length", "true"]
backbones = {
    "sasrec": ["--model.backbone.init_args.max_seq_len", "20" if dry else "50"],
    "gru4rec": [],
    "mamba4rec": [],
    "echomamba4rec": ["--model.backbone.init_args.filter_len", "64" if dry else "128"],
    "sigma": [],
}
failures = []
for precision in ("bf16-mixed", "16-mixed"):
    for name, extra in backbones.items():
        args = ["fit", "--config", f"beauty/{name}.yaml", *source, *extra, "--trainer.precision", precision,
                # whole epochs of `per_epoch` batches, each validated (early stopping needs its metric)
                "--trainer.limit_train_batches", str(per_epoch), "--trainer.max_epochs", str(steps // per_epoch),
                "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "4",
                "--trainer.accelerator", "cpu" if dry else "gpu", "--trainer.devices", "1",
                "--trainer.enable_progress_bar", "false",
                "--trainer.default_root_dir", os.path.join(out, "fits", f"{name}-{precision}")]
        if dry and name in ("mamba4rec", "echomamba4rec", "sigma"):
            args += ["--model.backbone.init_args.hidden_size", "16", "--model.backbone.init_args.mamba.d_state", "4"]
        try:
            cli = run_sigma(args)
        except SigmaExit as e:
            if dry and precision == "16-mixed" and "needs a GPU" in str(e) and "bf16-mixed" in str(e):
                print(f"{name} {precision}: refused on the CPU as it should be: {e}")
                continue
            failures.append(f"{name} {precision}: {e}")
            continue
        loss = float(cli.trainer.callback_metrics.get("train/loss_step", float("nan")))
        bad = [n for n, p in cli.model.named_parameters() if not torch.isfinite(p).all()]
        ok = math.isfinite(loss) and not bad and cli.trainer.global_step == steps
        print(f"{name} {precision}: {cli.trainer.global_step} steps, last loss {loss:.4f}, "
              f"val NDCG@10 {float(cli.trainer.callback_metrics.get('val/NDCG@10', float('nan'))):.4f}, "
              f"non-finite weights: {bad or 'none'} -> {'ok' if ok else 'FAILED'}")
        if not ok:
            failures.append(f"{name} {precision}")
if failures:
    sys.exit("fits failed: " + "; ".join(failures))
EOF
}

step_sigma_epoch() {
  [ -n "$DATA" ] || { echo "no --data BEAUTY_TXT given"; return 1; }
  for impl in cuda fast; do
    echo "== scan_impl=$impl"
    sigma fit --config beauty/sigma.yaml --data.path "$DATA" --trainer.max_epochs 1 \
      --model.backbone.init_args.mamba.scan_impl "$impl" --trainer.enable_progress_bar false \
      --trainer.default_root_dir "$OUT/sigma_epoch/$impl" || return 1
  done
}

step_efficiency() {
  if [ "$DRY" = 1 ]; then
    python benchmarks/bench_efficiency.py --device cpu --threads 1 --backbones sasrec sigma --lengths 20 40 \
      --paper-length 20 --paper-batch 32 --sweep-train-batch 2 --sweep-infer-batch 4 --num-items 200 --repeats 1 \
      --json "$OUT/efficiency.json" --markdown "$OUT/efficiency.md" --plot "$OUT/efficiency.png"
  else
    python benchmarks/bench_efficiency.py --device cuda --repeats 5 --sweep-train-batch 32 --sweep-infer-batch 128 \
      --json "$OUT/efficiency-cuda.json" --markdown "$OUT/efficiency-cuda.md" --plot "$OUT/efficiency-cuda.png"
  fi
}

step_compile() {
  if [ "$DRY" = 1 ]; then
    python benchmarks/bench_compile.py --device cpu --backbones sasrec --batch-size 16 --seq-len 10 --num-items 50 \
      --steps 1 --backend aot_eager --json "$OUT/compile.json"
  else
    python benchmarks/bench_compile.py --device cuda --backbones sasrec mamba4rec echomamba4rec sigma \
      --batch-size 2048 --steps 5 --json "$OUT/compile-cuda.json"
  fi
}

step_ddp() {
  local gpus
  gpus=$(python -c "import torch; print(torch.cuda.device_count())")
  [ "$gpus" -ge 2 ] || { echo "$gpus GPU(s): no DDP check"; return 3; }
  sigma fit --config quickstart.yaml --trainer.strategy ddp --trainer.devices 2 --trainer.max_epochs 2 \
    --trainer.enable_progress_bar false --trainer.default_root_dir "$OUT/ddp" &&
    sigma test --config quickstart.yaml --trainer.strategy ddp --trainer.devices 2 \
      --trainer.default_root_dir "$OUT/ddp" --ckpt_path last
}

for step in env kernels scan efficiency tests fits sigma_epoch compile ddp; do
  wanted "$step" || continue
  if [ "$DRY" = 1 ] && [[ "$step" =~ ^(kernels|sigma_epoch|ddp)$ ]]; then
    record "$step" SKIP "CPU dry run: needs the GPU machine"; continue
  fi
  if [ "$step" = ddp ]; then
    step_ddp > "$OUT/ddp.log" 2>&1; rc=$?
    if [ $rc -eq 3 ]; then record ddp SKIP "fewer than two GPUs"
    elif [ $rc -eq 0 ]; then record ddp PASS
    else record ddp FAIL "see $OUT/ddp.log"; fi
    continue
  fi
  run_step "$step" "step_$step"
done
echo "summary: $SUMMARY"
exit $FAILED
