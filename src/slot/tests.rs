//! Unit tests of the slot: fan-out to early and late viewers, failure and
//! a dropped writer, piece merging, the budget, and range reads.

use super::body::COMPACT_PIECE;
use super::*;

fn head() -> Head {
    Head {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        len: None,
    }
}

fn big(c: u8) -> Bytes {
    Bytes::from(vec![c; MERGE_BELOW])
}

#[tokio::test]
async fn late_joiner_gets_everything_and_live_tail() {
    let (slot, w) = Slot::unbounded();
    let mut early = slot.subscribe();
    w.publish_head(head()).unwrap();
    w.push(big(b'a')).unwrap();
    let mut late = slot.subscribe();
    assert!(matches!(late.head().await, HeadWait::Head(_)));
    assert_eq!(late.next_piece().await.unwrap().unwrap(), big(b'a'));
    let waiter = tokio::spawn(async move { late.next_piece().await });
    w.push(big(b'c')).unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().unwrap(), big(b'c'));
    let (_, body) = w.finish().unwrap();
    assert!(matches!(early.head().await, HeadWait::Head(_)));
    assert_eq!(early.next_piece().await.unwrap().unwrap(), big(b'a'));
    assert_eq!(early.next_piece().await.unwrap().unwrap(), big(b'c'));
    assert!(early.next_piece().await.is_none());
    assert_eq!((body.pieces(), body.len()), (2, 2 * MERGE_BELOW as u64));
}

#[tokio::test]
async fn failure_reaches_every_viewer_and_is_not_complete() {
    let (slot, w) = Slot::unbounded();
    let mut v = slot.subscribe();
    w.publish_head(head()).unwrap();
    w.push(Bytes::from_static(b"partial")).unwrap();
    w.fail(SlotError::Truncated("reset".into()));
    v.head().await;
    assert!(v.next_piece().await.unwrap().is_ok());
    assert!(matches!(
        v.next_piece().await,
        Some(Err(SlotError::Truncated(_)))
    ));
}

#[tokio::test]
async fn a_dropped_writer_fails_the_slot() {
    let (slot, w) = Slot::unbounded();
    let mut v = slot.subscribe();
    drop(w);
    assert!(matches!(
        v.head().await,
        HeadWait::Failed(SlotError::Vanished)
    ));

    // A writer dropped mid-body (a panicking fill task) ends the body in
    // an error, never in a clean end.
    let (slot, w) = Slot::unbounded();
    let mut v = slot.subscribe();
    w.publish_head(head()).unwrap();
    w.push(Bytes::from_static(b"half")).unwrap();
    let task = tokio::spawn(async move {
        let _w = w;
        panic!("fill task panics");
    });
    assert!(task.await.is_err());
    v.head().await;
    assert_eq!(v.next_piece().await.unwrap().unwrap(), "half");
    assert!(matches!(
        v.next_piece().await,
        Some(Err(SlotError::Vanished))
    ));
}

#[tokio::test]
async fn viewers_are_counted() {
    let (slot, _w) = Slot::unbounded();
    let a = slot.subscribe();
    let b = slot.subscribe();
    assert_eq!(slot.viewers(), 2);
    drop(a);
    assert_eq!(slot.viewers(), 1);
    drop(b);
    assert_eq!(slot.viewers(), 0);
}

#[tokio::test]
async fn tiny_pieces_are_merged_and_charged_with_overhead() {
    let budget = Budget::new(8 << 20);
    let (slot, w) = Slot::new(&budget);
    let mut v = slot.subscribe();
    w.publish_head(head()).unwrap();
    let n = 100_000;
    // One byte per piece, as a hostile chunked origin sends it, in
    // bursts of 1,000 and then one at a time.
    for burst in 0..50 {
        w.push_all((0..1000).map(|i| Bytes::from(vec![((burst * 1000 + i) % 251) as u8])))
            .unwrap();
    }
    for i in 50_000..n {
        w.push(Bytes::from(vec![(i % 251) as u8])).unwrap();
    }
    assert!(budget.used() >= n + (n - 50_000) * PIECE_OVERHEAD);
    let (_, body) = w.finish().unwrap();
    // Compacted at the end: the piece count follows the size.
    assert!(body.pieces() <= n / COMPACT_PIECE + 1, "{}", body.pieces());
    let mut got = Vec::new();
    v.head().await;
    while let Some(p) = v.next_piece().await {
        got.extend_from_slice(&p.unwrap());
    }
    assert_eq!(got.len(), n);
    assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    drop((v, slot, body));
    assert_eq!(budget.used(), 0, "every charge is released");
}

#[tokio::test]
async fn the_budget_bounds_a_body() {
    let budget = Budget::new(64 * 1024);
    let (slot, w) = Slot::new(&budget);
    w.publish_head(head()).unwrap();
    w.push(big(1)).unwrap();
    w.push(big(2)).unwrap();
    assert!(w.push(Bytes::from(vec![3; 40_000])).is_err());
    assert!(budget.used() <= budget.limit());
    // A declared length is charged before the head goes out.
    let (_, w2) = Slot::new(&budget);
    let mut h = head();
    h.len = Some(1 << 20);
    assert!(w2.publish_head(h).is_err());
    drop((slot, w, w2));
    assert_eq!(budget.used(), 0);
}

#[test]
fn reader_slices_ranges_across_pieces() {
    let (_slot, w) = Slot::unbounded();
    w.publish_head(head()).unwrap();
    let mut all = Vec::new();
    for c in 0..4u8 {
        let p = Bytes::from(vec![c; MERGE_BELOW + 7]);
        all.extend_from_slice(&p);
        w.push(p).unwrap();
    }
    let (_, body) = w.finish().unwrap();
    let cat = |s: u64, e: u64| {
        BodyReader::new(body.clone(), s, e)
            .collect::<Vec<_>>()
            .concat()
    };
    let l = all.len() as u64;
    for (s, e) in [
        (0, l),
        (3, 9),
        (MERGE_BELOW as u64, MERGE_BELOW as u64 + 20),
        (l - 1, l),
        (5, l + 100),
    ] {
        assert_eq!(cat(s, e), &all[s as usize..e.min(l) as usize]);
    }
}
