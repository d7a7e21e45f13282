//! The checks a response head passes before anyone sees it: its decoded size
//! against [`UpstreamLimits::max_head`](super::UpstreamLimits) (HTTP/2
//! parents; hyper enforces the limit on HTTP/1.1 itself), and the framing
//! rules of RFC 9112 §6.3 (see the module doc of [`crate::upstream`]).

use http::{HeaderMap, HeaderValue, Response};
use http_body::Body as _;
use hyper::body::Incoming;

use super::Failure;

/// Refuses a head whose decoded size (RFC 9113 §6.5.2: name + value + 32
/// per field, `:status` included) is over `limit`.
pub(super) fn check_head_size(headers: &HeaderMap, limit: usize) -> Result<(), Failure> {
    let size = headers
        .iter()
        .fold(":status".len() + 3 + 32, |acc, (k, v)| {
            acc.saturating_add(k.as_str().len() + v.len() + 32)
        });
    if size > limit {
        return Err(Failure::HeadTooLarge { limit });
    }
    Ok(())
}

/// Applies RFC 9112 §6.3 to a response before anyone sees it: with
/// `Transfer-Encoding`, `Content-Length` is removed (the body is delimited
/// by the transfer coding, as hyper already decodes it). Repeated equal
/// `Content-Length` values, which hyper accepts (`5, 5`, or two lines),
/// become one. Returns true when the framing was contradictory, so the
/// connection must not be reused.
pub(super) fn normalize_framing(resp: &mut Response<Incoming>) -> bool {
    let exact = resp.body().size_hint().exact();
    let bodiless = matches!(resp.status().as_u16(), 204 | 304);
    let headers = resp.headers_mut();
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return headers.remove(http::header::CONTENT_LENGTH).is_some();
    }
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let repeated = match values.next() {
        Some(first) => values.next().is_some() || first.as_bytes().contains(&b','),
        None => false,
    };
    if let (true, false, Some(n)) = (repeated, bodiless, exact) {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_size_counts_fields_like_h2() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("12345"));
        // :status (7 + 3 + 32) + x-a (3 + 5 + 32).
        assert!(check_head_size(&h, 82).is_ok());
        assert!(matches!(
            check_head_size(&h, 81),
            Err(Failure::HeadTooLarge { limit: 81 })
        ));
    }
}
