#!/usr/bin/env bash
# Builds, on a machine without a GPU, what scripts/gpu-check.sh runs on a GPU machine that has no
# Rust toolchain: the release `lrc` binary and every release test executable, with the CUDA
# kernels embedded, stripped of debug info, in one folder that travels with the working tree.
#
# Usage: scripts/gpu-bundle.sh [DIR]          (default DIR: gpu-bundle/, ignored by git)
#
# DIR/bin.tar.xz     bin/lrc, the command-line binary, and bin/<test>, one libtest executable per
#                    test target: integration tests by their name, the library's and the binary's
#                    unit tests as unit-lib and unit-bin-<name>. Packed because every executable
#                    that opens a GPU embeds the same fatbins (about 9 MiB): 118 MiB of executables
#                    pack into about 6 MiB with a dictionary that spans several of them.
# DIR/scripts/       gpu-check.sh and the Python scripts it runs (PyTorch, Nsight Compute and
#                    scikit-image benchmarks and tables), of the same tree
# DIR/COMMIT         the commit (with -dirty when the tree had changes) and the build date
# DIR/BUILD          key=value lines: the paths compiled into the tests (see below), toolchain
# DIR/files/PATH     files of the build folder whose absolute PATH is compiled into the tests
#
# Tests find their files through env!("CARGO_MANIFEST_DIR"), the `lrc` binary through
# env!("CARGO_BIN_EXE_lrc") and the ptxas report through env!("LRC_PTXAS_REPORT"): absolute paths
# of this machine, compiled in. gpu-check.sh reads them from DIR/BUILD and, when the GPU
# machine's repository root is elsewhere, links them to the tree and the bundle for the check.
#
# The working tree and every carried folder travel together under one limit (64 MiB); the
# bundle must fit beside the tree. LRC_BUNDLE_LIMIT_MIB overrides the limit.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
dir="${1:-gpu-bundle}"
limit_mib="${LRC_BUNDLE_LIMIT_MIB:-64}"

die() {
    echo "gpu-bundle: error: $*" >&2
    exit 1
}

command -v python3 > /dev/null || die "python3 is needed to read cargo's JSON messages"
command -v xz > /dev/null || die "xz is needed to pack the executables (xz-utils)"
strip_tool="$(command -v strip || command -v objcopy || true)"
[[ -n "$strip_tool" ]] || die "neither strip nor objcopy is installed (binutils)"

# The kernels are compiled into the binaries only when nvcc is found.
nvcc="$(scripts/install-cuda-compiler.sh | tail -n 1)"
export NVCC="$nvcc"
echo "gpu-bundle: nvcc $nvcc" >&2

messages="$(mktemp)"
trap 'rm -f "$messages"' EXIT
echo "gpu-bundle: cargo build --release" >&2
cargo build --release --message-format=json-render-diagnostics > "$messages"
echo "gpu-bundle: cargo test --release --no-run" >&2
cargo test --release --no-run --message-format=json-render-diagnostics >> "$messages"

# One tab-separated line per thing to copy: role, name, path. Checks that the kernels were built
# (the generated kernels.rs of lrc's build script says so) and finds the paths tests compile in.
listing="$(
    python3 - "$messages" << 'PY'
import json, os, sys

bins, tests, files, out_dirs, manifest = {}, {}, {}, set(), None
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    msg = json.loads(line)
    reason = msg.get("reason")
    pkg = msg.get("package_id", "")
    # The only path package is this crate; its build script writes kernels.rs, and the files it
    # names in rustc-env variables (the ptxas report) are compiled into the tests as paths.
    if reason == "build-script-executed" and pkg.startswith("path+file:"):
        out_dirs.add(msg["out_dir"])
        for key, value in msg.get("env", []):
            if value.startswith(msg["out_dir"] + os.sep) and os.path.isfile(value):
                files[key] = value
    if reason != "compiler-artifact" or not msg.get("executable"):
        continue
    target = msg["target"]
    if msg["profile"]["test"]:
        kind = target["kind"][0]
        name = target["name"] if kind == "test" else ("unit-lib" if kind == "lib" else f"unit-{kind}-{target['name']}")
        tests[name] = msg["executable"]
    elif "bin" in target["kind"] and target["name"] == "lrc":
        bins["lrc"] = msg["executable"]
        manifest = os.path.dirname(os.path.dirname(target["src_path"]))

