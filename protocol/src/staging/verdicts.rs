//! Whom a node asks for its cluster's verdict, and when. Reports are gossiped once; a
//! node that was away, cut off, or heard of the release late asks a few peers for the
//! reports that count in its gate (the content protocol's `Verdicts` request). An
//! answer holds only what that peer had then, so while the gate here stays undecided
//! the node asks again, a few peers per period: a node that asked a cluster-mate
//! before its tests finished, or across a partition that later healed, would otherwise
//! wait forever for reports gossiped without it. Per undecided release a node sends at
//! most [`ASKS_PER_ROUND`] requests per [`REASK_MS`], whatever the fleet's size.

use crate::time::UnixMillis;
use crate::Digest;
use std::collections::HashMap;
use std::hash::Hash;

/// Peers asked per round (when a release comes, then every [`REASK_MS`]).
pub const ASKS_PER_ROUND: usize = 4;
/// How long before the same peer is asked for the same release again.
pub const REASK_MS: u64 = 30_000;
/// Asks remembered at most; forgetting one only allows asking that peer sooner.
pub const MAX_REMEMBERED: usize = 4096;

/// The asks a node made lately, by peer (any id type) and release.
#[derive(Clone, Debug)]
pub struct VerdictAsks<P> {
    asked: HashMap<(P, Digest), UnixMillis>,
    last_round: Option<UnixMillis>,
}

impl<P> Default for VerdictAsks<P> {
    fn default() -> Self {
        VerdictAsks { asked: HashMap::new(), last_round: None }
    }
}

impl<P: Eq + Hash + Clone> VerdictAsks<P> {
    fn recent(&self, peer: &P, manifest: Digest, now: UnixMillis) -> bool {
        self.asked.get(&(peer.clone(), manifest)).is_some_and(|at| now.0.saturating_sub(at.0) < REASK_MS)
    }

    fn record(&mut self, peer: P, manifest: Digest, now: UnixMillis) {
        self.asked.insert((peer, manifest), now);
        if self.asked.len() > MAX_REMEMBERED {
            self.asked.retain(|_, at| now.0.saturating_sub(at.0) < REASK_MS);
            if self.asked.len() > MAX_REMEMBERED {
                self.asked.clear();
            }
        }
    }

    /// Whom to ask now for `manifest`'s verdict, from `candidates` in order of
    /// preference (cluster-mates first): up to [`ASKS_PER_ROUND`] less those asked
    /// within [`REASK_MS`], skipping those. The chosen count as asked.
    pub fn choose(&mut self, manifest: Digest, candidates: impl IntoIterator<Item = P>, now: UnixMillis) -> Vec<P> {
        let candidates: Vec<P> = candidates.into_iter().collect();
        let lately = candidates.iter().filter(|p| self.recent(p, manifest, now)).count();
        let chosen: Vec<P> = candidates
            .into_iter()
            .filter(|p| !self.recent(p, manifest, now))
            .take(ASKS_PER_ROUND.saturating_sub(lately))
            .collect();
        for p in &chosen {
            self.record(p.clone(), manifest, now);
        }
        chosen
    }

    /// A peer that just connected, while `manifest` waits on the gate here: whether to
    /// ask it (not if it was asked lately). Counts as asked.
    pub fn ask_new_peer(&mut self, peer: P, manifest: Digest, now: UnixMillis) -> bool {
        if self.recent(&peer, manifest, now) {
            return false;
        }
        self.record(peer, manifest, now);
        true
    }

    /// Whether another round of asks for undecided gates is due (every [`REASK_MS`]);
    /// starts it if so.
    pub fn round_due(&mut self, now: UnixMillis) -> bool {
        if self.last_round.is_some_and(|at| now.0.saturating_sub(at.0) < REASK_MS) {
            return false;
        }
        self.last_round = Some(now);
        true
    }

    pub fn remembered(&self) -> usize {
        self.asked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Digest = Digest([1; 32]);

    #[test]
    fn a_peer_asked_too_early_is_asked_again_after_the_period_while_the_gate_waits() {
        let mut asks = VerdictAsks::default();
        let t0 = UnixMillis(1_000_000);
        // The release comes: two cluster-mates are asked (they have no reports yet).
        assert_eq!(asks.choose(M, ["mate-a", "mate-b"], t0), vec!["mate-a", "mate-b"]);
        // Cut off, then healed: the mates reconnect within the period and are not asked
        // again at once.
        assert!(!asks.ask_new_peer("mate-a", M, UnixMillis(t0.0 + 5_000)));
        assert_eq!(asks.choose(M, ["mate-a", "mate-b"], UnixMillis(t0.0 + 10_000)), Vec::<&str>::new());
        // A period on, they are: what they learned since now reaches this node.
        let later = UnixMillis(t0.0 + REASK_MS);
        assert_eq!(asks.choose(M, ["mate-a", "mate-b"], later), vec!["mate-a", "mate-b"]);
        assert!(asks.ask_new_peer("mate-c", M, later));
        assert!(!asks.ask_new_peer("mate-c", M, later));
    }

    #[test]
    fn a_round_asks_a_few_peers_however_many_there_are() {
        let mut asks = VerdictAsks::default();
        let now = UnixMillis(5_000_000);
        let peers: Vec<u32> = (0..10_000).collect();
        assert_eq!(asks.choose(M, peers.clone(), now).len(), ASKS_PER_ROUND);
        // Those asked lately count against the round.
        assert_eq!(asks.choose(M, peers.clone(), UnixMillis(now.0 + 1)), Vec::<u32>::new());
        assert_eq!(asks.choose(M, peers, UnixMillis(now.0 + REASK_MS)), vec![0, 1, 2, 3]);
        // Another release is asked about on its own account.
        assert_eq!(asks.choose(Digest([2; 32]), [7u32, 8], now), vec![7, 8]);
    }

    #[test]
    fn rounds_come_once_a_period_and_memory_stays_bounded() {
        let mut asks = VerdictAsks::default();
        assert!(asks.round_due(UnixMillis(0)));
        assert!(!asks.round_due(UnixMillis(REASK_MS - 1)));
        assert!(asks.round_due(UnixMillis(REASK_MS)));
        for i in 0..(3 * MAX_REMEMBERED as u64) {
            asks.ask_new_peer(i, M, UnixMillis(i));
            assert!(asks.remembered() <= MAX_REMEMBERED);
        }
    }
}
