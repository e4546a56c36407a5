//! A stable segmented radix sort of (u32 key, u32 value) pairs on the GPU: the host side of
//! `kernels/radix_sort.cu`. Used to order the Felzenszwalb edges by weight and to group the
//! pixels of each region for sampling.

use bytemuck::{Pod, Zeroable};

use super::call::KernelCall;
use super::launch::dim;
use crate::error::{Error, Result};

const MODULE: &str = "radix_sort";
const THREADS: u32 = 256;
/// Pairs per tile of `radix_count` / `radix_scatter` (THREADS x ITEMS in the kernel).
pub const TILE: usize = 2048;
const DIGIT_BITS: u32 = 8;
const DIGITS: usize = 1 << DIGIT_BITS;

/// `RadixPassParams` of `kernels/radix_sort.cu`: one 8-bit digit pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RadixPassParams {
    pub keys_in: u64,
    pub vals_in: u64,
    pub keys_out: u64,
    pub vals_out: u64,
    pub counts: u64,
    pub len: i32,
    pub tiles: i32,
    pub shift: i32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<RadixPassParams>() == 56);
const _: () = assert!(std::mem::offset_of!(RadixPassParams, len) == 40);
const _: () = assert!(std::mem::offset_of!(RadixPassParams, shift) == 48);

/// Threads of a single block that loops over `items` items: about 16 items a thread, whole
/// warps, 32 to 1024. Small inputs get small blocks (cheap barriers), large ones the most a
/// block has.
pub fn block_threads(items: usize) -> u32 {
    (items.div_ceil(16).next_multiple_of(32)).clamp(32, 1024) as u32
}

/// Words of the digit-count scratch buffer a sort of `segments` x `len` pairs needs.
pub fn count_words(segments: usize, len: usize) -> usize {
    segments * DIGITS * len.div_ceil(TILE).max(1)
}

/// Passes for keys below `2^key_bits`, rounded up to an even number so that the sorted pairs end
/// in the input buffers.
pub fn passes(key_bits: u32) -> u32 {
    let p = key_bits.clamp(1, 32).div_ceil(DIGIT_BITS);
    p + p % 2
}

/// The launches that sort each of `segments` runs of `len` pairs (keys at `keys`, values at
/// `vals`, all keys below `2^key_bits`) by key, stably, in place. `keys_tmp` and `vals_tmp` hold
/// as many words as `keys`; `counts` holds [`count_words`] words.
#[allow(clippy::too_many_arguments)]
pub fn segmented_sort_calls(
    segments: usize,
    len: usize,
    key_bits: u32,
    keys: u64,
    vals: u64,
    keys_tmp: u64,
    vals_tmp: u64,
    counts: u64,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "radix sort";
    if segments == 0 || len < 2 {
        return Ok(Vec::new());
    }
    if segments > 65_535 {
        return Err(Error::shape(
            OP,
            format!("{segments} segments exceed the 65535 of a grid column"),
        ));
    }
    dim(OP, "pairs", segments * len)?;
    let tiles = len.div_ceil(TILE);
    let mut calls = Vec::new();
    let (mut src, mut dst) = ((keys, vals), (keys_tmp, vals_tmp));
    for pass in 0..passes(key_bits) {
        let p = RadixPassParams {
            keys_in: src.0,
            vals_in: src.1,
            keys_out: dst.0,
            vals_out: dst.1,
            counts,
            len: dim(OP, "segment length", len)?,
            tiles: dim(OP, "tiles", tiles)?,
            shift: (pass * DIGIT_BITS) as i32,
            reserved: 0,
        };
        calls.push(KernelCall::new(
            MODULE,
            "radix_count",
            (tiles, segments, 1),
            THREADS,
            &p,
        ));
        calls.push(KernelCall::new(
            MODULE,
            "radix_scan",
            (1, segments, 1),
            block_threads(DIGITS * tiles),
            &p,
        ));
        calls.push(KernelCall::new(
            MODULE,
            "radix_scatter",
            (tiles, segments, 1),
            THREADS,
            &p,
        ));
        std::mem::swap(&mut src, &mut dst);
    }
    debug_assert_eq!(src, (keys, vals));
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_threads_scale_with_the_work() {
        assert_eq!(block_threads(0), 32);
        assert_eq!(block_threads(600), 64);
        assert_eq!(block_threads(1 << 20), 1024);
    }

    #[test]
    fn passes_are_even_and_cover_the_key() {
        assert_eq!(passes(1), 2);
        assert_eq!(passes(8), 2);
        assert_eq!(passes(16), 2);
        assert_eq!(passes(17), 4);
        assert_eq!(passes(32), 4);
        assert_eq!(passes(40), 4);
    }

    #[test]
    fn plans_three_launches_a_pass_and_nothing_for_trivial_input() {
        let calls = segmented_sort_calls(3, 5000, 32, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(calls.len(), 12);
        assert_eq!(calls[0].grid, (3, 3, 1));
        assert!(segmented_sort_calls(0, 10, 32, 1, 2, 3, 4, 5).unwrap().is_empty());
        assert!(segmented_sort_calls(4, 1, 32, 1, 2, 3, 4, 5).unwrap().is_empty());
        assert!(segmented_sort_calls(70_000, 10, 32, 1, 2, 3, 4, 5).is_err());
    }
}