if "lrc" not in bins:
    sys.exit("gpu-bundle: cargo reported no lrc binary")
if not tests:
    sys.exit("gpu-bundle: cargo reported no test executables")
built = False
for d in out_dirs:
    path = os.path.join(d, "kernels.rs")
    if os.path.exists(path) and "pub const BUILT: bool = true;" in open(path).read():
        built = True
if not built:
    sys.exit("gpu-bundle: the CUDA kernels were not built (no nvcc?); a bundle without them tests nothing on a GPU")
print(f"bin\tlrc\t{bins['lrc']}")
for name in sorted(tests):
    print(f"test\t{name}\t{tests[name]}")
# CARGO_BIN_EXE_lrc is the binary's path in the target directory, compiled into the tests.
print(f"path\tmanifest_dir\t{manifest}")
print(f"path\tbin_exe_lrc\t{bins['lrc']}")
for key in sorted(files):
    print(f"file\t{key}\t{files[key]}")
PY
)"

staging="$(mktemp -d)"
trap 'rm -f "$messages"; rm -rf "$staging"' EXIT
rm -rf "$dir"
mkdir -p "$staging/bin" "$dir/scripts"
manifest_dir=""
bin_exe_lrc=""
compiled_files=()
while IFS=$'\t' read -r role name path; do
    case "$role" in
        bin | test)
            cp "$path" "$staging/bin/$name"
            if [[ "$(basename "$strip_tool")" == strip ]]; then
                strip --strip-debug "$staging/bin/$name"
            else
                objcopy --strip-debug "$staging/bin/$name"
            fi
            ;;
        path)
            [[ "$name" == manifest_dir ]] && manifest_dir="$path"
            [[ "$name" == bin_exe_lrc ]] && bin_exe_lrc="$path"
            ;;
        file)
            # Kept under its absolute path, so that gpu-check.sh can put it back in place.
            mkdir -p "$dir/files$(dirname "$path")"
            cp "$path" "$dir/files$path"
            compiled_files+=("$path")
            ;;
    esac
done <<< "$listing"
cp scripts/gpu-check.sh scripts/torch_reference.py scripts/torch_bench.py scripts/ncu_table.py \
    scripts/bench_felzenszwalb_skimage.py scripts/felzenszwalb_fixtures.py "$dir/scripts/"
plain_bytes="$(du -sb "$staging/bin" | cut -f 1)"
count="$(find "$staging/bin" -type f | wc -l)"
echo "gpu-bundle: packing $count executables" >&2
# A 64 MiB dictionary reaches back over several executables, so each embedded fatbin is stored once.
tar -C "$staging" -cf - bin | xz -T1 --lzma2=preset=6,dict=64MiB > "$dir/bin.tar.xz"

commit="$(git rev-parse HEAD)"
if [[ -n "$(git status --porcelain --untracked-files=normal)" ]]; then
    commit="$commit-dirty"
fi
built_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
printf '%s\n%s\n' "$commit" "$built_at" > "$dir/COMMIT"
{
    echo "commit=$commit"
    echo "built_at=$built_at"
    echo "manifest_dir=$manifest_dir"
    echo "bin_exe_lrc=$bin_exe_lrc"
    for path in "${compiled_files[@]}"; do
        echo "file=$path"
    done
    echo "rustc=$(rustc --version)"
    echo "nvcc=$("$nvcc" --version | tail -n 1)"
} > "$dir/BUILD"

# The size of what travels: the files git would send (tracked, and untracked not ignored) plus
# this bundle.
tree_bytes="$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2> /dev/null | tail -n 1 | cut -f 1)"
bundle_bytes="$(du -sb "$dir" | cut -f 1)"
total_bytes=$((tree_bytes + bundle_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "gpu-bundle: wrote $dir/: $count executables ($(mib "$plain_bytes") MiB unpacked), $(mib "$bundle_bytes") MiB;" \
    "with the working tree $(mib "$total_bytes") MiB (limit $limit_mib MiB)"
if ((total_bytes > limit_mib * 1048576)); then
    die "the bundle and the working tree take $(mib "$total_bytes") MiB, over the $limit_mib MiB that travel to the GPU machine"
fi
