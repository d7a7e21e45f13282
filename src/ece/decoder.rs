//! The streaming decoder: ciphertext is pushed as it arrives, and each
//! record's plaintext is released once its tag verifies and the byte after
//! it shows it is not the last (or at `finish`). It holds at most one record.

use super::keys::{open, Keys};
use super::{EceError, Header};

/// Streaming decoder: push ciphertext as it arrives, take verified plaintext.
pub struct Decoder<F> {
    lookup: F,
    buf: Vec<u8>,
    state: State,
}

enum State {
    Header,
    Records {
        keys: Box<Keys>,
        rs: usize,
        seq: u64,
    },
    Done,
}

impl<F: FnMut(&[u8]) -> Option<Vec<u8>>> Decoder<F> {
    /// A decoder that asks `lookup(keyid)` for the key named in the header.
    pub fn new(lookup: F) -> Self {
        Decoder {
            lookup,
            buf: Vec::new(),
            state: State::Header,
        }
    }

    /// Whether the header has been read and its key found: from then on
    /// every byte pushed is record data.
    pub fn started(&self) -> bool {
        !matches!(self.state, State::Header)
    }

    /// Feeds ciphertext; returns plaintext of every record now complete and
    /// verified. A record is released only when the next byte after it
    /// arrives (or at `finish`), because only then is it known whether it is
    /// the last.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, EceError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            match &mut self.state {
                State::Header => {
                    let Some((h, used)) = Header::parse(&self.buf)? else {
                        return Ok(out);
                    };
                    let ikm = (self.lookup)(&h.keyid).ok_or_else(|| {
                        EceError::UnknownKey(String::from_utf8_lossy(&h.keyid).into_owned())
                    })?;
                    self.buf.drain(..used);
                    self.state = State::Records {
                        keys: Box::new(Keys::derive(&ikm, &h.salt)),
                        rs: h.rs as usize,
                        seq: 0,
                    };
                }
                State::Records { keys, rs, seq } => {
                    // A full record followed by more data cannot be the last.
                    if self.buf.len() <= *rs {
                        return Ok(out);
                    }
                    let rec: Vec<u8> = self.buf.drain(..*rs).collect();
                    let plain = open(keys, *seq, &rec)?;
                    match plain.1 {
                        1 => {}
                        _ => return Err(EceError::Record(*seq)),
                    }
                    out.extend_from_slice(&plain.0);
                    *seq += 1;
                }
                State::Done => {
                    return if self.buf.is_empty() {
                        Ok(out)
                    } else {
                        Err(EceError::Trailing)
                    };
                }
            }
        }
    }

    /// Ends the stream: decrypts the final record and checks it is marked
    /// last.
    pub fn finish(&mut self) -> Result<Vec<u8>, EceError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Header => Err(EceError::Truncated),
            State::Done => Ok(Vec::new()),
            State::Records { keys, seq, .. } => {
                if self.buf.is_empty() {
                    return Err(EceError::Truncated);
                }
                let rec = std::mem::take(&mut self.buf);
                let (plain, delim) = open(&keys, seq, &rec)?;
                if delim != 2 {
                    return Err(EceError::Truncated);
                }
                Ok(plain)
            }
        }
    }
}
