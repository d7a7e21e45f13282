//! Whole titles and live streams: a VOD title's manifest lists its chunks
//! and their key ids, fetched in order; a live stream is followed from the
//! live edge (or a given chunk), one chunk after another, each fetched like
//! any other chunk.

use tokio::io::AsyncWrite;

use super::{Client, ClientError, Name};
use crate::manifest::Manifest;

/// Fetches a whole VOD title (its manifest's chunks, in order) into `out`.
pub async fn get_title<W: AsyncWrite + Unpin>(
    client: &Client,
    title: &Name,
    out: &mut W,
) -> Result<u64, ClientError> {
    let Manifest::Vod { chunks } = client.manifest(title).await? else {
        return Err(ClientError::Api(format!(
            "{title} is a live stream: use play"
        )));
    };
    let mut total = 0;
    for c in &chunks {
        total += client.fetch_chunk(c, out).await?.bytes;
    }
    Ok(total)
}

/// Follows a live stream from `from` (default: the live edge) for at most
/// `count` chunks, or to its end.
pub async fn play<W: AsyncWrite + Unpin>(
    client: &Client,
    stream: &Name,
    from: Option<u64>,
    count: Option<u64>,
    out: &mut W,
) -> Result<u64, ClientError> {
    let Manifest::Live {
        template,
        keyid_template,
        key_rotation,
        edge,
        last,
        ..
    } = client.manifest(stream).await?
    else {
        return Err(ClientError::Api(format!(
            "{stream} is not a live stream: use get"
        )));
    };
    let start = from.unwrap_or(edge.max(0) as u64);
    let mut n = 0;
    let mut seq = start;
    while count.is_none_or(|c| n < c) && last.is_none_or(|l| seq <= l) {
        let c = Manifest::live_chunk(&template, &keyid_template, key_rotation, seq);
        let f = client.fetch_chunk(&c, out).await?;
        tracing::debug!(seq, bytes = f.bytes, source = %f.source, "chunk played");
        n += 1;
        seq += 1;
    }
    Ok(n)
}
