#!/usr/bin/env bash
# The GPU check in one call, for a GPU machine with no Rust toolchain and no network. Run it from
# the repository root, with the bundle of scripts/gpu-bundle.sh present:
#
#   scripts/gpu-check.sh OUTDIR [--dry] [--budget SECONDS] [--only STEPS]
#
# Steps, in order, each with a timeout and skipped when the budget (default 420 s) runs short:
#   card      nvidia-smi: name, driver, memory
#   tests     every test executable of the bundle with --include-ignored (the GPU tests too); the
#             first two that fail run again with CUDA_LAUNCH_BLOCKING=1 (own logs, 90 s at most),
#             so that a kernel fault names its launch
#   parity    `lrc parity` + scripts/torch_reference.py --check (float64 PyTorch on the CPU)
#   bench     `lrc bench conv --algo VERSION` for every version, one process each (a faulting
#             kernel loses its own version's figures alone), and scripts/torch_bench.py (cuDNN,
#             TF32 and BF16) on the same shapes, each lrc version against cuDNN at its operand precision
#   memcheck  compute-sanitizer memcheck over `lrc bench conv` on tiny, odd shapes, every algorithm
#   memcheck norm  the same over `lrc bench norm` on shapes that take every instance-norm launch
#   memcheck step  the same over one whole U-Net training step (`lrc bench step`, tiny shapes)
#   memcheck lrc-loss   the same over `lrc bench lrc-loss` (the fused local loss) on tiny shapes
#   bench step  `lrc bench step` (the default convolution version, whatever LRC_CONV_ALGO says
#             outside) and scripts/torch_reference.py --bench step (eager), same U-Net; then
#             `lrc bench step` again with BF16 operands (LRC_CONV_ALGO=bf16-mma-halo) and with
#             the fastest TF32 version per pass (LRC_CONV_ALGO=tf32-fastest)
#   demo quick  `lrc demo --quick --device cuda --profile`: the whole pipeline on the GPU
#             (synthesis, stores with superpixel regions, MoCo and LRC pre-training, fine-tuning
#             from four initialisations, prediction, evaluation, plots); its tables in the summary
#   bench batch  `lrc bench batch`: the host's milliseconds per training batch, per stage
#   bench pretrain  `lrc pretrain global|local|joint` as a user runs it (batch 16, 256 x 256
#             crops, the thesis U-Net) on a synthetic store with superpixel regions (`lrc synth`,
#             `lrc prep --regions`): 110 steps each, the steady ms per step (steps 10 to 110,
#             from the run's own metrics), beside the host's batch for the same stage; then 30
#             steps of each under --profile, their tables in logs/bench-pretrain.log
#   bench pretrain step  `lrc bench step --method global|local|joint`: the same steps queued as
#             `lrc pretrain` queues them, on a batch already on the device (64 grid regions of
#             32 samples), the loss not read back
#   bench pretrain torch  scripts/torch_reference.py --bench pretrain --method global|local|joint:
#             the same steps in PyTorch eager on a batch already on the device, likewise
#   bench norm  `lrc bench norm` (instance norm + ReLU) and scripts/torch_bench.py --bench norm
#   bench lrc-loss      `lrc bench lrc-loss` and scripts/torch_reference.py --bench lrc-loss
#             (the same loss in plain PyTorch) on the same cases, FP32 and BF16 embeddings, each
#             lrc type against PyTorch at the same type
#   bench superpixels  `lrc bench superpixels` (Felzenszwalb slices per second, GPU and CPU,
#             batch 32 at 256 x 256 and 512 x 512, with and without the CT clean-up)
#   bench superpixels skimage  scikit-image's felzenszwalb per slice at 256 and 512, one core
#             (scripts/bench_felzenszwalb_skimage.py), for the GPU's speed-up over it
#   bench step torch.compile  the PyTorch step compiled (compiling takes a minute or more)
#   ncu step  Nsight Compute over one `lrc bench step` (same U-Net, the default convolution
#             version): per-kernel share, SM / memory / DRAM throughput against the card's
#             peak, registers, occupancy (scripts/ncu_table.py)
# OUTDIR gets summary.md (tests per executable, each benchmark's lrc and PyTorch medians and their
# ratio, the superpixel throughputs, what was skipped) and logs/ with the full output of every step.
#
# --only STEPS: a comma-separated list of the steps to run, by the names above and in the
# summary's steps table ("tests" for the test executables; "bench step lrc", "demo quick", ...);
# the others do not run and are not tabled. For a second call that checks a change without
# spending the budget on figures already taken.
# --dry, or no nvidia-smi: runs only what needs no GPU (the tests without --include-ignored, the
# parity check where python3 imports torch and safetensors) and reports the GPU steps as not run.
# Exit status: 0 when everything that ran passed, 1 otherwise, 2 for bad usage.
#
# Environment: LRC_BUNDLE (default gpu-bundle), LRC_PYTHON (the python3 with torch; default
# python3), LRC_TEST_TIMEOUT (seconds per test executable, default 150), LRC_BENCH_ARGS (shapes
# for both convolution benchmarks; default the U-Net of the thesis: batch 16, 256 x 256, base 32,
# depth 5), LRC_LOSS_BENCH_ARGS (options of both lrc-loss benchmarks; default their own cases,
# batch 16, D 32 and 64, K 64 and 256, N 32, 256 x 256, FP32 and BF16 embeddings, with 20
# repeats after 3 warm-up runs; --dtype f32|bf16 narrows both to one type).
set -uo pipefail

usage() {
    echo "usage: scripts/gpu-check.sh OUTDIR [--dry] [--budget SECONDS] [--only STEPS]" >&2
    exit 2
}

out=""
dry=0
dry_reason="--dry"
budget=420
only=""
while (($#)); do
    case "$1" in
        --dry) dry=1 ;;
        --budget)
            [[ "${2:-}" =~ ^[0-9]+$ ]] || usage
            budget="$2"
            shift
            ;;
        --only)
            [[ -n "${2:-}" ]] || usage
            only=",$2,"
            shift
            ;;
        -h | --help) usage ;;
        -*) usage ;;
        *)
            [[ -z "$out" ]] || usage
            out="$1"
            ;;
    esac
    shift
done
[[ -n "$out" ]] || usage

start=$SECONDS
repo="$(pwd -P)"
bundle="${LRC_BUNDLE:-gpu-bundle}"
python="${LRC_PYTHON:-python3}"
test_timeout="${LRC_TEST_TIMEOUT:-150}"
bench_args="${LRC_BENCH_ARGS:---batch 16 --size 256 --base 32 --depth 5 --repeats 20 --warmup 3}"
read -r -a bench_argv <<< "$bench_args"
loss_bench_args="${LRC_LOSS_BENCH_ARGS:---repeats 20 --warmup 3}"
read -r -a loss_bench_argv <<< "$loss_bench_args"
# The convolution versions, as ConvAlgo::ALL lists them (tests/gpu_check_script.rs checks).
CONV_VERSIONS="fp32-tiled tf32-mma bf16-mma tf32-wgmma bf16-wgmma tf32-mma-tap bf16-mma-tap tf32-mma-wide bf16-mma-wide tf32-mma-halo bf16-mma-halo"

if [[ ! -f "$bundle/bin.tar.xz" && ! -f "$bundle/bin/lrc" ]]; then
    echo "gpu-check: no bundle at $bundle (build it with scripts/gpu-bundle.sh, carry it, or set LRC_BUNDLE)" >&2
    exit 2
