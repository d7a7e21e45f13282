//! Chunk bodies held in a memory file, so HTTP/1.1 viewers can be sent
//! them with `sendfile` instead of a copy per viewer (issue 10).
//!
//! A fill whose length is known up front (a whole chunk with
//! `Content-Length`) asks for a [`Spool`]: an anonymous memory file
//! (`memfd_create`) of that size, mapped into the relay. Each batch of body
//! bytes from upstream is copied into it once, at the next offset, and
//! pushed into the slot as a `Bytes` that points into the mapping. From
//! there on nothing differs for the slot, the cache, h2 or ranges: the
//! pieces are ordinary shared `Bytes`.
//!
//! The HTTP/1.1 server asks [`find`] whether a body piece it is about to
//! write lives in a spool; if so it sends it with `sendfile(memfd → socket)`,
//! which on the way out references the file's pages instead of copying the
//! bytes into the socket. The piece it holds keeps the spool (and its file
//! descriptor) alive until the send is done.
//!
//! Spools cost a file descriptor each for as long as their chunk is held
//! (in flight or in the cache), so few exist at once: at most [`limit`],
//! which the relay sets from its open-file limit minus the descriptors its
//! connections may need ([`set_limit`], never more than [`MAX_SPOOLS`]).
//! The second half of that is kept for fills that several viewers share
//! (live fan-out), so a cache full of old single-viewer chunks cannot take
//! them all. Past the limit, or when `memfd_create` or `mmap` fails, the
//! fill keeps its bytes on the heap as before. The bytes are the same bytes
//! the budget is charged for; the upstream buffers they were copied from are
//! freed (to the allocator, which may keep them for reuse).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;

/// Most spools alive at once (each holds a file descriptor).
pub const MAX_SPOOLS: usize = 1024;
/// Smallest body worth a spool: below this a copy costs less than the
/// extra `sendfile` call.
pub const MIN_LEN: u64 = 16 * 1024;
/// Largest body put in a spool (the rest stays on the heap).
pub const MAX_LEN: u64 = 64 * 1024 * 1024;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(MAX_SPOOLS);

/// Sets how many spools may exist at once (at most [`MAX_SPOOLS`]; 0 turns
/// them off).
pub fn set_limit(n: usize) {
    LIMIT.store(n.min(MAX_SPOOLS), Ordering::Relaxed);
}

/// How many spools may exist at once.
pub fn limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// The spool limit for a process allowed `fd_limit` open files serving up to
/// `max_connections` viewers: half of the descriptors left after the
/// viewers and 64 more (listeners, upstream connections, files).
pub fn limit_for(fd_limit: u64, max_connections: usize) -> usize {
    let spare = (fd_limit as usize).saturating_sub(max_connections + 64);
    (spare / 2).min(MAX_SPOOLS)
}

/// Live mappings by start address: `(length, fd)`. Looked up per body piece
/// by the HTTP/1.1 writer.
fn registry() -> &'static Mutex<BTreeMap<usize, (usize, RawFd)>> {
    static MAP: OnceLock<Mutex<BTreeMap<usize, (usize, RawFd)>>> = OnceLock::new();
    MAP.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// The mapping and its file; unmapped, closed and unregistered on drop.
struct Mapping {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory. Its bytes are written only
// by the spool's one writer, only beyond every range already handed out,
// and read only through the `Bytes` of ranges that are complete.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        registry().lock().remove(&(self.ptr as usize));
        // SAFETY: ptr/len are the mapping made in `Spool::new`, and no
        // `Bytes` into it exists any more (each holds this `Arc`).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A range of a mapping, as the owner of a `Bytes`.
struct Range {
    map: Arc<Mapping>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for Range {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: start..end lies within the mapping and was written
        // completely before this range was made; it is never written again.
        unsafe { std::slice::from_raw_parts(self.map.ptr.add(self.start), self.end - self.start) }
    }
}

/// A memory file being filled with one body, front to back.
pub struct Spool {
    map: Arc<Mapping>,
    written: usize,
}

impl Spool {
    /// A spool for a body of exactly `len` bytes, for a fill that `shared`
    /// viewers wait on (or not); `None` if the body is too small or too large
    /// for one, the limit is reached (half of it for an unshared fill), or
    /// the system refuses (the caller then keeps the body on the heap).
    pub fn new(len: u64, shared: bool) -> Option<Spool> {
        if !(MIN_LEN..=MAX_LEN).contains(&len) {
            return None;
        }
        let limit = if shared { limit() } else { limit() / 2 };
        if LIVE.fetch_add(1, Ordering::Relaxed) >= limit {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let made = Self::map(len as usize);
        if made.is_none() {
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
        made
    }

    fn map(len: usize) -> Option<Spool> {
        // SAFETY: plain system calls on a descriptor this function owns;
        // every failure is checked and what was made is released.
        unsafe {
            let raw = libc::memfd_create(c"mlcache-chunk".as_ptr(), libc::MFD_CLOEXEC);
            if raw < 0 {
                return None;
            }
            let fd = OwnedFd::from_raw_fd(raw);
            if libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) != 0 {
                return None;
            }
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            );
            if ptr == libc::MAP_FAILED {
                return None;
            }
            let ptr = ptr.cast::<u8>();
            registry()
                .lock()
                .insert(ptr as usize, (len, fd.as_raw_fd()));
            Some(Spool {
                map: Arc::new(Mapping { fd, ptr, len }),
                written: 0,
            })
        }
    }

