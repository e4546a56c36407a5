// Runs a list of kernel launches on the CPU through cuda_emu.h: the other half of
// src/device/emu.rs. Every kernels/*.cu is compiled for the host as its own translation unit and
// linked with this file; LRC_KERNEL registers each kernel by name.
//
//   runner JOB OUT     runs the launches of JOB on its memory image, writes the image to OUT
//   runner --kernels   lists the registered kernels and their parameter sizes
//
// JOB (little-endian): "LRCEMU01", u64 base, u64 length, the memory image, u32 launches, then per
// launch: u32 name length, name, u32 grid x, y, z, u32 block, u32 shared bytes, u32 parameter
// bytes, the parameter struct. The image is mapped at `base`, so that the device addresses the
// host code wrote into the parameter structs are valid pointers here.
#include <sys/mman.h>

#include <cstdio>
#include <string>

#include "cuda_emu.h"

namespace {

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "emulator runner: %s\n", what.c_str());
    std::exit(2);
}

struct Reader {
    FILE* f;
    template <class T>
    T value() {
        T v{};
        if (std::fread(&v, sizeof(T), 1, f) != 1) die("truncated job file");
        return v;
    }
    void bytes(void* out, size_t n) {
        if (n > 0 && std::fread(out, 1, n, f) != n) die("truncated job file");
    }
};

const emu::KernelEntry& entry_named(const std::string& name) {
    for (const auto& e : emu::registry()) {
        if (name == e.name) return e;
    }
    die("no kernel named " + name + " is compiled into the emulator");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 2 && std::string(argv[1]) == "--kernels") {
        for (const auto& e : emu::registry()) std::printf("%s %zu\n", e.name, e.param_bytes);
        return 0;
    }
    if (argc != 3) die("usage: runner JOB OUT | --kernels");
    FILE* f = std::fopen(argv[1], "rb");
    if (!f) die(std::string("cannot open ") + argv[1]);
    Reader r{f};
    char magic[8];
    r.bytes(magic, 8);
    if (std::memcmp(magic, "LRCEMU01", 8) != 0) die("not a job file");
    const uint64_t base = r.value<uint64_t>();
    const uint64_t length = r.value<uint64_t>();
    const size_t page = 4096;
    const size_t mapped = std::max<size_t>((length + page - 1) / page * page, page);
    void* image = mmap(reinterpret_cast<void*>(base), mapped, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (image == MAP_FAILED || image != reinterpret_cast<void*>(base)) die("cannot map the memory image at its base");
    r.bytes(image, length);
    const uint32_t launches = r.value<uint32_t>();
    for (uint32_t i = 0; i < launches; ++i) {
        std::string name(r.value<uint32_t>(), '\0');
        r.bytes(name.data(), name.size());
        dim3 grid;
        grid.x = r.value<uint32_t>();
        grid.y = r.value<uint32_t>();
        grid.z = r.value<uint32_t>();
        dim3 block;
        block.x = r.value<uint32_t>();
        const uint32_t shared = r.value<uint32_t>();
        std::vector<unsigned char> params(r.value<uint32_t>());
        r.bytes(params.data(), params.size());
        const emu::KernelEntry& k = entry_named(name);
        if (params.size() != k.param_bytes) {
            die(name + ": the host passed " + std::to_string(params.size()) + " parameter bytes, the kernel takes " +
                std::to_string(k.param_bytes));
        }
        emu::launch(grid, block, [&] { k.call(params.data()); }, shared);
    }
    std::fclose(f);
    FILE* out = std::fopen(argv[2], "wb");
    if (!out || (length > 0 && std::fwrite(image, 1, length, out) != length) || std::fclose(out) != 0) {
        die(std::string("cannot write ") + argv[2]);
    }
    return 0;
}
