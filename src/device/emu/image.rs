//! The layout of an emulated memory image, allocations apart with red zones between them, and
//! the checks on the images the runner returns: red zones untouched, and the forward and reverse
//! schedules agreeing on every allocation whose contents must not depend on the order.

use std::fmt::Write as _;

/// Allocations start aligned like the device allocator's.
pub const ALIGN: usize = 256;

/// Unallocated bytes before every allocation and after the last one. An access there is an
/// overrun: AddressSanitizer stops at it, and a write there shows in the returned image.
pub const RED_ZONE: usize = 1024;

/// What fresh memory holds: quiet NaNs (as f32), as the device's poisoned buffers do.
pub const FILL: u8 = 0xff;

/// One live allocation: `len` bytes exactly at `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub addr: u64,
    pub len: usize,
    /// Whether its contents must not depend on the schedule (see `EmuMemory::alloc_unordered`).
    pub ordered: bool,
}

/// The allocations of an image mapped at `base`, in address order.
#[derive(Clone, Debug)]
pub struct Layout {
    pub base: u64,
    pub allocations: Vec<Allocation>,
}

/// A stretch of the image: an allocation (by index) or the red zone before the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Allocation(usize),
    RedZone,
}

impl Layout {
    /// The byte offset of the next allocation in an image of `image_len` bytes, and the image's
    /// new length: a red zone before it (the first one included) and one after it.
    pub fn place(image_len: usize, len: usize) -> (usize, usize) {
        let start = image_len.max(RED_ZONE).div_ceil(ALIGN) * ALIGN;
        (start, start + len + RED_ZONE)
    }

    /// The allocation that holds `len` bytes at `addr`, if one does.
    pub fn holding(&self, addr: u64, len: usize) -> Option<&Allocation> {
        let i = self.allocations.partition_point(|a| a.addr <= addr).checked_sub(1)?;
        let a = &self.allocations[i];
        (addr - a.addr + len as u64 <= a.len as u64).then_some(a)
    }

    /// The image, `image_len` bytes, cut into allocations and red zones: (start, end, region).
    fn regions(&self, image_len: usize) -> Vec<(usize, usize, Region)> {
        let mut out = Vec::with_capacity(2 * self.allocations.len() + 1);
        let mut at = 0;
        for (i, a) in self.allocations.iter().enumerate() {
            let start = (a.addr - self.base) as usize;
            if start > at {
                out.push((at, start, Region::RedZone));
            }
            out.push((start, start + a.len, Region::Allocation(i)));
            at = start + a.len;
        }
        if image_len > at {
            out.push((at, image_len, Region::RedZone));
        }
        out
    }

    /// Where `addr` lies, in words: inside an allocation, past the end of one, or before the first.
    pub fn describe(&self, addr: u64) -> String {
        let name = |i: usize| {
            let a = &self.allocations[i];
            format!("allocation #{i} ({:#x}, {} bytes)", a.addr, a.len)
        };
        match self.allocations.partition_point(|a| a.addr <= addr).checked_sub(1) {
            None if self.allocations.is_empty() => format!("{addr:#x}, with no allocation in the image"),
            None => format!("{} bytes before {}", self.allocations[0].addr - addr, name(0)),
            Some(i) => {
                let a = &self.allocations[i];
                let offset = addr - a.addr;
                if offset < a.len as u64 {
                    format!("byte {offset} of {}", name(i))
                } else {
                    format!("{} bytes past the end of {}", offset - a.len as u64, name(i))
                }
            }
        }
    }

    /// The first byte outside every allocation that differs between the image sent (`before`)
    /// and one returned (`after`): a write past an allocation's end.
    pub fn red_zone_write(&self, before: &[u8], after: &[u8]) -> Option<String> {
        self.regions(before.len())
            .into_iter()
            .filter(|r| r.2 == Region::RedZone)
            .find_map(|(start, end, _)| first_difference(&before[start..end], &after[start..end]).map(|k| start + k))
            .map(|offset| {
                let addr = self.base + offset as u64;
                format!(
                    "a write outside every allocation, at {addr:#x}: {} (byte {:#04x}, was {:#04x})",
                    self.describe(addr),
                    after[offset],
                    before[offset]
                )
            })
    }

