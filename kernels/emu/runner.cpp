// Runs a list of kernel launches on the CPU through cuda_emu.h: the other half of
// src/device/emu.rs. Every kernels/*.cu is compiled for the host as its own translation unit and
// linked with this file; LRC_KERNEL registers each kernel by name.
//
//   runner [--reverse] JOB OUT   runs the launches of JOB on its memory image, writes the image
//                                to OUT; --reverse runs blocks and threads in reverse order
//   runner --kernels             lists the registered kernels and their parameter sizes
//
// JOB (little-endian): "LRCEMU02", u64 base, u64 length, the memory image, u32 allocations, per
// allocation u64 address and u64 length in bytes, u32 launches, then per launch: u32 name length,
// name, u32 grid x, y, z, u32 block, u32 shared bytes, u32 parameter bytes, the parameter struct.
// The image is mapped at `base`, so that the device addresses the host code wrote into the
// parameter structs are valid pointers here. Built with AddressSanitizer, every byte of the image
// outside the allocations is poisoned: a kernel that touches it stops with ASan's report and a
// line naming the launch, block and thread.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "cuda_emu.h"

#ifdef LRC_EMU_ASAN
// Leaks do not matter in a process that runs one job; the coroutine switches are announced, so
// ASan's stack checks stay on, but not its fake stacks (they would cost every call).
extern "C" const char* __asan_default_options() {
    return "detect_leaks=0:detect_stack_use_after_return=0:halt_on_error=1";
}
#endif

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

// The line that follows an error report: which launch, block and thread.
void report_where(const char*) { std::fprintf(stderr, "emulator runner: the error is in %s\n", emu::where()); }

// Without ASan, a fault (an access outside the image, a coroutine's stack overflow into its
// guard page) still names the launch; it runs on its own stack, as the faulting one may be full.
void on_fault(int sig) {
    report_where(nullptr);
    signal(sig, SIG_DFL);
    raise(sig);
}

void install_handlers() {
#ifdef LRC_EMU_ASAN
    __asan_set_error_report_callback(report_where);
#else
    static char alt_stack[64 * 1024];
    stack_t ss{};
    ss.ss_sp = alt_stack;
    ss.ss_size = sizeof(alt_stack);
    sigaltstack(&ss, nullptr);
    struct sigaction sa {};
    sa.sa_handler = on_fault;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
#endif
}

// Poisons the image outside the live allocations (ASan only; a no-op otherwise).
void poison_outside(void* image, size_t mapped, const std::vector<std::pair<uint64_t, uint64_t>>& allocations) {
#ifdef LRC_EMU_ASAN
    ASAN_POISON_MEMORY_REGION(image, mapped);
    for (const auto& [address, bytes] : allocations) {
        ASAN_UNPOISON_MEMORY_REGION(reinterpret_cast<void*>(address), bytes);
    }
#else
    (void)image;
    (void)mapped;
    (void)allocations;
#endif
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 2 && std::string(argv[1]) == "--kernels") {
        for (const auto& e : emu::registry()) std::printf("%s %zu\n", e.name, e.param_bytes);
        return 0;
    }
    int arg = 1;
    if (argc == 4 && std::string(argv[1]) == "--reverse") {
        emu::reverse_schedule = true;
        arg = 2;
    } else if (argc != 3) {
        die("usage: runner [--reverse] JOB OUT | --kernels");
    }
    const char* job_path = argv[arg];
    const char* out_path = argv[arg + 1];
    install_handlers();
    FILE* f = std::fopen(job_path, "rb");
    if (!f) die(std::string("cannot open ") + job_path);
    Reader r{f};
    char magic[8];
    r.bytes(magic, 8);
    if (std::memcmp(magic, "LRCEMU02", 8) != 0) die("not a job file of this runner's version");
    const uint64_t base = r.value<uint64_t>();
    const uint64_t length = r.value<uint64_t>();
    const size_t page = 4096;
    const size_t mapped = std::max<size_t>((length + page - 1) / page * page, page);
    void* image = mmap(reinterpret_cast<void*>(base), mapped, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (image == MAP_FAILED || image != reinterpret_cast<void*>(base)) die("cannot map the memory image at its base");
    r.bytes(image, length);
    std::vector<std::pair<uint64_t, uint64_t>> allocations(r.value<uint32_t>());
    for (auto& [address, bytes] : allocations) {
        address = r.value<uint64_t>();
        bytes = r.value<uint64_t>();
        if (address < base || bytes > length || address - base > length - bytes) die("an allocation outside the image");
    }
    poison_outside(image, mapped, allocations);
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
        if (block.x > k.max_threads) {
            die(name + ": launched with " + std::to_string(block.x) + " threads per block, its __launch_bounds__ allow " +
                std::to_string(k.max_threads));
        }
        emu::launch_label = "kernel " + name + " (launch " + std::to_string(i + 1) + " of " +
                            std::to_string(launches) + (emu::reverse_schedule ? ", reverse schedule)" : ")");
        emu::launch(grid, block, [&] { k.call(params.data()); }, shared);
    }
    std::fclose(f);
    // The image is read back whole, red zones included, so the memory checks must not stand in
    // the way of this copy.
    poison_outside(image, mapped, {{base, length}});
    FILE* out = std::fopen(out_path, "wb");
    if (!out || (length > 0 && std::fwrite(image, 1, length, out) != length) || std::fclose(out) != 0) {
        die(std::string("cannot write ") + out_path);
    }
    return 0;
}
