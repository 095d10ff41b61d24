//! The connection budget: which connections a peer closes so that their number stays
//! flat however large the fleet grows.
//!
//! Gossipsub holds a long-lived stream on every connection, so libp2p never closes a
//! connection as idle: every peer a DHT query or a fetch ever dialed stays connected.
//! Measured with `mirage bench overlay-cost`, a node of a 200-node fleet held 94
//! connections a minute after start, and each costs keep-alive traffic and buffers.
//! Like go-libp2p's connection manager, the budget has two marks: above `high`
//! connections the least useful are closed down to `low`. Connections still in their
//! grace period, in a gossip mesh, or that carried useful traffic lately are never
//! closed; among the rest, peers of other clusters go before peers of the app, which go
//! before peers of our own cluster (they carry our heartbeats and replace mesh losses),
//! and younger connections before older ones.
//!
//! The shell reports connections opening and closing and useful exchanges; each
//! maintenance tick it passes in what gossipsub knows of each peer and carries out
//! the closes [`Connections::to_close`] returns.
//!
//! Against eclipse: peers that dialed us from one IP address may hold at most
//! `per_ip` connections (loopback excepted: local peers are the machine's own, and
//! loopback testnets run every node there), and the oldest `kept_outbound` peers we
//! dialed ourselves are never trimmed, so strangers that crowd in cannot push out the
//! peers this node chose.

use crate::UnixMillis;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

/// The two marks and the grace period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Trimming closes connections down to this many.
    pub low: usize,
    /// Trimming starts above this many.
    pub high: usize,
    /// A connection younger than this, or with useful traffic this recent, stays.
    pub grace: Duration,
    /// Most peers connected to us from one (non-loopback) IP address.
    pub per_ip: usize,
    /// Peers we dialed that trimming never closes (the oldest this many).
    pub kept_outbound: usize,
}

impl Budget {
    /// An overlay node: two gossip meshes of up to 12 peers each (gossipsub's
    /// `mesh_n_high`) fit under `low`, with room for DHT queries and fetches.
    pub const NODE: Budget = Budget { low: 24, high: 40, grace: Duration::from_secs(30), per_ip: 4, kept_outbound: 8 };

    /// A peer that accepts up to `max` connections (a bootstrap peer): trims to half,
    /// from three quarters, so that newcomers always find a free slot.
    pub fn for_capacity(max: usize) -> Budget {
        let max = max.max(4);
        Budget { low: max / 2, high: max * 3 / 4, grace: Duration::from_secs(30), per_ip: 8, kept_outbound: 4 }
    }
}

/// How useful a connected peer is to us, least first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Standing {
    /// Shares no topic of ours: met through the DHT or a fetch.
    Stranger,
    /// Subscribed to one of our apps' topics.
    AppPeer,
    /// Subscribed to one of our clusters' topics.
    ClusterPeer,
}

/// What gossipsub knows of a connected peer at a maintenance tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerFacts {
    pub standing: Standing,
    /// In our mesh on some topic: closing it would cost the mesh a peer.
    pub in_mesh: bool,
}

#[derive(Clone, Copy, Debug)]
struct Connected {
    since: UnixMillis,
    last_exchange: Option<UnixMillis>,
    origin: Origin,
}

/// Where a peer's first connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The remote address, if the transport has one.
    pub ip: Option<IpAddr>,
    /// We dialed it (rather than it us).
    pub outbound: bool,
}

impl Origin {
    pub const UNKNOWN: Origin = Origin { ip: None, outbound: false };
}

/// Why a new peer's connection is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its IP address already holds `per_ip` peers' connections to us.
    TooManyFromIp,
}

/// The connections a peer holds, as far as the budget needs to know them.
#[derive(Debug)]
pub struct Connections<K> {
    budget: Budget,
    peers: HashMap<K, Connected>,
}

