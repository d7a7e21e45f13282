//! The one memory budget: every chunk byte the relay holds is charged here.
//!
//! A [`Charge`] is taken when bytes arrive from upstream (or, when the length is
//! declared, reserved up front) and travels with the bytes: a slot's growing
//! body owns one, and when the body is frozen for the cache the same charge
//! moves into the frozen body. It is released only when the last holder lets go
//! (the cache evicted the entry *and* every viewer still streaming it has
//! finished), so `--memory-limit` bounds cache, in-flight slots, bodies evicted
//! but still streaming, and per-piece overhead together. Admission asks
//! [`Budget::has_room`] before any fetch starts; a charge that would pass the
//! limit fails instead of growing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes charged per body piece on top of its length: the `Bytes` handle in
/// the piece vector and the allocator's header and shared-counter block.
pub const PIECE_OVERHEAD: usize = 96;

/// The budget was exhausted.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("memory budget exhausted ({used} of {limit} bytes in use, {wanted} more wanted)")]
pub struct Exhausted {
    /// Bytes in use when the charge was refused.
    pub used: usize,
    /// The limit.
    pub limit: usize,
    /// What the refused charge asked for.
    pub wanted: usize,
}

/// A byte budget shared by everything that holds chunk bytes.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes charged right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether `want` more bytes fit.
    pub fn has_room(&self, want: usize) -> bool {
        self.used().saturating_add(want) <= self.limit
    }

    /// An empty charge against this budget.
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            held: 0,
        }
    }

    fn take(&self, n: usize) -> Result<(), Exhausted> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|t| *t <= self.limit)
            })
            .map(|_| ())
            .map_err(|used| Exhausted {
                used,
                limit: self.limit,
                wanted: n,
            })
    }
}

/// Bytes held against a [`Budget`], released when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    held: usize,
}

impl Charge {
    /// Adds `n` bytes, or fails without changing anything when they would
    /// pass the limit.
    pub fn grow(&mut self, n: usize) -> Result<(), Exhausted> {
        self.budget.take(n)?;
        self.held += n;
        Ok(())
    }

    /// An empty charge against the same budget.
    pub fn sibling(&self) -> Charge {
        self.budget.charge()
    }

    /// Bytes this charge holds.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_bounded_and_released_on_drop() {
        let b = Budget::new(100);
        let mut c = b.charge();
        c.grow(60).unwrap();
        let mut d = b.charge();
        assert_eq!(
            d.grow(50),
            Err(Exhausted {
                used: 60,
                limit: 100,
                wanted: 50
            })
        );
        d.grow(40).unwrap();
        assert_eq!(b.used(), 100);
        assert!(!b.has_room(1));
        drop(c);
        assert_eq!(b.used(), 40);
        assert!(d.grow(usize::MAX).is_err());
        drop(d);
        assert_eq!(b.used(), 0);
    }
}
