#!/usr/bin/env bash
# Installs the CUDA compiler (nvcc, ptxas, cicc, headers) from PyPI wheels into ./.cuda/toolkit,
# so that build.rs can compile kernels/*.cu without a system CUDA toolkit or a GPU.
#
# Every wheel is pinned to one CUDA 13.0 release (13.0 Update 1: nvcc/nvvm/crt/runtime 13.0.88,
# whose CCCL headers are 13.0.85). A newer nvvm would emit PTX that the R580 (CUDA 13.0) driver of
# the target machines refuses to load. Re-running is cheap: a stamp file holding the pinned set
# makes it a no-op when the toolkit is already there.
#
# Usage: scripts/install-cuda-compiler.sh [--force]
# Prints the path of nvcc on its last line.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cuda_dir="$repo_root/.cuda"
toolkit="$cuda_dir/toolkit"
stamp="$toolkit/.lrc-stamp"
python="${PYTHON:-python3}"

wheels=(
    "nvidia-cuda-nvcc==13.0.88"
    "nvidia-nvvm==13.0.88"
    "nvidia-cuda-crt==13.0.88"
    "nvidia-cuda-runtime==13.0.88"
    "nvidia-cuda-cccl==13.0.85"
)
wanted="${wheels[*]}"

if [[ "${1:-}" != "--force" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" && -x "$toolkit/bin/nvcc" ]]; then
    echo "CUDA compiler already installed ($wanted)" >&2
    echo "$toolkit/bin/nvcc"
    exit 0
fi

mkdir -p "$cuda_dir"
staging="$(mktemp -d "$cuda_dir/staging.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

echo "installing ${wanted} into $toolkit" >&2
PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
    --only-binary=:all: --target "$staging/site" "${wheels[@]}" >&2

# The wheels share one prefix, nvidia/cu13, laid out as a toolkit: bin/ (nvcc, ptxas, fatbinary),
# nvvm/ (cicc, libdevice), include/ (runtime and crt headers, cccl/) and lib/. nvcc locates its
# siblings through bin/nvcc.profile relative to its own directory, so the prefix works wherever it
# is moved, as long as nvcc is invoked by its real path (not through a symlink).
prefix="$staging/site/nvidia/cu13"
for needed in bin/nvcc bin/ptxas bin/fatbinary bin/nvcc.profile nvvm/bin/cicc nvvm/libdevice/libdevice.10.bc \
    include/cuda_runtime.h include/crt/host_config.h; do
    if [[ ! -e "$prefix/$needed" ]]; then
        echo "error: the installed wheels lack $needed; the PyPI layout may have changed" >&2
        exit 1
    fi
done
chmod +x "$prefix"/bin/* "$prefix"/nvvm/bin/*

# Check that the compiler runs and builds a kernel for the target before putting it in place.
cat > "$staging/probe.cu" <<'CU'
extern "C" __global__ void probe(float* x) { x[threadIdx.x] += 1.0f; }
CU
"$prefix/bin/nvcc" --fatbin -gencode arch=compute_90,code=sm_90 -o "$staging/probe.fatbin" "$staging/probe.cu" >&2
"$prefix/bin/nvcc" --version | grep -q "release 13.0" || {
    echo "error: the installed nvcc is not CUDA 13.0" >&2
    exit 1
}

rm -rf "$toolkit"
mv "$prefix" "$toolkit"
echo "$wanted" > "$stamp"
# build.rs watches kernels/; touching it makes the next cargo build pick up the new compiler.
touch "$repo_root/kernels"
echo "CUDA compiler installed: $("$toolkit/bin/nvcc" --version | tail -1)" >&2
echo "$toolkit/bin/nvcc"
