//! Command implementations behind the `lrc` CLI.

pub mod bench;
pub mod demo;
pub mod device;
pub mod eval;
pub mod eval_clusters;
pub mod finetune;
pub mod parity;
pub mod predict;
pub mod prep;
pub mod pretrain;
pub mod superpixels;
pub mod synth;

/// Keeps freed tensor memory in the process (glibc only). By default glibc serves large blocks
/// with fresh mappings and hands freed memory straight back to the kernel, so every training
/// step's tensors fault their pages in anew: fine-tuning the small U-Net of `lrc demo --quick`
/// on the CPU spent 2.6 s of 5.8 s in the kernel (0.8 s of 4.0 s with this, the same peak
/// memory; docs/PERFORMANCE.md). Blocks up to 32 MiB (the most glibc allows) now come from the
/// heap, which is trimmed only when more than 1 GiB at its top is free.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