    /// Room left.
    pub fn remaining(&self) -> usize {
        self.map.len - self.written
    }

    /// Copies `pieces` into the next bytes of the file and returns them as
    /// one `Bytes` into the mapping; `None` (nothing written) if they do not
    /// fit, which a well-framed body never does.
    pub fn append(&mut self, pieces: &[Bytes]) -> Option<Bytes> {
        let total: usize = pieces.iter().map(Bytes::len).sum();
        if total == 0 || total > self.remaining() {
            return None;
        }
        let start = self.written;
        for p in pieces {
            // SAFETY: written..written+len is inside the mapping, beyond
            // every range handed out so far, and `p` is not in it.
            unsafe {
                std::ptr::copy_nonoverlapping(p.as_ptr(), self.map.ptr.add(self.written), p.len());
            }
            self.written += p.len();
        }
        Some(Bytes::from_owner(Range {
            map: self.map.clone(),
            start,
            end: self.written,
        }))
    }

    /// The file's descriptor (for tests).
    pub fn fd(&self) -> RawFd {
        self.map.fd.as_raw_fd()
    }
}

/// Where `piece` lives if it is in a spool: the file and the offset of its
/// first byte. The caller must hold `piece` while it uses the descriptor.
pub fn find(piece: &[u8]) -> Option<(RawFd, u64)> {
    let at = piece.as_ptr() as usize;
    let map = registry().lock();
    let (&start, &(len, fd)) = map.range(..=at).next_back()?;
    (at + piece.len() <= start + len).then_some((fd, (at - start) as u64))
}

/// Spools alive now.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_land_in_the_file_and_are_found() {
        let mut s = Spool::new(40_000, true).expect("memfd");
        let a = s.append(&[Bytes::from(vec![1u8; 20_000])]).unwrap();
        let b = s
            .append(&[
                Bytes::from(vec![2u8; 10_000]),
                Bytes::from(vec![3u8; 10_000]),
            ])
            .unwrap();
        assert_eq!(s.remaining(), 0);
        assert!(s.append(&[Bytes::from_static(b"x")]).is_none());
        assert!(a.iter().all(|&x| x == 1));
        assert_eq!(&b[..10_000], &[2u8; 10_000][..]);
        assert_eq!(&b[10_000..], &[3u8; 10_000][..]);
        let fd = s.fd();
        assert_eq!(find(&a), Some((fd, 0)));
        assert_eq!(find(&b.slice(10_000..)), Some((fd, 30_000)));
        assert_eq!(find(&[0u8; 100]), None);
        // The file holds the same bytes (what sendfile will send).
        let mut buf = vec![0u8; 4];
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), 4, 29_998) };
        assert_eq!(n, 4);
        assert_eq!(buf, [2, 2, 3, 3]);
        // The mapping lives as long as any piece of it.
        let base = a.as_ptr() as usize;
        let registered = || registry().lock().contains_key(&base);
        drop(s);
        drop(a);
        assert!(registered());
        drop(b);
        assert!(!registered());
    }

    #[test]
    fn sizes_outside_the_range_get_no_spool() {
        assert!(Spool::new(MIN_LEN - 1, true).is_none());
        assert!(Spool::new(MAX_LEN + 1, true).is_none());
    }

    #[test]
    fn the_limit_leaves_descriptors_for_viewers() {
        assert_eq!(limit_for(20_000, 19_000), 468);
        assert_eq!(limit_for(1_100, 1_000), 18);
        assert_eq!(limit_for(256, 19_000), 0);
        assert_eq!(limit_for(1 << 20, 1_000), MAX_SPOOLS);
    }
}
