//! A slot's body: shared `Bytes` pieces and their offsets, charged to the
//! memory budget.
//!
//! The fill appends pieces (short ones merged on the way in); viewers read
//! from any offset without copying ([`Body::read_at`]); a finished body with
//! many tiny pieces is compacted once, then frozen into an `Arc` that the
//! cache and every late reader ([`BodyReader`]) share.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::budget::{Charge, Exhausted, PIECE_OVERHEAD};

/// Pieces shorter than this are merged with their neighbours on arrival.
pub const MERGE_BELOW: usize = 16 * 1024;
/// When a finished body averages fewer bytes per piece than this, it is
/// re-cut into [`COMPACT_PIECE`]-byte pieces before it is kept.
const COMPACT_AVERAGE: u64 = 4 * 1024;
/// Piece size of a compacted body.
pub(super) const COMPACT_PIECE: usize = 64 * 1024;

/// A body: shared pieces and their start offsets, charged to the budget for
/// as long as anything holds it.
#[derive(Debug)]
pub struct Body {
    pieces: Vec<Bytes>,
    starts: Vec<u64>,
    len: u64,
    pub(super) charge: Charge,
}

impl Body {
    pub(super) fn new(charge: Charge) -> Body {
        Body {
            pieces: Vec::new(),
            starts: Vec::new(),
            len: 0,
            charge,
        }
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many pieces it is held in.
    pub fn pieces(&self) -> usize {
        self.pieces.len()
    }

    /// Bytes charged to the budget for it.
    pub fn charged(&self) -> usize {
        self.charge.held()
    }

    /// The bytes from `pos` to the end of the piece holding `pos`, without
    /// copying; `hint` is the piece index the caller found last time.
    pub fn read_at(&self, pos: u64, hint: &mut usize) -> Option<Bytes> {
        if pos >= self.len {
            return None;
        }
        let i = match self.starts.get(*hint) {
            Some(&s) if s <= pos && pos < s + self.pieces[*hint].len() as u64 => *hint,
            _ => self.starts.partition_point(|&s| s <= pos) - 1,
        };
        *hint = i;
        Some(self.pieces[i].slice((pos - self.starts[i]) as usize..))
    }

    /// Adds pieces, merging short ones, and charges them (with `extra` bytes
    /// more, for the head) to the budget. On failure nothing is added.
    pub(super) fn append(
        &mut self,
        pieces: impl IntoIterator<Item = Bytes>,
        extra: usize,
    ) -> Result<bool, Exhausted> {
        let merged = merge_small(pieces);
        if merged.is_empty() {
            return Ok(false);
        }
        let add: u64 = merged.iter().map(|b| b.len() as u64).sum();
        let need = self.len + add;
        let count = self.pieces.len() + merged.len();
        self.cover(need as usize + count * PIECE_OVERHEAD + extra)?;
        for b in merged {
            self.starts.push(self.len);
            self.len += b.len() as u64;
            self.pieces.push(b);
        }
        Ok(true)
    }

    /// Grows the charge to at least `total` bytes.
    pub(super) fn cover(&mut self, total: usize) -> Result<(), Exhausted> {
        match total.checked_sub(self.charge.held()) {
            Some(more) if more > 0 => self.charge.grow(more),
            _ => Ok(()),
        }
    }

    /// Re-cuts a body of many tiny pieces into few large ones (one copy, at
    /// the end of the fill, not per viewer).
    pub(super) fn compact(&mut self) {
        if self.pieces.len() < 16 || self.len / self.pieces.len() as u64 >= COMPACT_AVERAGE {
            return;
        }
        let mut out = Vec::with_capacity(self.len as usize / COMPACT_PIECE + 1);
        let mut buf = BytesMut::new();
        for p in self.pieces.drain(..) {
            buf.extend_from_slice(&p);
            while buf.len() >= COMPACT_PIECE {
                out.push(buf.split_to(COMPACT_PIECE).freeze());
            }
        }
        if !buf.is_empty() {
            out.push(buf.freeze());
        }
        self.starts.clear();
        let mut pos = 0;
        for p in &out {
            self.starts.push(pos);
            pos += p.len() as u64;
        }
        self.pieces = out;
    }
}

/// Merges runs of short pieces into fresh, exactly sized buffers. Copying
/// them also stops a tiny slice from pinning the large read buffer it came
/// from. A piece in a spool is kept as it is: it pins only its own body's
/// memory file, and a copy would lose the zero-copy send.
fn merge_small(pieces: impl IntoIterator<Item = Bytes>) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut run: Option<BytesMut> = None;
    for p in pieces.into_iter().filter(|p| !p.is_empty()) {
        if p.len() >= MERGE_BELOW || crate::spool::find(&p).is_some() {
            if let Some(r) = run.take() {
                out.push(r.freeze());
            }
            out.push(p);
            continue;
        }
        let r = run.get_or_insert_with(BytesMut::new);
        r.extend_from_slice(&p);
        if r.len() >= MERGE_BELOW {
            out.push(run.take().expect("just filled").freeze());
        }
    }
    if let Some(r) = run {
        out.push(r.freeze());
    }
    out
}

/// Reads a frozen body from `pos` up to `end` (exclusive), piece by piece,
/// sharing the bytes. A cache hit's whole per-viewer state is this.
#[derive(Debug)]
pub struct BodyReader {
    body: Arc<Body>,
    pos: u64,
    end: u64,
    hint: usize,
}

impl BodyReader {
    /// Reads `start..end` of `body`.
    pub fn new(body: Arc<Body>, start: u64, end: u64) -> BodyReader {
        let end = end.min(body.len());
        BodyReader {
            body,
            pos: start,
            end,
            hint: 0,
        }
    }
}

impl Iterator for BodyReader {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.pos >= self.end {
            return None;
        }
        let mut b = self.body.read_at(self.pos, &mut self.hint)?;
        b.truncate((self.end - self.pos).min(b.len() as u64) as usize);
        self.pos += b.len() as u64;
        Some(b)
    }
}
