//! One LL-HLS player: two loops sharing the newest media playlist through a
//! `watch` channel, as hls.js's playlist loader and fragment loader run side
//! by side.
//!
//! The playlist loop follows hls.js 1.x's `BasePlaylistController`: after a
//! reload that advanced, ask at once for the part after the newest one
//! (`_HLS_msn`/`_HLS_part`, plus `_HLS_skip` when the server offers delta
//! updates), with hls.js's CDN tune-in (a response older than one part, by
//! `Age` plus time since it arrived, moves the request ahead); a reload that
//! did not advance waits half a target duration and reloads without
//! directives; a failed one retries after a second (at once and without
//! directives after a timeout).
//!
//! The media loop fetches the init section, then parts one at a time from
//! the one holding `PART-HOLD-BACK` before the edge; when the next part is
//! not listed yet it fetches the preload-hinted part (held by the origin
//! until written) and waits for the playlist to list it.
//!
//! What a player saw goes into its own [`PlayerRecord`] (no lock per part),
//! returned when it stops; the request keys the run needs for the origin's
//! counts go into the shared [`Ctx::keys`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use parking_lot::Mutex;
use tokio::sync::watch;

use mlcache::protocol::now_ns;

use super::cache::{ParseCache, Parsed};
use super::playlist::{self, MediaPlaylist};
use super::HlsOpts;
use crate::net::Client;

/// What kind of request a key is, for the origin's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A part (listed or hinted).
    Part,
    /// A blocking playlist reload (with `_HLS_msn`): one playlist version.
    Version,
    /// The multivariant playlist, a media playlist without directives, the
    /// init section.
    Other,
}

/// What the run knows about one origin path-and-query.
#[derive(Debug, Clone)]
pub(super) struct KeyInfo {
    pub(super) kind: Kind,
    /// A relay player got it inside the measurement window.
    pub(super) relay_in_window: bool,
    /// Requests the control group sent for it whose response head came
    /// (so the origin surely counted them).
    pub(super) control_sent: u64,
    /// Control requests for it without a response head (failed, or cut
    /// at the stop): the origin may or may not have counted them, so the
    /// key's count is not exact and is left out.
    pub(super) control_unsure: u64,
}

/// What every player of a run shares.
pub(super) struct Ctx {
    /// The run's options.
    pub(super) opts: HlsOpts,
    /// Parts completed after this are measured ...
    pub(super) window_start: Instant,
    /// ... and players stop asking then.
    pub(super) stop: Instant,
    /// Origin path-and-query → what it is and who asked.
    pub(super) keys: Mutex<HashMap<String, KeyInfo>>,
    /// Parts delivered to all players (progress).
    pub(super) parts_total: AtomicU64,
    /// Playlists delivered to all players (progress).
    pub(super) playlists_total: AtomicU64,
    /// Errors of all players (progress).
    pub(super) errors_total: AtomicU64,
    /// Body bytes delivered to all players.
    pub(super) bytes: AtomicU64,
    /// Body bytes delivered per group.
    pub(super) group_bytes: Vec<AtomicU64>,
    /// Identical playlist bodies are parsed once.
    pub(super) parse_cache: ParseCache,
}

impl Ctx {
    /// Notes a request for `key`: a relay player's answered inside the
    /// window, or a control player's sent (`control` +1) and answered
    /// (`control` -1 on the unsure count, +1 on the sent count).
    fn note(&self, key: &str, kind: Kind, relay_in_window: bool, control: i8) {
        let mut keys = self.keys.lock();
        let e = match keys.get_mut(key) {
            Some(e) => e,
            None => keys.entry(key.to_string()).or_insert(KeyInfo {
                kind,
                relay_in_window: false,
                control_sent: 0,
                control_unsure: 0,
            }),
        };
        e.relay_in_window |= relay_in_window;
        match control {
            1 => e.control_unsure += 1,
            -1 => {
                e.control_unsure -= 1;
                e.control_sent += 1;
            }
            _ => {}
        }
    }
}

/// A part's arrival at one player.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival {
    /// [`key_hash`] of the part's origin path.
    pub(super) key: u64,
    /// First and last byte, Unix ns.
    pub(super) first_ns: u64,
    pub(super) last_ns: u64,
    /// Completed inside the measurement window.
    pub(super) in_window: bool,
}