fi
bundle="$(cd "$bundle" && pwd -P)"
mkdir -p "$out" || exit 2
out="$(cd "$out" && pwd -P)"
# What a previous check left: appended JSON lines would mix runs, and a skipped step would show
# the old figures as this run's.
rm -rf "$out/logs" "$out/summary.md"
rm -f "$out"/*.jsonl "$out/ncu-step.csv" "$out/parity.safetensors" "$out/demo-tables.md" "$out/demo-results.json"
mkdir -p "$out/logs"
logs="$out/logs"

if ((!dry)) && ! command -v nvidia-smi > /dev/null; then
    dry=1
    dry_reason="nvidia-smi not found"
fi

failed=0
test_rows=()   # markdown rows of the tests table
step_rows=()   # markdown rows of the steps table
skipped=()     # what was skipped, and why
notes=()       # anything else worth knowing
failures=()    # test executables that did not pass, with their failed tests
cleanup=()     # links made for the tests, removed at exit
unpacked=""    # where the executables were unpacked, removed at exit

elapsed() { echo $((SECONDS - start)); }
# wanted NAME: whether --only (if given) names this step.
wanted() {
    [[ -z "$only" || "$only" == *",$1,"* ]]
}
[[ -z "$only" ]] || notes+=("--only: the steps asked for were ${only:1:-1}; no other ran")
# Seconds of the budget left, never below zero.
left() {
    local l=$((budget - (SECONDS - start)))
    echo $((l > 0 ? l : 0))
}
say() { echo "gpu-check [$(elapsed)s] $*"; }
min() { echo $(($1 < $2 ? $1 : $2)); }

# timed LOG SECONDS CMD...: runs CMD under a timeout with its output in LOG; sets `rc` and `took`.
timed() {
    local log="$1" limit="$2" t0=$SECONDS
    shift 2
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1 < /dev/null
    rc=$?
    took=$((SECONDS - t0))
}

# A symbolic link LINK -> TARGET made for this run, and the folders made to hold it, go at exit.
make_link() {
    local target="$1" link="$2" top="" d
    d="$(dirname "$link")"
    while [[ ! -e "$d" ]]; do
        top="$d"
        d="$(dirname "$d")"
    done
    mkdir -p "$(dirname "$link")" 2> /dev/null || return 1
    cleanup+=("$link|$top")
    ln -s "$target" "$link" 2> /dev/null
}

# shellcheck disable=SC2317 # called by the EXIT trap
remove_links() {
    local i entry link top d
    # Last made first: a link may lie under an earlier one.
    for ((i = ${#cleanup[@]} - 1; i >= 0; i--)); do
        entry="${cleanup[i]}"
        link="${entry%%|*}"
        top="${entry#*|}"
        [[ -L "$link" ]] && rm -f "$link"
        if [[ -n "$top" ]]; then
            d="$(dirname "$link")"
            while [[ "$d" == "$top" || "$d" == "$top"/* ]]; do
                rmdir "$d" 2> /dev/null || break
                d="$(dirname "$d")"
            done
        fi
    done
}
trap 'remove_links; [[ -z "$unpacked" ]] || rm -rf "$unpacked"' EXIT

# The executables: packed by gpu-bundle.sh (unpacked here into a temporary folder, so that the
# bundle stays small enough to travel), or a plain bin/ folder.
bin="$bundle/bin"
if [[ -f "$bundle/bin.tar.xz" ]]; then
    unpacked="$(mktemp -d)"
    if command -v xz > /dev/null; then
        tar -C "$unpacked" -xJf "$bundle/bin.tar.xz"
    else
        python3 -m tarfile -e "$bundle/bin.tar.xz" "$unpacked"
    fi || {
        echo "gpu-check: cannot unpack $bundle/bin.tar.xz" >&2
        exit 2
    }
    bin="$unpacked/bin"
fi
chmod +x "$bin"/* 2> /dev/null

# Tests locate fixtures through the crate root and the lrc binary through the target folder of
# the build machine, both compiled in (env!). When this tree sits elsewhere, link those paths here.
fix_build_paths() {
    [[ -f "$bundle/BUILD" ]] || return 0
    local manifest_dir bin_exe
    manifest_dir="$(sed -n 's/^manifest_dir=//p' "$bundle/BUILD")"
    bin_exe="$(sed -n 's/^bin_exe_lrc=//p' "$bundle/BUILD")"
    if [[ -n "$manifest_dir" ]]; then
        if [[ -e "$manifest_dir" ]]; then
            if [[ "$(cd "$manifest_dir" && pwd -P)" != "$repo" ]]; then
                notes+=("tests read their files under the build-time root $manifest_dir, which is not this tree ($repo)")
            fi
        elif make_link "$repo" "$manifest_dir"; then
            notes+=("linked the build-time root $manifest_dir to this tree ($repo) for the tests")
        else
            notes+=("could not link the build-time root $manifest_dir to $repo: tests that read fixtures fail")
        fi
    fi
    if [[ -n "$bin_exe" && ! -e "$bin_exe" ]]; then
        if make_link "$bin/lrc" "$bin_exe"; then
            notes+=("linked the build-time lrc path $bin_exe to the bundle's lrc for the tests")
        else
            notes+=("could not link $bin_exe to the bundle's lrc: tests that run lrc fail")
        fi
    fi
    # Build outputs named by path in the tests (the ptxas report), kept by the bundle.
    local file
    while read -r file; do
        [[ -n "$file" && ! -e "$file" && -f "$bundle/files$file" ]] || continue
        make_link "$bundle/files$file" "$file" ||
            notes+=("could not link the build-time file $file to the bundle's copy: tests that read it fail")
    done < <(sed -n 's/^file=//p' "$bundle/BUILD")
}

# --- card ---------------------------------------------------------------------------------------
card="no GPU ($dry_reason)"
if ((!dry)); then
    say "nvidia-smi"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$logs/card.csv"
    nvidia-smi > "$logs/nvidia-smi.txt" 2>&1
    card="$(sed -n '2p' "$logs/card.csv")"
    if [[ -z "$card" ]]; then
        card="nvidia-smi gave no GPU"
        failed=1
    fi
fi

bundle_commit="$(head -n 2 "$bundle/COMMIT" 2> /dev/null | paste -sd ' ' -)"
tree_commit="$(git -C "$repo" rev-parse HEAD 2> /dev/null || true)"
if [[ -n "$tree_commit" && -n "$bundle_commit" && "${bundle_commit%% *}" != "$tree_commit"* ]]; then
    notes+=("the bundle was built from ${bundle_commit%% *}, this tree is at $tree_commit")
fi
if [[ "${bundle_commit%% *}" == *-dirty ]]; then
    notes+=("the bundle was built from a tree with uncommitted changes")
fi

fix_build_paths
if [[ ! -f "$repo/sample-ct/totalseg/dataset.json" ]]; then
    export LRC_SKIP_SAMPLE_CT=1
    notes+=("sample-ct/ is not in this tree: the sample-CT tests ran with LRC_SKIP_SAMPLE_CT=1 and checked nothing")
fi
export RUST_BACKTRACE=1
if ((!dry)); then
    # The emulated kernel tests are CPU work that CI has done: the GPU's time goes to the same
    # kernels on the hardware.
    export LRC_EMULATOR=off
    notes+=("the emulated kernel tests were skipped (LRC_EMULATOR=off): CI runs them; the GPU tests run the same kernels here")
fi

# --- tests --------------------------------------------------------------------------------------
test_args=()
((dry)) || test_args=(--include-ignored)
total_passed=0
total_failed=0
blocking_reruns=0
total_ignored=0
for exe in "$bin"/*; do
    wanted tests || break
    name="$(basename "$exe")"
    [[ "$name" == lrc ]] && continue
    if (($(left) < 20)); then
        skipped+=("test executable $name: budget spent")
        test_rows+=("| $name | | | | | skipped (budget) |")
        continue
    fi
    say "tests: $name ${test_args[*]}"
    log="$logs/test-$name.log"
    timed "$log" "$(min "$test_timeout" $(($(left) - 5)))" "$exe" "${test_args[@]}"
    result="$(grep -a '^test result:' "$log" | tail -n 1)"
    passed="$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<< "$result")"
    nfailed="$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<< "$result")"
    ignored="$(sed -nE 's/.* ([0-9]+) ignored.*/\1/p' <<< "$result")"
    total_passed=$((total_passed + ${passed:-0}))
    total_failed=$((total_failed + ${nfailed:-0}))
    total_ignored=$((total_ignored + ${ignored:-0}))
    if ((rc == 124 || rc == 137)); then
        status="TIMEOUT"
    elif ((rc == 0)) && [[ "$result" == "test result: ok."* ]]; then
        status="ok"
    elif [[ "$result" == "test result: FAILED."* ]]; then
        status="FAILED"
    else
        status="CRASHED (exit $rc, no result line)"
    fi
    if [[ "$status" != ok ]]; then
        failed=1
        # The failed tests by name, and any that libtest saw running for over a minute.
        names="$(sed -nE 's/^test (.*) \.\.\. FAILED$/\1/p; s/^test (.*) has been running for over .*/\1 (slow)/p' "$log" |
            paste -sd ',' - | sed 's/,/, /g')"
        failures+=("$name: $status${names:+: $names}")
    fi
    test_rows+=("| $name | ${passed:-} | ${nfailed:-} | ${ignored:-} | $took | $status |")
    say "  $status: ${passed:-?} passed, ${nfailed:-?} failed, ${ignored:-?} ignored (${took}s)"
    # A kernel fault surfaces at the next wait on the stream, under whichever launch comes then;
    # with launches made synchronous the failing launch reports it under its own name. The first
    # two failing executables only, at most 90 s each, so that the benchmarks keep their time.
    if [[ "$status" != ok ]] && ((!dry && blocking_reruns < 2 && $(left) > 120)); then
        blocking_reruns=$((blocking_reruns + 1))
        blocking_log="$logs/test-$name-launch-blocking.log"
        say "  rerunning $name with CUDA_LAUNCH_BLOCKING=1 (log: $blocking_log)"
        timed "$blocking_log" "$(min 90 $(($(left) - 30)))" env CUDA_LAUNCH_BLOCKING=1 "$exe" "${test_args[@]}"
        notes+=("$name failed: rerun with CUDA_LAUNCH_BLOCKING=1 in logs/$(basename "$blocking_log") (exit $rc, ${took}s)")
    fi
