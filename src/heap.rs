//! The process's heap: the global allocator of every program linking this
//! crate (relay, head end, client, loadgen, tests), and, behind the
//! `alloc-stats` cargo feature, heap accounting for the per-viewer memory
//! bench (issue 10), read by the admin listener's `/heap`.
//!
//! The allocator is mimalloc. A relay allocates and frees a few small
//! objects per request per viewer (a request head, a response head, a
//! body's progress); with glibc's malloc these ended up scattered, and
//! the fan-out walked cold memory: malloc itself (`malloc_consolidate`,
//! `unlink_chunk`) was 16% of the relay's CPU and waking 1,000 parked
//! viewers another 13%. mimalloc's per-thread, size-segregated pages keep
//! them together. With this and two smaller changes of the same session,
//! the relay took 7–15% less CPU per GB than the build before, both
//! measured at once on one core (docs/benchmarks.md §8,
//! `benches/relay_ab.sh`).
//!
//! With `alloc-stats`, the allocator counts the bytes currently allocated
//! (requested bytes, as jemalloc's `stats.allocated`), so allocated bytes
//! per idle viewer = (allocated with N viewers − allocated with none) / N,
//! without the allocator's own slack that RSS includes.

use mimalloc::MiMalloc as Inner;

#[cfg(not(feature = "alloc-stats"))]
#[global_allocator]
static GLOBAL: Inner = Inner;

#[cfg(feature = "alloc-stats")]
pub use stats::report;

/// The counting allocator of `alloc-stats` builds.
#[cfg(feature = "alloc-stats")]
mod stats {
    use std::alloc::{GlobalAlloc, Layout};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::Inner;

    /// The allocator, counting.
    pub struct Counting;

    static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
    static BLOCKS: AtomicUsize = AtomicUsize::new(0);
    /// Live bytes by size class (class k: sizes in [2^(k-1), 2^k)), which is
    /// what tells an 8 KiB hyper buffer from a task or a slab entry.
    static CLASS_BYTES: [AtomicUsize; CLASSES] = [const { AtomicUsize::new(0) }; CLASSES];
    const CLASSES: usize = 32;

    fn class(size: usize) -> usize {
        ((usize::BITS - size.leading_zeros()) as usize).min(CLASSES - 1)
    }

    fn add(size: usize) {
        ALLOCATED.fetch_add(size, Ordering::Relaxed);
        CLASS_BYTES[class(size)].fetch_add(size, Ordering::Relaxed);
    }

    fn sub(size: usize) {
        ALLOCATED.fetch_sub(size, Ordering::Relaxed);
        CLASS_BYTES[class(size)].fetch_sub(size, Ordering::Relaxed);
    }

    // SAFETY: every call is forwarded to the inner allocator unchanged; only
    // counters are added.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = Inner.alloc(layout);
            if !p.is_null() {
                add(layout.size());
                BLOCKS.fetch_add(1, Ordering::Relaxed);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let p = Inner.alloc_zeroed(layout);
            if !p.is_null() {
                add(layout.size());
                BLOCKS.fetch_add(1, Ordering::Relaxed);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            Inner.dealloc(ptr, layout);
            sub(layout.size());
            BLOCKS.fetch_sub(1, Ordering::Relaxed);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = Inner.realloc(ptr, layout, new_size);
            if !p.is_null() {
                add(new_size);
                sub(layout.size());
            }
            p
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Bytes currently allocated, live allocations, and live bytes by size
    /// class (`class_bytes{lt="N"}`: blocks smaller than N bytes and at least
    /// half that), as text for `/heap`.
    pub fn report() -> String {
        let mut s = format!(
            "allocated_bytes {}\nallocated_blocks {}\n",
            ALLOCATED.load(Ordering::Relaxed),
            BLOCKS.load(Ordering::Relaxed)
        );
        for (k, c) in CLASS_BYTES.iter().enumerate() {
            let b = c.load(Ordering::Relaxed);
            if b > 0 {
                s.push_str(&format!("class_bytes{{lt=\"{}\"}} {b}\n", 1u64 << k));
            }
        }
        s
    }
}