/// Everything one player saw.
#[derive(Debug, Default)]
pub(super) struct PlayerRecord {
    /// Parts completed inside the window (a control player's: all of them).
    pub(super) arrivals: Vec<Arrival>,
    /// Blocking playlist reloads answered inside the window.
    pub(super) versions: u64,
    /// Reloads that did not advance.
    pub(super) unchanged: u64,
    /// Parts fetched on a preload hint.
    pub(super) hinted: u64,
    /// Parts skipped because the player fell out of the playlist.
    pub(super) missed: u64,
    /// Gaps of more than three part targets between two parts (or before
    /// the end), inside the window.
    pub(super) stalls: u64,
    /// When the newest part arrived, and the gap that counts as a stall.
    pub(super) last_part: Option<(Instant, Duration)>,
    /// Playlist errors by kind.
    pub(super) playlist_errors: BTreeMap<String, u64>,
    /// Part errors by kind.
    pub(super) part_errors: BTreeMap<String, u64>,
}

/// The hash parts are matched by between groups.
pub(super) fn key_hash(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// One response: status, body (when kept), first and last byte times, and
/// the `Age` header.
struct Got {
    status: StatusCode,
    body: Bytes,
    first_ns: u64,
    last_ns: u64,
    age: f64,
    /// Body length.
    len: u64,
}

/// A player's connection: its own HTTP/1.1 connection, reopened when it
/// breaks, or a handle on a shared HTTP/2 connection.
struct Conn {
    client: Option<Client>,
    src: Option<IpAddr>,
}

impl Conn {
    /// GETs `url` (which must lie under the group's target), keeping the
    /// body when `keep`. Errors are short kinds for the report.
    async fn get(
        &mut self,
        opts: &HlsOpts,
        target: std::net::SocketAddr,
        url: &str,
        keep: bool,
        range: Option<String>,
    ) -> Result<Got, String> {
        let rest = url.strip_prefix("http://").ok_or("not an http URL")?;
        let (authority, pq) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority != target.to_string() {
            return Err("URI on another host".into());
        }
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(
                Client::open(target, self.src, opts.h2)
                    .await
                    .map_err(|_| "connect")?,
            );
        }
        let client = self.client.as_mut().expect("opened above");
        let mut req = Request::get(if pq.is_empty() { "/" } else { pq }).header("host", authority);
        if let Some(r) = range {
            req = req.header(http::header::RANGE, r);
        }
        let req = req.body(Empty::new()).map_err(|_| "bad URL")?;
        let head = tokio::time::timeout(opts.head_timeout, client.send(req)).await;
        let resp = match head {
            Err(_) => {
                self.drop_h1();
                return Err("timeout".into());
            }
            Ok(Err(_)) => {
                self.drop_h1();
                return Err("request failed".into());
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let age = resp
            .headers()
            .get(http::header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let mut first_ns = 0;
        let mut len = 0u64;
        let mut buf = BytesMut::new();
        let mut body = resp.into_body();
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| "body cut")?;
                if let Ok(data) = frame.into_data() {
                    if first_ns == 0 && !data.is_empty() {
                        first_ns = now_ns();
                    }
                    len += data.len() as u64;
                    if keep {
                        buf.extend_from_slice(&data);
                    }
                }
            }
            Ok::<_, &'static str>(())
        };
        match tokio::time::timeout(opts.request_timeout, read).await {
            Err(_) => {
                self.drop_h1();
                return Err("timeout".into());
            }
            Ok(Err(e)) => {
                self.drop_h1();
                return Err(e.into());
            }
            Ok(Ok(())) => {}
        }
        let last_ns = now_ns();
        Ok(Got {
            status,
            body: buf.freeze(),
            first_ns: if first_ns == 0 { last_ns } else { first_ns },
            last_ns,
            age,
            len,
        })
    }

    /// An HTTP/1.1 connection in an unknown state is not reused; an HTTP/2
    /// stream failing leaves the shared connection alone.
    fn drop_h1(&mut self) {
        if matches!(self.client, Some(Client::H1(_))) {
            self.client = None;
        }
    }
}

/// The origin path-and-query of `url` under `prefix`.
fn origin_key<'a>(prefix: &str, url: &'a str) -> &'a str {
    url.strip_prefix(prefix).unwrap_or(url)
}

/// Everything a player's two loops share besides the playlist channel.
struct Player {
    ctx: Arc<Ctx>,
    g: usize,
    record: Mutex<PlayerRecord>,
}

