//! Finding the nearest relay: the anycast probe (`crate::probe`) at start,
//! again after the nearest relay fails or says it is draining (routing may
//! have moved), and again at most every [`REPROBE`] while none is known. The sources of a chunk
//! follow from it: the nearest relay, the configured relays, the origin.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::{Client, Name, Source};
use crate::probe;

/// Without a nearest relay, probe again at most this often: routing may have
/// converged on another relay since.
const REPROBE: Duration = Duration::from_secs(2);

impl Client {
    /// Probes the anycast address; remembers the relay it names if healthy.
    pub async fn discover(&self) -> Option<SocketAddr> {
        let anycast = self.cfg.probe?;
        *self.probed.lock() = Some(std::time::Instant::now());
        let found = match probe::probe(anycast, self.cfg.probe_timeout).await {
            Ok(a) if a.healthy => {
                let u = a.unicast();
                tracing::info!(%anycast, relay = %a.id, unicast = ?u, "nearest relay found");
                u
            }
            Ok(a) => {
                tracing::warn!(%anycast, relay = %a.id, "nearest relay is unhealthy; going around it");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "no cache answered the probe");
                None
            }
        };
        *self.nearest.lock() = found;
        found
    }

    /// The relay the last probe found.
    pub fn nearest(&self) -> Option<SocketAddr> {
        *self.nearest.lock()
    }

    /// Probes again when no nearest relay is known and the last probe is
    /// [`REPROBE`] old.
    pub(super) async fn reprobe_if_stale(&self) {
        let stale = self.probed.lock().is_some_and(|t| t.elapsed() >= REPROBE);
        if self.nearest().is_none() && stale {
            self.discover().await;
        }
    }

    /// The sources to try for `name`, in order, each once.
    pub(super) fn sources(&self, name: &Name) -> Vec<Source> {
        let mut v: Vec<Source> = self.nearest().into_iter().map(Source::Relay).collect();
        v.extend(self.cfg.relays.iter().copied().map(Source::Relay));
        v.push(Source::Origin(name.authority.clone()));
        let mut seen = HashSet::new();
        v.retain(|s| seen.insert(s.clone()));
        v
    }
}