impl<K: Copy + Ord + Hash> Connections<K> {
    pub fn new(budget: Budget) -> Self {
        Connections { budget, peers: HashMap::new() }
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The first connection to `peer` opened (later ones to the same peer change
    /// nothing: the budget counts peers).
    pub fn on_established(&mut self, peer: K, now: UnixMillis) {
        let _ = self.admit(peer, Origin::UNKNOWN, now);
    }

    /// A first connection to `peer` from `origin`: counted, or refused (the shell
    /// closes it) when its IP address is over its share.
    pub fn admit(&mut self, peer: K, origin: Origin, now: UnixMillis) -> Result<(), Refused> {
        if self.peers.contains_key(&peer) {
            return Ok(());
        }
        if let Some(ip) = origin.ip.filter(|ip| !origin.outbound && !ip.is_loopback()) {
            let same = self.peers.values().filter(|c| !c.origin.outbound && c.origin.ip == Some(ip)).count();
            if same >= self.budget.per_ip {
                return Err(Refused::TooManyFromIp);
            }
        }
        self.peers.insert(peer, Connected { since: now, last_exchange: None, origin });
        Ok(())
    }

    /// The last connection to `peer` closed.
    pub fn on_closed(&mut self, peer: &K) {
        self.peers.remove(peer);
    }

    /// `peer` carried something we asked for or were asked for (a fetch, chunks, a
    /// manifest): it keeps its connection for another grace period. Ignored for
    /// peers not connected, so this map never outgrows the connections.
    pub fn on_exchange(&mut self, peer: &K, now: UnixMillis) {
        if let Some(c) = self.peers.get_mut(peer) {
            c.last_exchange = Some(now);
        }
    }

    /// The peers to disconnect now, given what gossipsub knows of each (`facts`
    /// answers for peers it does not know with `None`: strangers outside any mesh).
    /// Empty unless more than `high` peers are connected; otherwise as many of the
    /// least useful closable peers as bring the count down to `low`.
    pub fn to_close(&self, now: UnixMillis, facts: impl Fn(&K) -> Option<PeerFacts>) -> Vec<K> {
        let Budget { low, high, grace, kept_outbound, .. } = self.budget;
        if self.peers.len() <= high {
            return Vec::new();
        }
        let excess = self.peers.len() - low;
        let recent = |t: UnixMillis| now.since(t) < grace;
        // The peers we chose, oldest first: the first few stay whatever else comes.
        let mut chosen: Vec<(UnixMillis, K)> =
            self.peers.iter().filter(|(_, c)| c.origin.outbound).map(|(k, c)| (c.since, *k)).collect();
        chosen.sort_unstable();
        let kept: Vec<K> = chosen.into_iter().take(kept_outbound).map(|(_, k)| k).collect();
        let mut closable: Vec<(Standing, std::cmp::Reverse<UnixMillis>, K)> = self
            .peers
            .iter()
            .filter(|(k, _)| !kept.contains(k))
            .filter(|(_, c)| !recent(c.since) && !c.last_exchange.is_some_and(recent))
            .filter_map(|(k, c)| {
                let f = facts(k).unwrap_or(PeerFacts { standing: Standing::Stranger, in_mesh: false });
                (!f.in_mesh).then_some((f.standing, std::cmp::Reverse(c.since), *k))
            })
            .collect();
        closable.sort_unstable();
        closable.into_iter().take(excess).map(|(_, _, k)| k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1000;

    fn budget() -> Budget {
        Budget { low: 4, high: 6, grace: Duration::from_secs(30), per_ip: 2, kept_outbound: 1 }
    }

    #[test]
    fn strangers_from_one_address_get_a_few_slots_and_crowd_out_no_peer_we_chose() {
        let mut c = Connections::new(budget());
        let ip = |n: u8| Some(IpAddr::from([203, 0, 113, n]));
        let inbound = |n| Origin { ip: ip(n), outbound: false };
        // Our own choice, dialed first.
        c.admit(100u32, Origin { ip: ip(9), outbound: true }, UnixMillis(0)).unwrap();
        assert_eq!(c.admit(1, inbound(1), UnixMillis(S)), Ok(()));
        assert_eq!(c.admit(2, inbound(1), UnixMillis(S)), Ok(()));
        assert_eq!(c.admit(3, inbound(1), UnixMillis(S)), Err(Refused::TooManyFromIp));
        // Loopback peers are the machine's own (and every node of a loopback testnet).
        for p in 10..14 {
            c.admit(p, Origin { ip: Some(IpAddr::from([127, 0, 0, 1])), outbound: false }, UnixMillis(S)).unwrap();
        }
        // Over the high mark, the oldest peer of all is ours and stays.
        let closed = c.to_close(UnixMillis(600 * S), |_| stranger());
        assert_eq!(closed.len(), 3);
        assert!(!closed.contains(&100));
    }

    fn stranger() -> Option<PeerFacts> {
        Some(PeerFacts { standing: Standing::Stranger, in_mesh: false })
    }

    #[test]
    fn nothing_is_closed_at_or_under_the_high_mark() {
        let mut c = Connections::new(budget());
        for p in 0..6u32 {
            c.on_established(p, UnixMillis(0));
        }
        assert!(c.to_close(UnixMillis(600 * S), |_| stranger()).is_empty());
    }

    #[test]
    fn over_the_high_mark_the_youngest_strangers_go_down_to_the_low_mark() {
        let mut c = Connections::new(budget());
        for p in 0..7u32 {
            c.on_established(p, UnixMillis(u64::from(p) * S));
        }
        let mut closed = c.to_close(UnixMillis(600 * S), |_| stranger());
        closed.sort_unstable();
        assert_eq!(closed, vec![4, 5, 6]);
    }

    #[test]
    fn cluster_peers_outlast_app_peers_which_outlast_strangers() {
        let mut c = Connections::new(budget());
        for p in 0..8u32 {
            c.on_established(p, UnixMillis(0));
        }
        let facts = |p: &u32| {
            let standing = match p {
                0..=2 => Standing::ClusterPeer,
                3..=5 => Standing::AppPeer,
                _ => Standing::Stranger,
            };
            Some(PeerFacts { standing, in_mesh: false })
        };
        let mut closed = c.to_close(UnixMillis(600 * S), facts);
        closed.sort_unstable();
        assert_eq!(closed, vec![3, 4, 6, 7], "both strangers, then two of the app's peers");
    }

    #[test]
    fn mesh_peers_young_connections_and_busy_peers_are_never_closed() {
        let mut c = Connections::new(budget());
        let now = UnixMillis(600 * S);
        for p in 0..10u32 {
            c.on_established(p, UnixMillis(0));
        }
        c.on_closed(&9);
        c.on_established(9, now.saturating_sub(Duration::from_secs(5)));
        c.on_exchange(&8, now.saturating_sub(Duration::from_secs(10)));
        let facts = |p: &u32| Some(PeerFacts { standing: Standing::Stranger, in_mesh: *p < 7 });
        let mut closed = c.to_close(now, facts);
        closed.sort_unstable();
        assert_eq!(closed, vec![7], "only peer 7 is closable, though six are over the low mark");
    }

    #[test]
    fn an_exchange_with_a_peer_not_connected_is_not_kept() {
        let mut c: Connections<u32> = Connections::new(budget());
        c.on_exchange(&3, UnixMillis(0));
        assert!(c.is_empty());
    }

    #[test]
    fn a_bootstrap_peer_trims_from_three_quarters_to_half_of_its_capacity() {
        let b = Budget::for_capacity(1024);
        assert_eq!((b.low, b.high), (512, 768));
    }

    proptest! {
        /// Whatever the peers, trimming never closes a protected peer, never leaves
        /// fewer than `low`, and leaves exactly `low` when enough peers are closable.
        #[test]
        fn trimming_respects_the_marks_and_the_protected(
            peers in proptest::collection::vec((0u64..100, any::<bool>(), 0u8..3, proptest::option::of(0u64..100)), 0..60),
            low in 0usize..20,
            extra in 0usize..20,
        ) {
            let budget = Budget { low, high: low + extra, grace: Duration::from_secs(30), per_ip: 4, kept_outbound: 0 };
            let mut c = Connections::new(budget);
            let now = UnixMillis(100 * S);
            let mut facts = HashMap::new();
            for (i, (since, in_mesh, standing, exchange)) in peers.iter().enumerate() {
                c.on_established(i, UnixMillis(since * S));
                if let Some(t) = exchange {
                    c.on_exchange(&i, UnixMillis(t * S));
                }
                let standing = [Standing::Stranger, Standing::AppPeer, Standing::ClusterPeer][*standing as usize];
                facts.insert(i, PeerFacts { standing, in_mesh: *in_mesh });
            }
            let closed = c.to_close(now, |k| facts.get(k).copied());
            let protected = |i: usize| {
                let (since, in_mesh, _, exchange) = peers[i];
                in_mesh || 100 - since < 30 || exchange.is_some_and(|t| 100 - t < 30)
            };
            let closable = (0..peers.len()).filter(|&i| !protected(i)).count();
            prop_assert!(closed.iter().all(|&i| !protected(i)));
            if peers.len() <= budget.high {
                prop_assert!(closed.is_empty());
            } else {
                prop_assert_eq!(closed.len(), (peers.len() - low).min(closable));
            }
            // A closed peer never outranks a kept closable one.
            let rank = |i: usize| (facts[&i].standing, std::cmp::Reverse(peers[i].0));
            for &k in &closed {
                for j in (0..peers.len()).filter(|j| !protected(*j) && !closed.contains(j)) {
                    prop_assert!(rank(k) <= rank(j));
                }
            }
        }
    }
}