done

# The last line a failed step printed, for the summary; the whole output is in its log.
last_line() {
    grep -av '^[[:space:]]*$' "$1" | tail -n 1 | cut -c 1-200 | tr '|' '/'
}

# step NAME STATUS SECONDS DETAIL: a row of the steps table.
step() {
    step_rows+=("| $1 | $2 | $3 | $4 |")
    say "$1: $2 $4"
}

# enough NAME SECONDS: whether at least SECONDS of the budget are left; records the skip if not.
enough() {
    wanted "$1" || return 1
    if (($(left) < $2)); then
        skipped+=("$1: $(left) s of the budget left, it needs about $2 s")
        step "$1" "skipped (budget)" "" ""
        return 1
    fi
}

# bench_run NAME NEED LIMIT LOG CMD...: a benchmark step when NEED seconds are left, at most
# LIMIT seconds; the detail is the lines of its log that start with `total` or `median`.
bench_run() {
    local name="$1" need="$2" limit="$3" log="$4"
    shift 4
    enough "$name" "$need" || return 0
    timed "$log" "$(min "$limit" "$(left)")" "$@"
    if ((rc == 0)); then
        step "$name" passed "$took" "$(grep -a -E '^(total|median|superpixels |batch: |slice )' "$log" | paste -sd ';' -)"
    else
        failed=1
        step "$name" "FAILED (exit $rc)" "$took" "$(last_line "$log") ($(basename "$log"))"
    fi
}

# pretrain_rates DIR JSON: writes to JSON a line per method whose metrics DIR/METHOD.jsonl holds,
# with its steady ms per step: the elapsed time from step 10 to the last, over those steps (the
# first steps load modules and fill the allocator's cache); prints them on one line.
pretrain_rates() {
    python3 - "$1" "$2" << 'PY'
import json, os, sys

said = []
out = open(sys.argv[2], "w")
for method in ("global", "local", "joint"):
    path = os.path.join(sys.argv[1], method + ".jsonl")
    if not os.path.exists(path):
        continue
    at = {r["step"]: r["elapsed_s"] for r in map(json.loads, open(path)) if r.get("kind") == "step"}
    last = max(at, default=0)
    if last <= 10:
        continue
    ms = (at[last] - at[10]) * 1000.0 / (last - 10)
    print(json.dumps({"bench": "pretrain", "method": method, "batch": 16, "crop": 256, "steps": last,
                      "ms_per_step": ms, "first_step_s": at.get(1)}), file=out)
    said.append(f"{method} {ms:.2f} ms/step")
print("; ".join(said))
PY
}

# --- parity -------------------------------------------------------------------------------------
torch_ref="$bundle/scripts/torch_reference.py"
[[ -f "$torch_ref" ]] || torch_ref="$repo/scripts/torch_reference.py"
ncu_table="$bundle/scripts/ncu_table.py"
[[ -f "$ncu_table" ]] || ncu_table="$repo/scripts/ncu_table.py"
skimage_bench="$bundle/scripts/bench_felzenszwalb_skimage.py"
[[ -f "$skimage_bench" ]] || skimage_bench="$repo/scripts/bench_felzenszwalb_skimage.py"
if ! "$python" -c 'import torch, safetensors' > /dev/null 2>&1; then
    skipped+=("parity: $python cannot import torch and safetensors")
    step parity "skipped (no torch)" "" ""
elif enough parity 30; then
    say "parity"
    # shellcheck disable=SC2016 # the inner script expands its own arguments
    timed "$logs/parity.log" "$(min 150 "$(left)")" bash -c \
        '"$1" parity --out "$2" && "$3" "$4" --check "$2"' _ \
        "$bin/lrc" "$out/parity.safetensors" "$python" "$torch_ref"
    worst="$(grep -a 'worst relative error' "$logs/parity.log" | tail -n 1)"
    if ((rc == 0)); then
        step parity passed "$took" "$worst"
    else
        failed=1
        step parity "FAILED (exit $rc)" "$took" "${worst:-$(last_line "$logs/parity.log")} (logs/parity.log)"
    fi
fi

# --- GPU steps ----------------------------------------------------------------------------------
if ((dry)); then
    for s in "bench lrc" "bench torch" memcheck "memcheck norm" "memcheck step" "memcheck lrc-loss" "bench step lrc" \
        "bench step torch" "bench step lrc bf16" "bench step lrc fastest" "demo quick" "bench batch" "bench pretrain" "bench pretrain step" "bench pretrain torch" \
        "bench norm lrc" "bench norm torch" "bench lrc-loss lrc" "bench lrc-loss torch" \
        "bench superpixels" "bench superpixels skimage" "bench step torch.compile" "ncu step"; do
        step "$s" "not run (no GPU)" "" ""
    done