impl Player {
    fn group(&self) -> &super::HlsGroup {
        &self.ctx.opts.groups[self.g]
    }

    fn in_window(&self, t: Instant) -> bool {
        t >= self.ctx.window_start && t < self.ctx.stop
    }

    fn playlist_error(&self, kind: &str) {
        self.ctx.errors_total.fetch_add(1, Ordering::Relaxed);
        *self
            .record
            .lock()
            .playlist_errors
            .entry(kind.to_string())
            .or_default() += 1;
    }

    fn part_error(&self, kind: &str) {
        self.ctx.errors_total.fetch_add(1, Ordering::Relaxed);
        *self
            .record
            .lock()
            .part_errors
            .entry(kind.to_string())
            .or_default() += 1;
    }

    /// GETs `url`, noting its key: control requests are counted as sent,
    /// relay requests once answered inside the window.
    async fn get(
        &self,
        conn: &mut Conn,
        url: &str,
        kind: Kind,
        keep: bool,
        range: Option<String>,
    ) -> Result<Got, String> {
        let group = self.group();
        let key = origin_key(&group.prefix, url);
        if !group.via_relay {
            self.ctx.note(key, kind, false, 1);
        }
        let got = conn
            .get(&self.ctx.opts, group.target, url, keep, range)
            .await?;
        if !group.via_relay {
            self.ctx.note(key, kind, false, -1);
        } else if got.status.is_success() && self.in_window(Instant::now()) {
            self.ctx.note(key, kind, true, 0);
        }
        self.ctx.bytes.fetch_add(got.len, Ordering::Relaxed);
        self.ctx.group_bytes[self.g].fetch_add(got.len, Ordering::Relaxed);
        Ok(got)
    }

    /// GETs a playlist and parses it (once per distinct body, through the
    /// run's parse cache); errors are counted.
    async fn playlist(&self, conn: &mut Conn, url: &str, kind: Kind) -> Option<(Parsed, Got)> {
        let got = match self.get(conn, url, kind, true, None).await {
            Ok(g) => g,
            Err(e) => {
                self.playlist_error(&e);
                return None;
            }
        };
        if got.status != StatusCode::OK {
            self.playlist_error(&format!("status {}", got.status.as_u16()));
            return None;
        }
        self.ctx.playlists_total.fetch_add(1, Ordering::Relaxed);
        match self.ctx.parse_cache.parse(&got.body) {
            Ok(p) => Some((p, got)),
            Err(e) => {
                self.playlist_error(&format!("parse: {e}"));
                None
            }
        }
    }
}

/// hls.js's playlist retry delay (`levelLoadPolicy` default, first retry).
const RETRY: Duration = Duration::from_secs(1);

/// One player of group `g`: starts at `start_at` on `shared` (an HTTP/2
/// handle) or its own HTTP/1.1 connections, stops at the run's stop time,
/// returns its record.
pub(super) async fn player(
    ctx: Arc<Ctx>,
    g: usize,
    start_at: Instant,
    shared: Option<Client>,
    src: Option<IpAddr>,
) -> PlayerRecord {
    tokio::time::sleep_until(start_at.into()).await;
    let stop = ctx.stop;
    let p = Arc::new(Player {
        ctx,
        g,
        record: Mutex::new(PlayerRecord::default()),
    });
    let mut pl_conn = Conn {
        client: shared.as_ref().and_then(|c| c.share()),
        src,
    };
    let media_conn = Conn {
        client: shared,
        src,
    };
    let work = async {
        // The multivariant playlist, then the first variant's media playlist
        // (hls.js starts on the first level listed unless told otherwise).
        let mut url = format!("{}{}", p.group().prefix, p.ctx.opts.path);
        let first = loop {
            match p.playlist(&mut pl_conn, &url, Kind::Other).await {
                Some((Parsed::Multivariant(v), _)) if !v.is_empty() => {
                    url = playlist::resolve(&url, &v[0].uri);
                }
                Some((Parsed::Media(m), got)) => break (m, got),
                _ => tokio::time::sleep(RETRY).await,
            }
        };
        let (tx, rx) = watch::channel(first.0.clone());
        tokio::join!(
            playlist_loop(&p, pl_conn, url.clone(), first, tx),
            media_loop(&p, media_conn, url, rx),
        );
    };
    let _ = tokio::time::timeout_at(stop.into(), work).await;
    let p = Arc::try_unwrap(p).ok().expect("the loops are done");
    let mut r = p.record.into_inner();
    // Waiting for a part at the end counts too.
    if let Some((t, gap)) = r.last_part {
        if stop.saturating_duration_since(t) > gap {
            r.stalls += 1;
        }
    }
    r
}

