//! How long a peer has been in a cluster, as this node saw it.
//!
//! A fingerprint is public and self-signed: anyone can announce a copy of a cluster's
//! fingerprint under a key ground a millisecond ago, and a signed time proves nothing
//! about when the key existed (the signer picks it). What a stranger cannot forge is
//! *our own* record of when we first heard from it. So a representative must have been
//! seen in its cluster before the release was issued (less the policy's margin, which
//! covers clock skew): an identity minted after the manifest appeared never counts,
//! whatever it signs. Observers that heard the same announcements before the release
//! agree on who is eligible; a record outlives the membership's silence timeout and is
//! persisted, so a member that restarts (or is briefly unheard) keeps its standing.

use crate::fingerprint::ClusterKey;
use crate::identity::PublicKey;
use crate::time::UnixMillis;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// Most peers one node remembers first sightings of, per application. Past it, new
/// peers are dropped and counted: they are the newest, so the least likely to be
/// eligible for anything soon.
pub const MAX_PRESENCE: usize = 262_144;

/// How long a first sighting is kept after the peer was last heard.
pub const PRESENCE_KEEP: Duration = Duration::from_secs(14 * 24 * 3600);

/// A peer and when this node first saw it in its current cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Presence {
    pub peer: PublicKey,
    pub since: UnixMillis,
}

impl Presence {
    /// Seen in the cluster at or before `cutoff`.
    pub fn predates(&self, cutoff: UnixMillis) -> bool {
        self.since <= cutoff
    }
}

/// One peer's record: which cluster, since when, last heard when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    pub cluster: ClusterKey,
    pub since: UnixMillis,
    pub last_seen: UnixMillis,
}

/// What an observation changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// First sighting of the peer, or first in this cluster: `since` is now.
    New,
    /// Already known in this cluster; only `last_seen` moved.
    Known,
    /// Over [`MAX_PRESENCE`]: not stored.
    Dropped,
}

/// First sightings for one application.
#[derive(Clone, Debug, Default)]
pub struct PresenceBook {
    sightings: HashMap<PublicKey, Sighting>,
    dropped: u64,
}

impl PresenceBook {
    pub fn new() -> Self {
        PresenceBook::default()
    }

    /// `peer` was heard in `cluster` at `now` (an accepted announcement). Moving to
    /// another cluster starts its presence over: standing in one environment says
    /// nothing about another.
    pub fn observe(&mut self, peer: PublicKey, cluster: ClusterKey, now: UnixMillis) -> Observed {
        if let Some(s) = self.sightings.get_mut(&peer) {
            s.last_seen = s.last_seen.max(now);
            if s.cluster == cluster {
                return Observed::Known;
            }
            *s = Sighting { cluster, since: now, last_seen: now };
            return Observed::New;
        }
        if self.sightings.len() >= MAX_PRESENCE {
            self.dropped += 1;
            return Observed::Dropped;
        }
        self.sightings.insert(peer, Sighting { cluster, since: now, last_seen: now });
        Observed::New
    }

    /// `peer`, already known in `cluster`, was heard at `at`: only its last sighting
    /// moves. A peer not known there is left alone (returns false): a first sighting is
    /// always this node's own receipt time, never a time someone else vouches for.
    pub fn refresh(&mut self, peer: &PublicKey, cluster: &ClusterKey, at: UnixMillis) -> bool {
        match self.sightings.get_mut(peer) {
            Some(s) if &s.cluster == cluster => {
                s.last_seen = s.last_seen.max(at);
                true
            }
            _ => false,
        }
    }

    /// Puts back a persisted record. The earlier `since` wins for the same cluster, so
    /// restoring never shortens a standing.
    pub fn restore(&mut self, peer: PublicKey, sighting: Sighting) {
        let full = self.sightings.len() >= MAX_PRESENCE;
        match self.sightings.get_mut(&peer) {
            Some(s) if s.cluster == sighting.cluster => {
                s.since = s.since.min(sighting.since);
                s.last_seen = s.last_seen.max(sighting.last_seen);
            }
            Some(_) => {}
            None if full => self.dropped += 1,
            None => {
                self.sightings.insert(peer, sighting);
            }
        }
    }

    /// Since when `peer` has been in `cluster`, if it is there.
    pub fn since(&self, peer: &PublicKey, cluster: &ClusterKey) -> Option<UnixMillis> {
        self.sightings.get(peer).filter(|s| &s.cluster == cluster).map(|s| s.since)
    }

    pub fn get(&self, peer: &PublicKey) -> Option<&Sighting> {
        self.sightings.get(peer)
    }

    /// Forgets peers unheard for longer than `keep`; returns them.
    pub fn expire(&mut self, now: UnixMillis, keep: Duration) -> Vec<PublicKey> {
        let gone: Vec<PublicKey> =
            self.sightings.iter().filter(|(_, s)| now.since(s.last_seen) > keep).map(|(p, _)| *p).collect();
        for p in &gone {
            self.sightings.remove(p);
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.sightings.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PublicKey, &Sighting)> {
        self.sightings.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.sightings.is_empty()
    }

    /// Sightings not stored because the book was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Digest;

    fn key(i: u8) -> PublicKey {
        PublicKey([i; 32])
    }

    fn cluster(i: u8) -> ClusterKey {
        ClusterKey(Digest([i; 32]))
    }

    #[test]
    fn the_first_sighting_stands_until_the_peer_changes_cluster() {
        let mut b = PresenceBook::new();
        assert_eq!(b.observe(key(1), cluster(1), UnixMillis(100)), Observed::New);
        assert_eq!(b.observe(key(1), cluster(1), UnixMillis(900)), Observed::Known);
        assert_eq!(b.since(&key(1), &cluster(1)), Some(UnixMillis(100)));
        assert_eq!(b.observe(key(1), cluster(2), UnixMillis(1000)), Observed::New);
        assert_eq!(b.since(&key(1), &cluster(1)), None);
        assert_eq!(b.since(&key(1), &cluster(2)), Some(UnixMillis(1000)));
    }

    #[test]
    fn restoring_keeps_the_earlier_standing() {
        let mut b = PresenceBook::new();
        b.observe(key(1), cluster(1), UnixMillis(500));
        b.restore(key(1), Sighting { cluster: cluster(1), since: UnixMillis(10), last_seen: UnixMillis(20) });
        assert_eq!(b.since(&key(1), &cluster(1)), Some(UnixMillis(10)));
        assert_eq!(b.get(&key(1)).unwrap().last_seen, UnixMillis(500));
    }

    #[test]
    fn silent_peers_are_forgotten_after_the_keep_time() {
        let mut b = PresenceBook::new();
        b.observe(key(1), cluster(1), UnixMillis(0));
        b.observe(key(2), cluster(1), UnixMillis(5_000));
        assert_eq!(b.expire(UnixMillis(6_000), Duration::from_secs(3)), vec![key(1)]);
        assert_eq!(b.len(), 1);
    }
}