else
    # The convolutions first, every version against cuDNN: the figures the convolution kernels
    # are judged by, before the sanitizer runs and the other benchmarks spend the budget.
    torch_bench="$bundle/scripts/torch_reference.py"
    [[ -f "$torch_bench" ]] || torch_bench="$repo/scripts/torch_reference.py"
    # One process per version (ConvAlgo::ALL's order, as `--algo all` runs them), so that a
    # version whose kernel faults (a sticky error ends its process) loses its own figures alone.
    # shellcheck disable=SC2016 # the inner script expands its own arguments
    bench_run "bench lrc" 60 180 "$logs/bench-lrc.log" bash -c '
        lrc="$1" json="$2" status=0
        shift 2
        : > "$json"
        for algo in '"$CONV_VERSIONS"'; do
            "$lrc" bench conv --algo "$algo" "$@" --json "$json.$algo" || { rc=$?; ((status)) || status=$rc; }
            [[ -f "$json.$algo" ]] && cat "$json.$algo" >> "$json" && rm -f "$json.$algo"
        done
        exit "$status"' bench-lrc "$bin/lrc" "$out/bench-lrc.jsonl" "${bench_argv[@]}"
    bench_run "bench torch" 60 180 "$logs/bench-torch.log" \
        "$python" "$torch_bench" --bench conv "${bench_argv[@]}" --json "$out/bench-torch.jsonl"
    sanitizer="$(command -v compute-sanitizer || true)"
    [[ -n "$sanitizer" || ! -x /usr/local/cuda/bin/compute-sanitizer ]] || sanitizer=/usr/local/cuda/bin/compute-sanitizer
    if [[ -z "$sanitizer" ]]; then
        skipped+=("memcheck: compute-sanitizer not found")
        step memcheck "skipped (no compute-sanitizer)" "" ""
    elif enough memcheck 45; then
        # Batch 3, 18 x 18 and 9 x 9 planes, 1, 3, 8 and 16 channels: every tile is partly
        # outside the tensors, where out-of-bounds accesses would be. Then the tap-major
        # kernels, which need channels in multiples of 32 (the wide ones 128 columns): 64 and
        # 128 channels on 10 x 10 and 5 x 5 planes, through the wide versions (which run the
        # other tap-major kernels where a pass has fewer columns); then the halo-tile kernels,
        # which need widths of 32 or 16: 64 x 64 with 32 channels, 32 x 32 with 64 and 16 x 16
        # with 128 (forward and backward-data in two blocks of 64 output channels). The first
        # failure's status.
        # shellcheck disable=SC2016 # expanded by the inner shell
        timed "$logs/memcheck.log" "$(min 150 "$(left)")" bash -c '
            sanitize() { "$sanitizer" --tool memcheck --error-exitcode 3 "$lrc" bench conv --batch 3 --classes 3 \
                --repeats 1 --warmup 0 --json "$json" "$@"; }
            sanitizer="$1" lrc="$2" json="$3" status=0
            sanitize --size 18 --base 8 --depth 2 --algo all || status=$?
            for algo in tf32-mma-wide bf16-mma-wide; do
                sanitize --size 10 --base 64 --depth 2 --algo "$algo" || { rc=$?; ((status)) || status=$rc; }
            done
            for algo in tf32-mma-halo bf16-mma-halo; do
                sanitize --size 64 --base 32 --depth 3 --algo "$algo" || { rc=$?; ((status)) || status=$rc; }
            done
            exit "$status"' memcheck "$sanitizer" "$bin/lrc" "$logs/memcheck-bench.jsonl"
        errors="$(grep -a 'ERROR SUMMARY' "$logs/memcheck.log" | sed 's/^=* *//' |
            awk '{ n += $3 } END { if (NR) printf "ERROR SUMMARY: %d errors (%d runs)", n, NR }')"
        if ((rc == 0)); then
            step memcheck passed "$took" "${errors:-}"
        else
            failed=1
            why="$(grep -a -m 1 '^error:' "$logs/memcheck.log" | cut -c 1-200 | tr '|' '/')"
            step memcheck "FAILED (exit $rc)" "$took" "${errors:+$errors; }${why:-$(last_line "$logs/memcheck.log")} (logs/memcheck.log)"
        fi
    fi
    if [[ -n "$sanitizer" ]] && enough "memcheck norm" 45; then
        # 264 x 264 down to 33 x 33 (block launches with shared-memory tails, the streaming
        # backward, odd planes read one value at a time), then 20 x 20 and 10 x 10 (one warp per
        # plane, a partly empty last block).
        # shellcheck disable=SC2016 # the inner script expands its own arguments
        timed "$logs/memcheck-norm.log" "$(min 150 "$(left)")" bash -c \
            '"$1" --tool memcheck --error-exitcode 3 "$2" bench norm --batch 3 --size 264 --base 2 --depth 4 \
                --repeats 1 --warmup 0 --json "$3" &&
             "$1" --tool memcheck --error-exitcode 3 "$2" bench norm --batch 3 --size 20 --base 3 --depth 2 \
                --repeats 1 --warmup 0 --json "$3"' _ \
            "$sanitizer" "$bin/lrc" "$logs/memcheck-norm-bench.jsonl"
        errors="$(grep -a 'ERROR SUMMARY' "$logs/memcheck-norm.log" | tail -n 1 | sed 's/^=* *//')"
        if ((rc == 0)); then
            step "memcheck norm" passed "$took" "${errors:-}"
        else
            failed=1
            why="$(grep -a -m 1 '^error:' "$logs/memcheck-norm.log" | cut -c 1-200 | tr '|' '/')"
            step "memcheck norm" "FAILED (exit $rc)" "$took" "${errors:+$errors; }${why:-$(last_line "$logs/memcheck-norm.log")} (logs/memcheck-norm.log)"
        fi
    fi
    if [[ -n "$sanitizer" ]] && enough "memcheck step" 45; then
        # One whole U-Net training step (every op of the engine forward and backward, Adam) on
        # small odd shapes: 2 x 1 x 24 x 24, base 3, depth 3.
        timed "$logs/memcheck-step.log" "$(min 150 "$(left)")" "$sanitizer" --tool memcheck --error-exitcode 3 \
            "$bin/lrc" bench step --batch 2 --size 24 --base 3 --depth 3 --repeats 1 --warmup 0 \
            --json "$logs/memcheck-step-bench.jsonl"
        errors="$(grep -a 'ERROR SUMMARY' "$logs/memcheck-step.log" | tail -n 1 | sed 's/^=* *//')"
        if ((rc == 0)); then
            step "memcheck step" passed "$took" "${errors:-}"
        else
            failed=1
            why="$(grep -a -m 1 '^error:' "$logs/memcheck-step.log" | cut -c 1-200 | tr '|' '/')"
            step "memcheck step" "FAILED (exit $rc)" "$took" "${errors:+$errors; }${why:-$(last_line "$logs/memcheck-step.log")} (logs/memcheck-step.log)"
        fi
    fi
    if [[ -n "$sanitizer" ]] && enough "memcheck lrc-loss" 30; then
        # Batch 3, 19 x 19 pixels, 5 and 33 channels, 1 and 37 regions of 3 samples: partial
        # warps, partial 32-region chunks, a lone region.
        timed "$logs/memcheck-lrc-loss.log" "$(min 120 "$(left)")" "$sanitizer" --tool memcheck --error-exitcode 3 \
            "$bin/lrc" bench lrc-loss --batch 3 --size 19 --dims 5,33 --regions 1,37 --samples 3 \
            --repeats 1 --warmup 0 --json "$logs/memcheck-lrc-loss.jsonl"
        errors="$(grep -a 'ERROR SUMMARY' "$logs/memcheck-lrc-loss.log" | tail -n 1 | sed 's/^=* *//')"
        if ((rc == 0)); then
            step "memcheck lrc-loss" passed "$took" "${errors:-}"
        else
            failed=1
            why="$(grep -a -m 1 '^error:' "$logs/memcheck-lrc-loss.log" | cut -c 1-200 | tr '|' '/')"
            step "memcheck lrc-loss" "FAILED (exit $rc)" "$took" "${errors:+$errors; }${why:-$(last_line "$logs/memcheck-lrc-loss.log")} (logs/memcheck-lrc-loss.log)"
        fi
    fi
    step_argv=(--batch 16 --size 256 --base 32 --depth 5)
    bench_run "bench step lrc" 30 120 "$logs/bench-step-lrc.log" \
        env -u LRC_CONV_ALGO "$bin/lrc" bench step "${step_argv[@]}" --json "$out/bench-step.jsonl"
    bench_run "bench step torch" 30 120 "$logs/bench-step-torch.log" \
        "$python" "$torch_bench" --bench step --device cuda "${step_argv[@]}" --json "$out/bench-step.jsonl"
    # The same step with BF16 operands, and with the fastest TF32 version per pass (timed in
    # the warm-up steps), beside the default.
    bench_run "bench step lrc bf16" 30 120 "$logs/bench-step-lrc-bf16.log" \
        env LRC_CONV_ALGO=bf16-mma-halo "$bin/lrc" bench step "${step_argv[@]}" --json "$out/bench-step.jsonl"
    bench_run "bench step lrc fastest" 30 120 "$logs/bench-step-lrc-fastest.log" \
        env LRC_CONV_ALGO=tf32-fastest "$bin/lrc" bench step "${step_argv[@]}" --json "$out/bench-step.jsonl"
    # The whole pipeline on this GPU, end to end: a failure here is a failure of the check.
    if enough "demo quick" 90; then
        demo_dir="$(mktemp -d)"
        timed "$logs/demo-quick.log" "$(min 300 "$(left)")" "$bin/lrc" demo --quick --device cuda --profile -o "$demo_dir"
        if ((rc == 0)) && [[ -f "$demo_dir/results/tables.md" ]]; then
            cp "$demo_dir/results/tables.md" "$out/demo-tables.md"
            cp "$demo_dir/results/results.json" "$out/demo-results.json" 2> /dev/null
            step "demo quick" passed "$took" \
                "$(grep -a -E '^\[demo\] +(loss|done)' "$logs/demo-quick.log" | sed -e 's/^\[demo\] *//' -e 's/; results in .*//' | tr '|' '/' | paste -sd ';' -)"
        else
            failed=1
            step "demo quick" "FAILED (exit $rc)" "$took" "$(last_line "$logs/demo-quick.log") (logs/demo-quick.log)"
        fi
        rm -rf "$demo_dir"
    fi
    # The host's batch building on this machine's cores, to set beside the step: a GPU step
    # faster than the slowest stage's batch would wait for its data.
    bench_run "bench batch" 40 90 "$logs/bench-batch.log" \
        "$bin/lrc" bench batch --repeats 5 --json "$out/bench-batch.jsonl"
    # Pre-training end to end, as `lrc pretrain` runs it (batches from the prefetcher, the loss
    # read back every step): whether the host keeps up shows as the step against the batch.
    if enough "bench pretrain" 60; then
        pre_dir="$(mktemp -d)"
        # shellcheck disable=SC2016 # the inner script expands its own arguments
        timed "$logs/bench-pretrain.log" "$(min 180 "$(left)")" bash -c '
            lrc="$1" dir="$2"
            "$lrc" synth -o "$dir/synth" --cases 4 --region abdomen &&
                "$lrc" prep -i "$dir/synth" -o "$dir/store" --regions || exit
            for method in global local joint; do
                "$lrc" pretrain "$method" --data "$dir/store" -o "$dir/$method.safetensors" --steps 110 \
                    --batch 16 --crop 256 --log-every 50 --checkpoint-every 1000 --device cuda \
                    --metrics "$dir/$method.jsonl" || exit
            done
            # Where each step goes (host ranges: data wait, keys, forward, backward; GPU time per
            # kernel), in this log: a shorter run under --profile, apart from the timed ones.
            for method in global local joint; do
                "$lrc" pretrain "$method" --data "$dir/store" -o "$dir/$method-profile.safetensors" \
                    --steps 30 --batch 16 --crop 256 --log-every 50 --checkpoint-every 1000 --device cuda \
                    --metrics "$dir/$method-profile.jsonl" --profile || exit
            done' _ "$bin/lrc" "$pre_dir"
        rates="$(pretrain_rates "$pre_dir" "$out/bench-pretrain.jsonl")"
        if ((rc == 0)) && [[ -n "$rates" ]]; then
            step "bench pretrain" passed "$took" "$rates"
        else
            failed=1
            step "bench pretrain" "FAILED (exit $rc)" "$took" "$(last_line "$logs/bench-pretrain.log") (logs/bench-pretrain.log)"
        fi
        rm -rf "$pre_dir"
    fi
    # shellcheck disable=SC2016 # the inner script expands its own arguments
    bench_run "bench pretrain step" 30 120 "$logs/bench-pretrain-step.log" bash -c '
        lrc="$1" json="$2"
        shift 2
        : > "$json"
        for method in global local joint; do
            "$lrc" bench step --method "$method" "$@" --json "$json" || exit
        done' _ "$bin/lrc" "$out/bench-pretrain-step.jsonl" "${step_argv[@]}"
    # shellcheck disable=SC2016 # the inner script expands its own arguments
    bench_run "bench pretrain torch" 45 150 "$logs/bench-pretrain-torch.log" bash -c '
        python="$1" ref="$2" json="$3"
        : > "$json"
        for method in global local joint; do
            "$python" "$ref" --bench pretrain --method "$method" --device cuda --json "$json" || exit
        done' _ "$python" "$torch_ref" "$out/bench-pretrain-torch.jsonl"
    bench_run "bench norm lrc" 30 120 "$logs/bench-norm-lrc.log" \
        "$bin/lrc" bench norm "${bench_argv[@]}" --json "$out/bench-norm-lrc.jsonl"
    bench_run "bench norm torch" 30 120 "$logs/bench-norm-torch.log" \
        "$python" "$torch_bench" --bench norm "${bench_argv[@]}" --json "$out/bench-norm-torch.jsonl"
    # The fused LRC loss, lrc then plain PyTorch, on the cases of `lrc bench lrc-loss`.
    for engine in lrc torch; do
        name="bench lrc-loss $engine"
        enough "$name" 45 || continue
        log="$logs/bench-lrc-loss-$engine.log"
        jsonl="$out/bench-lrc-loss-$engine.jsonl"
        if [[ "$engine" == lrc ]]; then
            timed "$log" "$(min 180 "$(left)")" "$bin/lrc" bench lrc-loss "${loss_bench_argv[@]}" --json "$jsonl"
        else
            timed "$log" "$(min 180 "$(left)")" "$python" "$torch_bench" --bench lrc-loss "${loss_bench_argv[@]}" --json "$jsonl"
        fi
        if ((rc == 0)); then
            step "$name" passed "$took" "$(grep -ac '"bench": *"lrc-loss"' "$jsonl" 2> /dev/null) timings"
        else
            failed=1
            step "$name" "FAILED (exit $rc)" "$took" "$(last_line "$log") (logs/$(basename "$log"))"
        fi
    done
    bench_run "bench superpixels" 60 240 "$logs/bench-superpixels.log" \
        "$bin/lrc" bench superpixels --json "$out/bench-superpixels.jsonl"
    # scikit-image on one core of this machine, per slice, for the GPU's speed-up over it.
    if "$python" -c 'import skimage' > /dev/null 2>&1; then
        bench_run "bench superpixels skimage" 30 120 "$logs/bench-superpixels-skimage.log" \
            "$python" "$skimage_bench" --sizes 256,512 --repeats 5 --no-batch \
            --json "$out/bench-superpixels-skimage.jsonl"
    else
        skipped+=("bench superpixels skimage: $python cannot import skimage")
        step "bench superpixels skimage" "skipped (no scikit-image)" "" ""
    fi
    # torch.compile near the end: its compilation alone takes a minute or more.
    bench_run "bench step torch.compile" 150 240 "$logs/bench-step-compile.log" \
        "$python" "$torch_bench" --bench step --compile --device cuda "${step_argv[@]}" --json "$out/bench-step.jsonl"
    # Nsight Compute over the kernels of one training step (the same U-Net), for the per-kernel
    # table: throughput against the card's peaks, registers, occupancy; with the default
    # convolution version, whose issue rate is what the static counts cannot show. A
    # diagnostic: when ncu cannot profile (no counters for this user, say) the check says so and
    # does not fail.
    ncu="$(command -v ncu || true)"
    [[ -n "$ncu" || ! -x /usr/local/cuda/bin/ncu ]] || ncu=/usr/local/cuda/bin/ncu
    if [[ -z "$ncu" ]]; then
        skipped+=("ncu step: ncu not found")
        step "ncu step" "skipped (no ncu)" "" ""
    elif enough "ncu step" 90; then
        timed "$logs/ncu-step.log" "$(min 180 "$(left)")" env -u LRC_CONV_ALGO \
            "$ncu" --csv --print-units base --section SpeedOfLight --section LaunchStats --section Occupancy \
            --log-file "$out/ncu-step.csv" \
            "$bin/lrc" bench step "${step_argv[@]}" --repeats 1 --warmup 0 --json "$logs/ncu-step-bench.jsonl"
        if ((rc == 0)) && [[ -s "$out/ncu-step.csv" ]]; then
            step "ncu step" passed "$took" "$(grep -ac '"Duration"' "$out/ncu-step.csv") launches profiled"
        else
            step "ncu step" "no profile (exit $rc; the check does not fail on it)" "$took" \
                "$(cat "$out/ncu-step.csv" "$logs/ncu-step.log" 2> /dev/null | grep -a -m 1 '==ERROR==' | cut -c 1-200 | tr '|' '/') (logs/ncu-step.log)"
        fi
    fi
