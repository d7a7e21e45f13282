//! The decryption driver: a response becomes verified plaintext on the
//! output, record by record, as it streams in. It applies the checks of
//! docs/protocol.md §8 in order (status and `Content-Encoding` before any
//! byte, `rs` before a record is buffered, the key id before the API is
//! asked for a key, every record's tag under the name-bound key) and writes
//! only what lies past what earlier sources already wrote for this chunk.

use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Client, Fail, Name, SourceError};
use crate::ece::{self, Decoder, EceError, Header};

/// What a chunk's body must prove: its binding name and its key id.
pub(super) struct Expect {
    /// The chunk's binding name (`manifest::binding_name`).
    pub(super) binding: String,
    /// The key id its title's manifest gives.
    pub(super) keyid: String,
}

/// A decoder that already holds the one key its chunk needs.
type KeyedDecoder = Decoder<Box<dyn FnMut(&[u8]) -> Option<Vec<u8>> + Send>>;

impl Client {
    /// Checks `resp` and writes its verified plaintext past `written` to
    /// `out`; the source is blamed for anything that does not verify.
    pub(super) async fn decrypt<W: AsyncWrite + Unpin>(
        &self,
        resp: Response<Incoming>,
        name: &Name,
        want: &Expect,
        out: &mut W,
        written: &mut u64,
    ) -> Result<(), Fail> {
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(SourceError::Status(status).into());
        }
        // Without the coding the body is unverifiable: not one byte of it
        // may reach the output.
        ece::check_coding(resp.headers()).map_err(SourceError::Ece)?;
        let mut body = resp.into_body();
        let mut pos = 0u64; // plaintext offset within this attempt
        let mut head: Vec<u8> = Vec::new();
        let mut dec: Option<KeyedDecoder> = None;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(f) => f.map_err(|e| SourceError::Body(e.to_string()))?,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let plain = if let Some(d) = dec.as_mut() {
                d.push(&data).map_err(SourceError::Ece)?
            } else {
                head.extend_from_slice(&data);
                // `rs` is bounded here, before the decoder buffers a record.
                let Some((h, _)) = Header::parse(&head).map_err(SourceError::Ece)? else {
                    continue;
                };
                let ikm = self.chunk_key(name, want, &h).await?;
                let mut d: KeyedDecoder = Decoder::new(Box::new(move |_| Some(ikm.to_vec())));
                let p = d
                    .push(&std::mem::take(&mut head))
                    .map_err(SourceError::Ece)?;
                dec = Some(d);
                p
            };
            emit(out, &plain, &mut pos, written).await?;
        }
        let d = dec.as_mut().ok_or(SourceError::Ece(EceError::Truncated))?;
        let plain = d.finish().map_err(SourceError::Ece)?;
        emit(out, &plain, &mut pos, written).await?;
        if pos < *written {
            return Err(SourceError::Inconsistent {
                got: pos,
                written: *written,
            }
            .into());
        }
        out.flush().await.map_err(Fail::Output)?;
        Ok(())
    }

    /// The RFC 8188 IKM for a body whose header is `h`: only if the header
    /// names the chunk's own key id (checked before the API is asked for
    /// anything), and bound to the chunk's binding name.
    async fn chunk_key(&self, name: &Name, want: &Expect, h: &Header) -> Result<[u8; 16], Fail> {
        if h.keyid != want.keyid.as_bytes() {
            return Err(SourceError::KeyId {
                got: String::from_utf8_lossy(&h.keyid).into_owned(),
                expected: want.keyid.clone(),
            }
            .into());
        }
        let key = self
            .key(&name.authority, &want.keyid)
            .await
            .map_err(|e| SourceError::Key(e.to_string()))?;
        Ok(ece::name_key(&key, &want.binding))
    }
}

/// Writes the part of `plain` (which starts at plaintext offset `pos`) that
/// lies beyond what was already written for this chunk. `written` advances
/// after every `write` call rather than after the whole slice: if the
/// attempt is cancelled (its timeout) mid-slice, the bytes already out are
/// counted and the next source does not write them again.
async fn emit<W: AsyncWrite + Unpin>(
    out: &mut W,
    plain: &[u8],
    pos: &mut u64,
    written: &mut u64,
) -> Result<(), Fail> {
    let end = *pos + plain.len() as u64;
    while end > *written {
        let from = (*written - *pos) as usize;
        let n = out.write(&plain[from..]).await.map_err(Fail::Output)?;
        if n == 0 {
            return Err(Fail::Output(std::io::ErrorKind::WriteZero.into()));
        }
        *written += n as u64;
    }
    *pos = end;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn emit_skips_what_was_already_written() {
        let mut out = Vec::new();
        let mut written = 0;
        let mut pos = 0;
        emit(&mut out, b"hello ", &mut pos, &mut written)
            .await
            .unwrap();
        // A second source starts over: the first 6 bytes are not repeated.
        let mut pos = 0;
        emit(&mut out, b"hel", &mut pos, &mut written)
            .await
            .unwrap();
        emit(&mut out, b"lo world", &mut pos, &mut written)
            .await
            .unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(written, 11);
    }

    /// A writer that takes at most 3 bytes per call and then blocks once its
    /// budget is spent.
    struct Stingy {
        got: Vec<u8>,
        budget: usize,
    }

    impl AsyncWrite for Stingy {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(3).min(self.budget);
            if n == 0 {
                return std::task::Poll::Pending;
            }
            self.budget -= n;
            self.got.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn an_attempt_cancelled_mid_write_duplicates_nothing() {
        use futures_util::FutureExt;
        let mut out = Stingy {
            got: Vec::new(),
            budget: 7,
        };
        let (mut written, mut pos) = (0, 0);
        // The first source's record is cut off after 7 bytes by cancellation
        // (as the fetch timeout does): the future is dropped while pending.
        let first = emit(&mut out, b"hello world", &mut pos, &mut written).now_or_never();
        assert!(first.is_none(), "the write blocked");
        assert_eq!(written, 7, "bytes already out are counted");
        out.budget = usize::MAX;
        let mut pos = 0;
        emit(&mut out, b"hello world", &mut pos, &mut written)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(out.got, b"hello world");
    }
}