/// Blocking reloads, as hls.js schedules them.
async fn playlist_loop(
    p: &Player,
    mut conn: Conn,
    media_url: String,
    first: (Arc<MediaPlaylist>, Got),
    tx: watch::Sender<Arc<MediaPlaylist>>,
) {
    let (mut cur, mut got) = first;
    let mut prev_pos: Option<(i64, i64)> = None;
    let mut prev_goal = 0.0f64;
    loop {
        let received = Instant::now() - Duration::from_nanos(now_ns().saturating_sub(got.first_ns));
        let advanced = prev_pos.is_none_or(|pp| cur.position() > pp);
        prev_pos = Some(cur.position());
        let td = cur.target_duration;
        let (wait, url) = if !cur.server_control.can_block_reload {
            // Not low-latency: reload after the last segment's duration.
            let d = cur.segments.last().map_or(td, |s| s.duration.min(td));
            (Duration::from_secs_f64(d.max(0.05)), media_url.clone())
        } else if advanced {
            let (mut msn, mut part) = cur.next_directive();
            let mut send_msn = true;
            let pt = cur.part_target_or_td();
            let cdn_age = received.elapsed().as_secs_f64() + got.age;
            let mut goal = (cdn_age - pt).min(td * 1.5);
            let mut new_goal = 0.0;
            if goal > 0.0 {
                if cdn_age > td * 3.0 {
                    send_msn = false;
                } else if prev_goal > 0.0 && cdn_age - pt > prev_goal {
                    goal = 0.0;
                } else {
                    msn += (goal / td).floor() as u64;
                    if let Some(x) = part.as_mut() {
                        *x += ((goal % td) / pt).round() as u32;
                    }
                }
                new_goal = goal;
            }
            prev_goal = new_goal;
            let skip = playlist::skip_value(&cur, received.elapsed().as_secs_f64());
            let url = if send_msn {
                playlist::with_directives(&media_url, Some(msn), part, skip)
            } else {
                playlist::with_directives(&media_url, None, None, skip)
            };
            (Duration::ZERO, url)
        } else {
            p.record.lock().unchanged += 1;
            let skip = playlist::skip_value(&cur, received.elapsed().as_secs_f64());
            (
                Duration::from_secs_f64(td / 2.0),
                playlist::with_directives(&media_url, None, None, skip),
            )
        };
        tokio::time::sleep(wait).await;
        let mut url = url;
        loop {
            let blocking = url.contains("_HLS_msn=");
            let kind = if blocking { Kind::Version } else { Kind::Other };
            let before = Instant::now();
            match p.playlist(&mut conn, &url, kind).await {
                Some((Parsed::Media(m), g)) => {
                    if blocking && p.in_window(Instant::now()) {
                        p.record.lock().versions += 1;
                    }
                    cur = m;
                    got = g;
                    break;
                }
                Some((Parsed::Multivariant(_), _)) => p.playlist_error("variant is multivariant"),
                None => {}
            }
            // hls.js retries without directives: at once after a blocking
            // reload timed out, else after its retry delay.
            if !(blocking && before.elapsed() >= p.ctx.opts.head_timeout) {
                tokio::time::sleep(RETRY).await;
            }
            url = playlist::with_directives(&media_url, None, None, None);
        }
        // A delta update lists the recent segments only, which is all the
        // media loop looks at.
        let _ = tx.send(cur.clone());
    }
}