fi

# --- summary ------------------------------------------------------------------------------------
# Medians per layer and pass from the JSON lines of both benchmarks; ratio = lrc / PyTorch.
bench_table() {
    python3 - "$out/bench-lrc.jsonl" "$out/bench-torch.jsonl" "$bench_args" << 'PY'
import json, os, sys

def read(path):
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.strip()]

lrc, torch = read(sys.argv[1]), read(sys.argv[2])
if not lrc and not torch:
    sys.exit(0)
# lrc's versions in the order of ConvAlgo::ALL (any other after them), each compared with cuDNN
# at its operand precision; cuDNN has no plain FP32 run, so fp32-tiled is compared with TF32.
ORDER = ["fp32-tiled", "tf32-mma", "bf16-mma", "tf32-wgmma", "bf16-wgmma", "tf32-mma-tap", "bf16-mma-tap",
         "tf32-mma-wide", "bf16-mma-wide", "tf32-mma-halo", "bf16-mma-halo"]
PRECISION = {"bf16-mma": "bf16", "bf16-wgmma": "bf16", "bf16-mma-tap": "bf16", "bf16-mma-wide": "bf16",
             "bf16-mma-halo": "bf16"}
PRECISIONS = ["tf32", "bf16"]
found = {r["algo"] for r in lrc}
algos = [a for a in ORDER if a in found] + sorted(found - set(ORDER))
# Older torch lines carry no precision: they are TF32.
ref = {(r["layer"], r["pass"], r.get("precision", "tf32")): r["median_ms"] for r in torch}
ours = {(r["layer"], r["pass"], r["algo"]): r["median_ms"] for r in lrc}
keys = list(dict.fromkeys((r["layer"], r["pass"]) for r in (lrc or torch)))
shape = {(r["layer"], r["pass"]): f'{r["n"]}x{r["c_in"]}x{r["h"]}x{r["w"]}>{r["c_out"]} k{r["kh"]}' for r in lrc + torch}
device = (torch or lrc)[0]["device"]
print(f"## Benchmark: conv ({sys.argv[3]}), median ms, {device}\n")
print("ratio = lrc / PyTorch (cuDNN) at the same precision: TF32 for fp32-tiled and the tf32 versions, BF16")
print("for the bf16 versions (BF16 operands; cuDNN also reads and writes BF16 tensors, lrc FP32 ones).")
print("Above 1, lrc is slower. The wgmma versions run on compute capability 9.0 only.\n")
head = "| layer | pass | shape |" + "".join(f" torch {p} |" for p in PRECISIONS)
head += "".join(f" lrc {a} | ratio |" for a in algos)
print(head)
print("|" + "---|" * (3 + len(PRECISIONS) + 2 * len(algos)))
def fmt(v):
    return "" if v is None else f"{v:.4f}"