    /// The first difference between the images of the forward and the reverse schedule outside
    /// the allocations declared unordered, described with the 32-bit word that holds it.
    pub fn schedule_difference(&self, forward: &[u8], reverse: &[u8]) -> Option<String> {
        let differences: Vec<(usize, usize, Region, usize)> = self
            .regions(forward.len())
            .into_iter()
            .filter(|r| match r.2 {
                Region::Allocation(i) => self.allocations[i].ordered,
                Region::RedZone => true,
            })
            .filter_map(|(start, end, region)| {
                first_difference(&forward[start..end], &reverse[start..end]).map(|k| (start, end, region, k))
            })
            .collect();
        let &(start, end, region, k) = differences.first()?;
        let differing = forward[start..end]
            .iter()
            .zip(&reverse[start..end])
            .filter(|(f, r)| f != r)
            .count();
        let mut text = match region {
            Region::Allocation(i) => {
                let a = &self.allocations[i];
                format!(
                    "allocation #{i} ({:#x}, {} bytes) first differs at byte {k}",
                    a.addr, a.len
                )
            }
            Region::RedZone => format!("the red zone at {}", self.describe(self.base + (start + k) as u64)),
        };
        let word = k / 4 * 4;
        if word + 4 <= end - start {
            let value = |image: &[u8]| {
                let bytes: [u8; 4] = image[start + word..start + word + 4].try_into().unwrap_or_default();
                let bits = u32::from_le_bytes(bytes);
                format!(
                    "{bits:#010x} ({:?} as f32, {} as i32)",
                    f32::from_bits(bits),
                    bits as i32
                )
            };
            let _ = write!(
                text,
                ": the word at byte {word} is {} forward and {} reverse",
                value(forward),
                value(reverse)
            );
        } else {
            let _ = write!(
                text,
                ": {:#04x} forward and {:#04x} reverse",
                forward[start + k],
                reverse[start + k]
            );
        }
        let _ = write!(text, " ({differing} of its bytes differ)");
        let others: Vec<String> = differences[1..]
            .iter()
            .map(|d| match d.2 {
                Region::Allocation(i) => format!("#{i}"),
                Region::RedZone => format!("the red zone at {:#x}", self.base + (d.0 + d.3) as u64),
            })
            .collect();
        if !others.is_empty() {
            let _ = write!(text, "; allocations that differ too: {}", others.join(", "));
        }
        Some(text)
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x1000_0000;

    /// Three allocations placed as EmuMemory places them: 5 bytes, 256 bytes (unordered), 8 bytes.
    fn layout() -> (Layout, usize) {
        let mut len = 0;
        let mut allocations = Vec::new();
        for (bytes, ordered) in [(5, true), (256, false), (8, true)] {
            let (start, new_len) = Layout::place(len, bytes);
            allocations.push(Allocation {
                addr: BASE + start as u64,
                len: bytes,
                ordered,
            });
            len = new_len;
        }
        (
            Layout {
                base: BASE,
                allocations,
            },
            len,
        )
    }

    #[test]
    fn allocations_are_aligned_and_apart_by_at_least_a_red_zone() {
        let (l, len) = layout();
        assert!(l.allocations[0].addr - BASE >= RED_ZONE as u64);
        for w in l.allocations.windows(2) {
            assert!(w[1].addr.is_multiple_of(ALIGN as u64));
            assert!(w[1].addr - (w[0].addr + w[0].len as u64) >= RED_ZONE as u64);
        }
        let last = l.allocations[2];
        assert_eq!(len as u64, last.addr - BASE + last.len as u64 + RED_ZONE as u64);
    }

    #[test]
    fn addresses_are_described_relative_to_their_allocation() {
        let (l, _) = layout();
        let a = l.allocations[1];
        assert!(l.describe(a.addr + 3).starts_with("byte 3 of allocation #1"));
        assert!(
            l.describe(a.addr + 256)
                .starts_with("0 bytes past the end of allocation #1")
        );
        assert!(l.describe(BASE).contains("before allocation #0"));
        assert_eq!(l.holding(a.addr + 250, 6), Some(&a));
        assert_eq!(l.holding(a.addr + 250, 7), None);
        assert_eq!(l.holding(BASE, 1), None);
    }

    #[test]
    fn a_write_past_the_end_is_found_in_the_red_zone() {
        let (l, len) = layout();
        let before = vec![FILL; len];
        let mut after = before.clone();
        let a = l.allocations[0];
        let inside = (a.addr - BASE) as usize;
        after[inside] = 0; // inside: allowed
        assert_eq!(l.red_zone_write(&before, &after), None);
        after[inside + a.len] = 0;
        let err = l.red_zone_write(&before, &after).expect("found");
        assert!(err.contains("0 bytes past the end of allocation #0"), "{err}");
    }

    #[test]
    fn schedules_differing_only_in_unordered_allocations_agree() {
        let (l, len) = layout();
        let forward = vec![FILL; len];
        let mut reverse = forward.clone();
        let unordered = (l.allocations[1].addr - BASE) as usize;
        reverse[unordered + 17] = 1;
        assert_eq!(l.schedule_difference(&forward, &reverse), None);
        let ordered = (l.allocations[2].addr - BASE) as usize;
        reverse[ordered + 5..ordered + 8].copy_from_slice(&[0, 0, 0x40]);
        let err = l.schedule_difference(&forward, &reverse).expect("found");
        assert!(
            err.starts_with("allocation #2") && err.contains("first differs at byte 5"),
            "{err}"
        );
        assert!(
            err.contains("the word at byte 4 is 0xffffffff (NaN as f32, -1 as i32) forward"),
            "{err}"
        );
        assert!(
            err.contains("0x400000ff (2.0000608 as f32, 1073742079 as i32) reverse"),
            "{err}"
        );
        assert!(err.contains("(3 of its bytes differ)"), "{err}");
    }
}
