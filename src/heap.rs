//! Heap accounting for the per-viewer memory bench (issue 10), behind the
//! `alloc-stats` cargo feature: a global allocator that wraps the system
//! one and counts the bytes currently allocated, read by the admin
//! listener's `/heap`. Without the feature nothing here is compiled in.
//!
//! The count is of requested bytes (as jemalloc's `stats.allocated`), so
//! allocated bytes per idle viewer = (allocated with N viewers − allocated
//! with none) / N, without the allocator's own slack that RSS includes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting.
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

// SAFETY: every call is forwarded to `System` unchanged; only counters are
// added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            add(layout.size());
            BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            add(layout.size());
            BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        sub(layout.size());
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
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