def ratio(a, b):
    return "" if a is None or not b else f"{a / b:.2f}"
totals = {a: 0.0 for a in algos}
total_ref = {p: 0.0 for p in PRECISIONS}
for k in keys:
    row = f"| {k[0]} | {k[1]} | {shape[k]} |"
    for p in PRECISIONS:
        t = ref.get((k[0], k[1], p))
        total_ref[p] += t or 0.0
        row += f" {fmt(t)} |"
    for a in algos:
        v = ours.get((k[0], k[1], a))
        totals[a] += v or 0.0
        row += f" {fmt(v)} | {ratio(v, ref.get((k[0], k[1], PRECISION.get(a, 'tf32'))))} |"
    print(row)
has_ref = {p: any(key[2] == p for key in ref) for p in PRECISIONS}
row = "| **total** | | |" + "".join(f" {fmt(total_ref[p]) if has_ref[p] else ''} |" for p in PRECISIONS)
for a in algos:
    p = PRECISION.get(a, "tf32")
    row += f" {fmt(totals[a])} | {ratio(totals[a], total_ref[p]) if has_ref[p] else ''} |"
print(row)
# The fastest tensor-core version at each precision pass by pass: what choosing the version per
# pass would take, how many passes then reach 90% of cuDNN's throughput (the goal), and which
# versions win.
lines = []
for p in PRECISIONS:
    cands = [a for a in algos if a != "fp32-tiled" and PRECISION.get(a, "tf32") == p]
    best_total, within, passes, wins = 0.0, 0, 0, {a: 0 for a in cands}
    for k in keys:
        times = [(ours[(k[0], k[1], a)], a) for a in cands if (k[0], k[1], a) in ours]
        if not times:
            continue
        t, a = min(times)
        best_total += t
        passes += 1
        wins[a] += 1
        r = ref.get((k[0], k[1], p))
        within += 1 if r and t <= r / 0.9 else 0
    if passes:
        vs = f", {best_total / total_ref[p]:.2f} x cuDNN" if has_ref[p] else ""
        goal = f"; {within} of {passes} passes at 90% of cuDNN or better" if has_ref[p] else ""
        won = ", ".join(f"{a} {w}" for a, w in wins.items())
        lines.append(f"- {p}, the fastest version per pass: {fmt(best_total)} ms in all{vs}{goal} (fastest: {won})")
