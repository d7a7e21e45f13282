//! Unit tests of single flight: lead, follow and hit on one table entry;
//! admission before any slot opens; the per-origin cap and the budget; no
//! zombie flight after a panicking fill.

use super::*;
use crate::slot::{Head, HeadWait};
use http::{HeaderMap, StatusCode};

fn flights(limits: Limits, budget: usize) -> Arc<Flights> {
    Flights::new(
        Cache::new(1 << 20, 1 << 20),
        Budget::new(budget),
        limits,
        Arc::new(Metrics::new()),
    )
}

fn limits() -> Limits {
    Limits {
        max_viewers_per_slot: 2,
        max_parked: 3,
        max_fetches: 2,
        max_fetches_per_origin: 2,
        admit_reserve: 1024,
    }
}

fn key(origin: &str, p: &str) -> ChunkKey {
    ChunkKey {
        authority: origin.into(),
        path: p.into(),
    }
}

fn head() -> Head {
    Head {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        len: None,
    }
}

#[tokio::test]
async fn lead_follow_hit_and_one_table_entry() {
    let f = flights(limits(), 1 << 20);
    let k = key("o:1", "/a");
    let Ok(Join::Lead(mut lead, fill)) = f.join(&k) else {
        panic!("lead")
    };
    let Ok(Join::Follow(mut follow)) = f.join(&k) else {
        panic!("follow")
    };
    assert_eq!(f.in_flight(), 1);
    assert_eq!(f.parked(), 2);
    fill.writer().publish_head(head()).unwrap();
    fill.writer()
        .push(bytes::Bytes::from_static(b"xyz"))
        .unwrap();
    fill.finish(Some(Store {
        initial_age: Duration::ZERO,
        ttl: Duration::from_secs(60),
    }));
    assert_eq!(f.in_flight(), 0);
    for p in [&mut lead, &mut follow] {
        assert!(matches!(p.viewer.head().await, HeadWait::Head(_)));
        assert_eq!(p.viewer.next_piece().await.unwrap().unwrap(), "xyz");
    }
    assert!(matches!(f.join(&k), Ok(Join::Hit(_))));
    drop((lead, follow));
    assert_eq!(f.parked(), 0);
}

#[test]
fn admission_comes_before_any_slot_opens() {
    let f = flights(limits(), 1 << 20);
    let (a, b, c) = (key("o:1", "/a"), key("o:1", "/b"), key("o:2", "/c"));
    let Ok(Join::Lead(p1, f1)) = f.join(&a) else {
        panic!()
    };
    let Ok(Join::Follow(p2)) = f.join(&a) else {
        panic!()
    };
    assert!(matches!(f.join(&a), Err(Refused::SlotFull)));
    let Ok(Join::Lead(p3, f3)) = f.join(&b) else {
        panic!()
    };
    // Both fetch places are taken: a third key is refused without a slot.
    assert!(matches!(f.join(&c), Err(Refused::Fetches)));
    assert_eq!(f.in_flight(), 2);
    drop(f3);
    // max-parked (3) is full: a new lead is refused and opens nothing.
    assert!(matches!(f.join(&c), Err(Refused::Parked)));
    assert_eq!(f.in_flight(), 1);
    drop((p1, p2, p3, f1));
    assert_eq!((f.in_flight(), f.parked()), (0, 0));
}

#[test]
fn per_origin_cap_and_memory_budget() {
    let mut l = limits();
    l.max_fetches = 10;
    l.max_fetches_per_origin = 1;
    l.max_parked = 10;
    let f = flights(l, 4096);
    let Ok(Join::Lead(_p, _fill)) = f.join(&key("o:1", "/a")) else {
        panic!()
    };
    assert!(matches!(
        f.join(&key("o:1", "/b")),
        Err(Refused::OriginFetches)
    ));
    let Ok(Join::Lead(_q, fill)) = f.join(&key("o:2", "/a")) else {
        panic!()
    };
    // The body takes the budget below the admission reserve.
    fill.writer().publish_head(head()).unwrap();
    fill.writer()
        .push(bytes::Bytes::from(vec![0; 3000]))
        .unwrap();
    assert!(matches!(f.join(&key("o:3", "/a")), Err(Refused::Memory)));
    assert!(f.prefetch(&key("o:3", "/a")).is_none());
}

#[tokio::test]
async fn a_panicking_fill_leaves_no_zombie() {
    let f = flights(limits(), 1 << 20);
    let k = key("o:1", "/a");
    let Ok(Join::Lead(mut p, fill)) = f.join(&k) else {
        panic!()
    };
    let task = tokio::spawn(async move {
        let _fill = fill;
        panic!("fill panics");
    });
    assert!(task.await.is_err());
    assert!(matches!(
        p.viewer.head().await,
        HeadWait::Failed(SlotError::Vanished)
    ));
    assert_eq!(f.in_flight(), 0);
    assert!(
        matches!(f.join(&k), Ok(Join::Lead(..))),
        "the next request starts afresh"
    );
}