/// Init section, then parts in order from `PART-HOLD-BACK` behind the edge,
/// with the hinted part fetched ahead.
async fn media_loop(
    p: &Player,
    mut conn: Conn,
    media_url: String,
    mut rx: watch::Receiver<Arc<MediaPlaylist>>,
) {
    let first = rx.borrow_and_update().clone();
    if let Some(map) = &first.map {
        let url = playlist::resolve(&media_url, map);
        loop {
            match p.get(&mut conn, &url, Kind::Other, false, None).await {
                Ok(g) if g.status == StatusCode::OK => break,
                Ok(g) => p.part_error(&format!("init status {}", g.status.as_u16())),
                Err(e) => p.part_error(&format!("init {e}")),
            }
            tokio::time::sleep(RETRY).await;
        }
    }
    let stall_after = Duration::from_secs_f64(3.0 * first.part_target_or_td());
    // The newest part done, by (msn, index); the start part is next.
    let mut done: (i64, i64) = match first.start_part() {
        Some(i) => {
            let s = &first.parts[i];
            if s.index == 0 {
                (s.msn as i64 - 1, i64::MAX)
            } else {
                (s.msn as i64, s.index as i64 - 1)
            }
        }
        None => (first.end_sn(), i64::MAX),
    };
    // Parts already fetched on a hint, by URL.
    let mut hinted: VecDeque<String> = VecDeque::new();
    let mut last_part = Instant::now();
    let mut started = false;
    let mut cur = first;
    loop {
        let next = cur
            .parts
            .iter()
            .find(|x| (x.msn as i64, x.index as i64) > done)
            .cloned();
        if let Some(part) = next {
            // Nothing listed is older than the next part: this player fell
            // out of the playlist (how far is unknown; counted once).
            if started && cur.parts.first() == Some(&part) {
                p.record.lock().missed += 1;
            }
            done = (part.msn as i64, part.index as i64);
            let url = playlist::resolve(&media_url, &part.uri);
            if part.gap || hinted.contains(&url) {
                continue;
            }
            let range = part.byterange.map(|(len, off)| {
                let off = off.unwrap_or(0);
                format!("bytes={off}-{}", off + len.max(1) - 1)
            });
            if fetch_part(
                p,
                &mut conn,
                &url,
                range,
                &mut last_part,
                stall_after,
                started,
            )
            .await
            {
                started = true;
            }
            continue;
        }
        if p.ctx.opts.preload_hint {
            if let Some(h) = cur.part_hint().cloned() {
                let url = playlist::resolve(&media_url, &h.uri);
                if !hinted.contains(&url) {
                    hinted.push_back(url.clone());
                    if hinted.len() > 32 {
                        hinted.pop_front();
                    }
                    let range =
                        (h.byterange_start > 0 || h.byterange_length.is_some()).then(|| {
                            match h.byterange_length {
                                Some(l) => format!(
                                    "bytes={}-{}",
                                    h.byterange_start,
                                    h.byterange_start + l.max(1) - 1
                                ),
                                None => format!("bytes={}-", h.byterange_start),
                            }
                        });
                    if fetch_part(
                        p,
                        &mut conn,
                        &url,
                        range,
                        &mut last_part,
                        stall_after,
                        started,
                    )
                    .await
                    {
                        if p.in_window(Instant::now()) {
                            p.record.lock().hinted += 1;
                        }
                        started = true;
                    } else {
                        // Not got: fetch it again once listed.
                        hinted.retain(|u| u != &url);
                    }
                    continue;
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
        cur = rx.borrow_and_update().clone();
    }
}

/// Fetches one part; records its arrival and any stall. `true` when got.
async fn fetch_part(
    p: &Player,
    conn: &mut Conn,
    url: &str,
    range: Option<String>,
    last_part: &mut Instant,
    stall_after: Duration,
    started: bool,
) -> bool {
    let ok_status = |s: StatusCode| s == StatusCode::OK || s == StatusCode::PARTIAL_CONTENT;
    match p.get(conn, url, Kind::Part, false, range).await {
        Ok(g) if ok_status(g.status) => {
            let now = Instant::now();
            p.ctx.parts_total.fetch_add(1, Ordering::Relaxed);
            let in_window = p.in_window(now);
            let mut r = p.record.lock();
            // The control group's arrivals are the baseline of every part
            // a relay player gets in the window, whenever they came.
            if in_window || !p.group().via_relay {
                let key = origin_key(&p.group().prefix, url);
                r.arrivals.push(Arrival {
                    key: key_hash(key),
                    first_ns: g.first_ns,
                    last_ns: g.last_ns,
                    in_window,
                });
            }
            if in_window {
                if started && now - *last_part > stall_after {
                    r.stalls += 1;
                }
                r.last_part = Some((now, stall_after));
            }
            *last_part = now;
            true
        }
        Ok(g) => {
            p.part_error(&format!("status {}", g.status.as_u16()));
            tokio::time::sleep(Duration::from_millis(100)).await;
            false
        }
        Err(e) => {
            p.part_error(&e);
            tokio::time::sleep(Duration::from_millis(100)).await;
            false
        }
    }
}