if lines:
    print()
    print("\n".join(lines))
PY
}

# Pre-training steps next to the host's batches of the same stage (`lrc bench batch`).
pretrain_table() {
    python3 - "$out/bench-pretrain.jsonl" "$out/bench-batch.jsonl" "$out/bench-pretrain-torch.jsonl" \
        "$out/bench-pretrain-step.jsonl" << 'PY'
import json, os, sys

def read(path):
    return [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []

rows = read(sys.argv[1])
if not rows:
    sys.exit(0)
# The batch stage of each method, built on every core.
stage = {"global": "moco", "local": "lrc", "joint": "joint"}
host = {}
for r in read(sys.argv[2]):
    if r.get("bench") == "batch" and r["threads"] >= host.get(r["stage"], (0, 0))[0]:
        host[r["stage"]] = (r["threads"], r["median_ms"])
print("## Benchmark: pre-training (`lrc pretrain`, batch 16, 256 x 256 crops, base 32, depth 5), ms per step\n")
print("steady ms per step from step 10 to the last; host batch = `lrc bench batch` for the same stage on")
print("every core (the prefetcher builds it while the GPU runs the step before): below the step, the")
print("GPU never waits for data. device batch = `lrc bench step --method`, the same step on a batch already")
print("on the device (K = 64 grid regions of 32 samples), the loss not read back; torch = the same in")
print("PyTorch eager (scripts/torch_reference.py --bench pretrain); lrc / torch: device batch against")
print("torch, above 1 lrc is slower.\n")
torch_ms = {r["method"]: r["median_ms"] for r in read(sys.argv[3]) if r.get("bench") == "pretrain"}
step_ms = {r["method"]: r["median_ms"] for r in read(sys.argv[4]) if r.get("bench") == "pretrain-step"}
print("| method | steps | ms per step | crops/s | first step s | host batch ms | host / step | device batch ms | torch ms | lrc / torch |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    threads, batch_ms = host.get(stage[r["method"]], (None, None))
    ratio = f"{batch_ms / r['ms_per_step']:.2f}" if batch_ms else ""
    batch = f"{batch_ms:.2f}" if batch_ms else ""
    first = f"{r['first_step_s']:.2f}" if r.get("first_step_s") is not None else ""
    ref, own = torch_ms.get(r["method"]), step_ms.get(r["method"])
    cells = [f"{own:.2f}" if own else "", f"{ref:.2f}" if ref else "", f"{own / ref:.2f}" if own and ref else ""]
    print(f"| {r['method']} | {r['steps']} | {r['ms_per_step']:.2f} | {r['batch'] * 1000.0 / r['ms_per_step']:.0f} | "
          f"{first} | {batch} | {ratio} | {' | '.join(cells)} |")
PY
}

# The whole training step: lrc next to PyTorch eager and torch.compile.
step_table() {
    python3 - "$out/bench-step.jsonl" << 'PY'
import json, os, sys

path = sys.argv[1]
rows = [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []
if not rows:
    sys.exit(0)
r0 = rows[0]
print(f"## Benchmark: U-Net training step (batch {r0['batch']}, 1x{r0['size']}x{r0['size']}, base {r0['base']}, "
      f"depth {r0['depth']}, Adam), median ms\n")
print("| implementation | device | median ms | vs lrc | detail |")
print("|---|---|---:|---:|---|")
ours = next((r["median_ms"] for r in rows if r.get("impl") == "lrc"), None)
for r in rows:
    ratio = "" if not ours else f"{r['median_ms'] / ours:.2f}"
    detail = ""
    impl = r.get("impl")
    if impl == "lrc":
        detail = (f"conv {r.get('conv_tflops', 0):.1f} TFLOP/s, {r.get('allocations_after_warmup')} allocations, "
                  f"{r.get('uploads')} uploads / {r.get('downloads')} downloads in the timed steps")
        if r.get("conv_algo"):
            impl = f"lrc ({r['conv_algo']})"
        if r.get("conv_versions_chosen"):
            detail += "; chosen per pass: " + ", ".join(f"{v} {n}" for v, n in r["conv_versions_chosen"].items())
    print(f"| {impl} | {r.get('device')} | {r['median_ms']:.2f} | {ratio} | {detail} |")
PY
}

# Instance norm + ReLU: medians per level and pass, lrc's bandwidth next to the card's peak.
norm_table() {
    python3 - "$out/bench-norm-lrc.jsonl" "$out/bench-norm-torch.jsonl" "$bench_args" << 'PY'
import json, os, sys

def read(path):
    if not os.path.exists(path):
        return []
    rows = [json.loads(l) for l in open(path) if l.strip()]
    return [r for r in rows if r.get("bench") == "norm"]

lrc, torch = read(sys.argv[1]), read(sys.argv[2])
if not lrc and not torch:
    sys.exit(0)
ref = {(r["layer"], r["pass"]): r for r in torch}
ours = {(r["layer"], r["pass"]): r for r in lrc}
keys = list(dict.fromkeys((r["layer"], r["pass"]) for r in (lrc or torch)))
device = (torch or lrc)[0]["device"]
peak = next((r.get("peak_gbps") for r in lrc if r.get("peak_gbps")), None)
print(f"## Benchmark: instance norm + ReLU ({sys.argv[3]}), median ms, {device}\n")
print("ratio = lrc / PyTorch (eager): above 1, lrc is slower. lrc GB/s counts the bytes its launch moves;")
print(f"eff GB/s counts one read of each input and one write of the output, for both. Peak: {peak or 'unknown'} GB/s.\n")
print("| layer | pass | shape | torch | lrc | ratio | lrc launch | lrc GB/s | % peak | lrc eff GB/s | torch eff GB/s |")
print("|" + "---|" * 11)
def fmt(v, digits=4):
    return "" if v is None else f"{v:.{digits}f}"
for k in keys:
    t, o = ref.get(k, {}), ours.get(k, {})
    r = o or t
    shape = f'{r["n"]}x{r["c"]}x{r["h"]}x{r["w"]}'
    tm, om = t.get("median_ms"), o.get("median_ms")
    ratio = "" if tm is None or om is None or not tm else f"{om / tm:.2f}"
    print(f"| {k[0]} | {k[1]} | {shape} | {fmt(tm)} | {fmt(om)} | {ratio} | {o.get('algo', '')} | "
          f"{fmt(o.get('gbps'), 1)} | {fmt(o.get('pct_peak'), 1)} | {fmt(o.get('eff_gbps'), 1)} | {fmt(t.get('eff_gbps'), 1)} |")
PY
}

# Medians per case, pass and embedding type of the fused LRC loss against plain PyTorch at the
# same type, and the peak memory of each beyond the two embedding maps; speed-up = PyTorch / lrc.
# Records without a "dtype" (older benchmarks) are FP32.
loss_bench_table() {
    python3 - "$out/bench-lrc-loss-lrc.jsonl" "$out/bench-lrc-loss-torch.jsonl" "$loss_bench_args" << 'PY'
import json, os, sys

def read(path):
    if not os.path.exists(path):
        return []
    rows = [json.loads(l) for l in open(path) if l.strip()]
    return [r for r in rows if r.get("bench") == "lrc-loss"]

lrc, torch = read(sys.argv[1]), read(sys.argv[2])
if not lrc and not torch:
    sys.exit(0)
def key(r):
    return (r["case"], r["pass"], r.get("dtype", "f32"))
ours = {key(r): r for r in lrc}
ref = {key(r): r for r in torch}
keys = list(dict.fromkeys(key(r) for r in lrc + torch))
device = (lrc or torch)[0]["device"]
print(f"## Benchmark: lrc-loss ({sys.argv[3]}), median ms, {device}\n")
print("speed-up = PyTorch / lrc at the same embedding type (dtype): above 1, lrc is faster. lrc ms: through the op, "
      "the host's sample table built and uploaded inside the timed region (a training step hides it behind the "
      "model's forward pass); lrc kernels ms: the table uploaded before timing, as PyTorch's indices are. Peak: MiB "
      "of device memory beyond the two embedding maps (inputs, in that type); lrc's gradients are FP32 for either "
      "type, PyTorch's of the embeddings' type.\n")
print("| case | pass | dtype | torch ms | lrc ms | speed-up | lrc kernels ms | kernels speed-up | torch peak MiB "
      "| lrc peak MiB | inputs MiB |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
def get(table, k, field):
    v = table.get(k, {}).get(field)
    return v if isinstance(v, (int, float)) else None
def fmt(v, digits=4):
    return "" if v is None else f"{v:.{digits}f}"
for k in keys:
    t, o, ko = get(ref, k, "median_ms"), get(ours, k, "median_ms"), get(ours, k, "kernels_median_ms")
    speed = f"{t / o:.2f}" if t and o else ""
    kernel_speed = f"{t / ko:.2f}" if t and ko else ""
    inputs = get(ours, k, "inputs_mib") or get(ref, k, "inputs_mib")
    print(f"| {k[0]} | {k[1]} | {k[2]} | {fmt(t)} | {fmt(o)} | {speed} | {fmt(ko)} | {kernel_speed} "
          f"| {fmt(get(ref, k, 'peak_mib'), 1)} | {fmt(get(ours, k, 'peak_mib'), 1)} | {fmt(inputs, 1)} |")
PY
}

# Felzenszwalb throughput per slice size from the JSON lines of `lrc bench superpixels`.
superpixel_table() {
    python3 - "$out/bench-superpixels.jsonl" "$out/bench-superpixels-skimage.jsonl" << 'PY'
import json, os, sys

def read(path, bench):
    rows = [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []
    return [r for r in rows if r.get("bench") == bench]

rows = read(sys.argv[1], "superpixels")
skimage = {r["size"]: r for r in read(sys.argv[2], "superpixels-skimage")}
if not rows:
    sys.exit(0)
def fmt(v, d):
    return "" if v is None else f"{v:.{d}f}"
r0 = rows[0]
print(f'## Benchmark: superpixels (Felzenszwalb, batch {r0["batch"]}, {r0["windows"]} windows), {r0["device"]}\n')
print("slices/s; gpu = device time (events), e2e = host slices to host labels; cpu = the exact version on every core; "
      "+clean = segmentation then the CT clean-up on the device; clean-up ms per batch; clean = cpu: the GPU clean-up "
      "of the GPU's segments equals the CPU's; skimage = scikit-image on one core of the same machine, per slice "
      "(the same parameters, a synthetic slice of the same kind).\n")
print("| size | cpu slices/s | gpu slices/s | e2e slices/s | gpu / cpu | skimage slices/s | gpu / skimage "
      "| mean ARI vs cpu | regions cpu | regions gpu "
      "| gpu+clean slices/s | clean-up gpu ms | clean-up cpu ms | clean = cpu |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    cpu, gpu = r.get("cpu_slices_per_s"), r.get("gpu_slices_per_s")
    ratio = gpu / cpu if cpu and gpu else None
    sk = skimage.get(r["size"], {}).get("slices_per_s")
    sk_ratio = gpu / sk if sk and gpu else None
    equal = r.get("cleanup_equal_to_cpu")
    print(f'| {r["size"]} | {fmt(cpu, 1)} | {fmt(gpu, 1)} | {fmt(r.get("gpu_end_to_end_slices_per_s"), 1)} | '
          f'{fmt(ratio, 1)} | {fmt(sk, 2)} | {fmt(sk_ratio, 0)} | {fmt(r.get("mean_ari_vs_cpu"), 4)} | {fmt(r.get("mean_regions_cpu"), 1)} | '
          f'{fmt(r.get("mean_regions_gpu"), 1)} | {fmt(r.get("gpu_with_cleanup_slices_per_s"), 1)} | '
          f'{fmt(r.get("gpu_cleanup_ms"), 2)} | {fmt(r.get("cpu_cleanup_median_ms"), 1)} | '
          f'{"" if equal is None else ("yes" if equal else "NO")} |')
PY
}

{
    echo "# lrc GPU check"
    echo
    echo "- card: $card"
    echo "- mode: $( ((dry)) && echo "dry ($dry_reason): GPU steps not run" || echo full)"
    echo "- bundle: ${bundle_commit:-unknown (no COMMIT file)}"
    echo "- host: $(uname -n), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- time: $(elapsed) s of a $budget s budget"
    echo "- result: $( ((failed)) && echo FAILED || echo "everything that ran passed")"
    echo
    echo "## Tests ($( ((dry)) && echo "without the ignored ones" || echo "--include-ignored"))"
    echo
    echo "| executable | passed | failed | ignored | s | status |"
    echo "|---|---:|---:|---:|---:|---|"
    printf '%s\n' "${test_rows[@]}"
    echo "| **total** | $total_passed | $total_failed | $total_ignored | | |"
    echo
    echo "## Steps"
    echo
    echo "| step | status | s | detail |"
    echo "|---|---|---:|---|"
    printf '%s\n' "${step_rows[@]}"
    table="$(step_table)"
    [[ -z "$table" ]] || printf '\n%s\n' "$table"
    if [[ -s "$out/demo-tables.md" ]]; then
        # shellcheck disable=SC2016 # backquotes for Markdown, not a command
        printf '\n## Demo: `lrc demo --quick` on this GPU\n\n'
        # The demo's own headings become bold lines here, below this section's heading.
        sed 's/^#\+ \(.*\)$/**\1**/' "$out/demo-tables.md"
    fi
    table="$(pretrain_table)"
    [[ -z "$table" ]] || printf '\n%s\n' "$table"
    table="$(bench_table)"
    [[ -z "$table" ]] || printf '\n%s\n' "$table"
    table="$(norm_table)"
    [[ -z "$table" ]] || printf '\n%s\n' "$table"
    table="$(loss_bench_table)"
    [[ -z "$table" ]] || printf '\n%s\n' "$table"
    table="$(superpixel_table)"
    [[ -z "$table" ]] || printf '\n%s\n' "$table"
    if [[ -s "$out/ncu-step.csv" ]]; then
        table="$(python3 "$ncu_table" "$out/ncu-step.csv" --top 25 2> /dev/null)"
        [[ -z "$table" ]] || printf '\n%s\n' "$table"
    fi
    if ((${#failures[@]})); then
        echo
        echo "## Failed tests"
        echo
        printf -- '- %s\n' "${failures[@]}"
    fi
    if ((${#skipped[@]})); then
        echo
        echo "## Skipped"
        echo
        printf -- '- %s\n' "${skipped[@]}"
    fi
    if ((${#notes[@]})); then
        echo
        echo "## Notes"
        echo
        printf -- '- %s\n' "${notes[@]}"
    fi
    echo
    echo "Logs: logs/ beside this file."
} > "$out/summary.md"

echo
cat "$out/summary.md"
exit "$failed"
