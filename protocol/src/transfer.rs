//! Swarm download planning, sans-IO: which chunk to ask which peer for, what to do
//! with what comes back. The node turns requests into request-response calls and
//! writes accepted chunks to disk; the simulator does the same in virtual time.
//!
//! - Rarest first: chunks held by the fewest known peers go first, so a swarm spreads
//!   every chunk early instead of all receivers queueing for the seed's chunk 0. Ties
//!   break by a per-download salt, so receivers with equal views still diverge.
//! - Least loaded: among the peers holding a chunk, the one with the fewest requests in
//!   flight is asked.
//! - Verified: a chunk is accepted only if its length and blake3 match the manifest;
//!   anything else (a corrupt chunk, endless data, a chunk of another version) is
//!   rejected, nothing is written, and the peer is banned from this download.
//! - Timeouts strike a peer; three strikes and it is not asked again.
//! - Endgame: once every missing chunk is in flight, a stalled chunk is asked of a
//!   second peer; the first valid answer wins.

use crate::manifest::ArtifactInfo;
use crate::time::UnixMillis;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

/// Requests one peer may have outstanding for one download.
pub const DEFAULT_PER_PEER_IN_FLIGHT: usize = 4;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Timeouts before a peer is no longer asked.
pub const MAX_STRIKES: u32 = 3;

/// Why a chunk was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not a chunk of this artifact (index out of range).
    NoSuchChunk,
    /// Longer or shorter than the manifest says (endless data is cut here).
    WrongLength,
    /// Hash differs from the manifest's (corruption, or a chunk of another version).
    WrongHash,
    /// Nobody asked this peer for it, or the peer is banned from this download.
    Unsolicited,
}

/// What [`Download::on_chunk`] found true of the bytes it accepted: their index,
/// length and blake3, which equal the manifest's. Only `on_chunk` makes one, so a store
/// holding it may write those bytes without hashing them again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkProof {
    index: usize,
    len: usize,
    digest: crate::Digest,
}

impl ChunkProof {
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn digest(&self) -> crate::Digest {
        self.digest
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkVerdict {
    /// Store it: verified against the manifest and not yet held.
    Accept(ChunkProof),
    /// Valid but already held (an endgame duplicate): drop it, no penalty.
    Duplicate,
    Reject(Rejection),
}

#[derive(Clone, Debug, Default)]
struct PeerState {
    /// `None`: the peer holds the whole artifact (a seed); else a bit per chunk.
    has: Option<Vec<bool>>,
    in_flight: usize,
    strikes: u32,
    banned: bool,
    received: u64,
}

impl PeerState {
    fn holds(&self, chunk: usize) -> bool {
        self.has.as_ref().is_none_or(|h| h.get(chunk).copied().unwrap_or(false))
    }

    /// Adds (`up`) or removes this peer's chunks to or from the per-chunk holder counts.
    fn count_into(&self, holders: &mut [u32], up: bool) {
        let step = |h: &mut u32| *h = if up { *h + 1 } else { h.saturating_sub(1) };
        match &self.has {
            None => holders.iter_mut().for_each(step),
            Some(bits) => holders.iter_mut().zip(bits).filter(|(_, b)| **b).for_each(|(h, _)| step(h)),
        }
    }

    fn usable(&self) -> bool {
        !self.banned && self.strikes < MAX_STRIKES
    }
}

#[derive(Clone, Debug)]
struct InFlight<P> {
    peer: P,
    since: UnixMillis,
}

/// One artifact being downloaded from a swarm.
#[derive(Clone, Debug)]
pub struct Download<P: Ord + Clone> {
    artifact: ArtifactInfo,
    have: Vec<bool>,
    have_count: usize,
    peers: BTreeMap<P, PeerState>,
    /// chunk -> how many usable peers hold it, kept up to date as peers change, so that
    /// planning costs one pass over the chunks instead of one per chunk and peer.
    holders: Vec<u32>,
    /// chunk -> requests outstanding for it (more than one only in endgame).
    in_flight: BTreeMap<usize, Vec<InFlight<P>>>,
    /// Requests this download stopped waiting for (an endgame twin answered first, or
    /// the request timed out) whose answers may still arrive: judged on their merits
    /// when they do, since an honest peer that was merely slow must not be punished.
    cancelled: BTreeSet<(P, usize)>,
    salt: u64,
    per_peer: usize,
    timeout: Duration,
}

impl<P: Ord + Clone> Download<P> {
    /// `have` marks chunks already on disk (a resumed download); `salt` should differ
    /// per receiver (the node passes a random number, the simulator a seeded one).
    pub fn new(artifact: ArtifactInfo, have: Vec<bool>, salt: u64) -> Self {
        let mut have = have;
        have.resize(artifact.chunk_count(), false);
        let have_count = have.iter().filter(|h| **h).count();
        let holders = vec![0; have.len()];
        Download {
            artifact,
            have,
            have_count,
            peers: BTreeMap::new(),
            holders,
            in_flight: BTreeMap::new(),
            cancelled: BTreeSet::new(),
            salt,
            per_peer: DEFAULT_PER_PEER_IN_FLIGHT,
            timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    pub fn with_limits(mut self, per_peer: usize, timeout: Duration) -> Self {
        self.per_peer = per_peer.max(1);
        self.timeout = timeout;
        self
    }

    pub fn artifact(&self) -> &ArtifactInfo {
        &self.artifact
    }

    pub fn is_complete(&self) -> bool {
        self.have_count == self.have.len()
    }

    /// (chunks held, chunks in all).
    pub fn progress(&self) -> (usize, usize) {
        (self.have_count, self.have.len())
    }

    pub fn has_chunk(&self, index: usize) -> bool {
        self.have.get(index).copied().unwrap_or(false)
    }

    pub fn have_bitmap(&self) -> &[bool] {
        &self.have
    }

    /// Changes what is known of a known `peer` through `change`, keeping the holder
    /// counts true: the peer's chunks count only while it is usable. Unknown peers are
    /// left alone.
    fn change_peer(&mut self, peer: &P, change: impl FnOnce(&mut PeerState)) {
        let Some(state) = self.peers.get_mut(peer) else { return };
        if state.usable() {
            state.count_into(&mut self.holders, false);
        }
        change(state);
        if state.usable() {
            state.count_into(&mut self.holders, true);
        }
    }

    /// Makes `peer` known, holding nothing (so counting for no chunk) if it is new.
    fn know_peer(&mut self, peer: &P) {
        let n = self.have.len();
        self.peers
            .entry(peer.clone())
            .or_insert_with(|| PeerState { has: Some(vec![false; n]), ..PeerState::default() });
    }

    /// The peer holds every chunk.
    pub fn peer_is_seed(&mut self, peer: P) {
        self.know_peer(&peer);
        self.change_peer(&peer, |s| s.has = None);
    }

    /// The peer holds `chunks` (replacing what was known).
    pub fn peer_has(&mut self, peer: P, chunks: impl IntoIterator<Item = usize>) {
        let n = self.have.len();
        let mut bits = vec![false; n];
        let mut count = 0;
        for c in chunks.into_iter().filter(|c| *c < n) {
            count += usize::from(!bits[c]);
            bits[c] = true;
        }
        self.know_peer(&peer);
        self.change_peer(&peer, |s| s.has = if count == n { None } else { Some(bits) });
    }

    /// The peer disconnected: its requests are void and it is forgotten.
    pub fn peer_gone(&mut self, peer: &P) {
        if let Some(s) = self.peers.remove(peer) {
            if s.usable() {
                s.count_into(&mut self.holders, false);
            }
        }
        for reqs in self.in_flight.values_mut() {
            reqs.retain(|r| &r.peer != peer);
        }
        self.in_flight.retain(|_, r| !r.is_empty());
        self.cancelled.retain(|(p, _)| p != peer);
    }

    pub fn is_banned(&self, peer: &P) -> bool {
        self.peers.get(peer).is_some_and(|p| p.banned)
    }

    /// Bytes of valid chunks received from `peer`.
    pub fn received_from(&self, peer: &P) -> u64 {
        self.peers.get(peer).map_or(0, |p| p.received)
    }

    fn tie_break(&self, chunk: usize) -> u64 {
        // SplitMix64 over (salt, chunk): cheap, well mixed, deterministic.
        let mut z = self.salt ^ (chunk as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick_peer(&self, chunk: usize, exclude: &[InFlight<P>]) -> Option<P> {
        self.peers
            .iter()
            .filter(|(p, s)| {
                s.usable() && s.in_flight < self.per_peer && s.holds(chunk) && !exclude.iter().any(|r| &r.peer == *p)
            })
            .min_by_key(|(_, s)| (s.in_flight, s.strikes))
            .map(|(p, _)| p.clone())
    }

    fn start(&mut self, peer: P, chunk: usize, now: UnixMillis) {
        if let Some(s) = self.peers.get_mut(&peer) {
            s.in_flight += 1;
        }
        self.in_flight.entry(chunk).or_default().push(InFlight { peer, since: now });
    }

    /// New requests to send now, as (peer, chunk index). Call after any change.
    ///
    /// One pass over the chunks: only those a peer with a free request slot holds are
    /// candidates, and they come off a heap rarest first until the free slots are used.
    pub fn next_requests(&mut self, now: UnixMillis) -> Vec<(P, usize)> {
        let mut out = Vec::new();
        let free: Vec<&PeerState> = self.peers.values().filter(|s| s.usable() && s.in_flight < self.per_peer).collect();
        let mut slots: usize = free.iter().map(|s| self.per_peer - s.in_flight).sum();
        if slots == 0 {
            return out;
        }
        let any_seed = free.iter().any(|s| s.has.is_none());
        let mut candidates: BinaryHeap<Reverse<(u32, u64, usize)>> = (0..self.have.len())
            .filter(|&c| !self.have[c] && self.holders[c] > 0 && !self.in_flight.contains_key(&c))
            .filter(|&c| any_seed || free.iter().any(|s| s.holds(c)))
            .map(|c| Reverse((self.holders[c], self.tie_break(c), c)))
            .collect();
        while slots > 0 {
            let Some(Reverse((_, _, chunk))) = candidates.pop() else { break };
            if let Some(peer) = self.pick_peer(chunk, &[]) {
                self.start(peer.clone(), chunk, now);
                out.push((peer, chunk));
                slots -= 1;
            }
        }
        // Endgame: nothing left to assign, so re-ask stalled chunks of another peer.
        if out.is_empty() && !self.is_complete() {
            let stall = self.timeout / 4;
            let stalled: Vec<usize> = self
                .in_flight
                .iter()
                .filter(|(_, reqs)| reqs.len() == 1 && now.since(reqs[0].since) >= stall)
                .map(|(c, _)| *c)
                .collect();
            for chunk in stalled {
                if let Some(peer) = self.pick_peer(chunk, &self.in_flight[&chunk]) {
                    self.start(peer.clone(), chunk, now);
                    out.push((peer, chunk));
                }
            }
        }
        out
    }

    fn finish_request(&mut self, peer: &P, chunk: usize) -> bool {
        let Some(reqs) = self.in_flight.get_mut(&chunk) else {
            return false;
        };
        let Some(pos) = reqs.iter().position(|r| &r.peer == peer) else {
            return false;
        };
        reqs.remove(pos);
        if reqs.is_empty() {
            self.in_flight.remove(&chunk);
        }
        if let Some(s) = self.peers.get_mut(peer) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        true
    }

    /// Judges chunk `index` as sent by `peer`. On `Accept` the caller stores `data`;
    /// on `Reject` nothing may be written, and a peer that sent wrong bytes is banned
    /// from this download. A late answer to a request this download stopped waiting
    /// for is judged like any other: stored if valid and still missing.
    pub fn on_chunk(&mut self, peer: &P, index: usize, data: &[u8]) -> ChunkVerdict {
        if index >= self.have.len() {
            self.ban(peer);
            return ChunkVerdict::Reject(Rejection::NoSuchChunk);
        }
        if self.is_banned(peer) {
            return ChunkVerdict::Reject(Rejection::Unsolicited);
        }
        if !self.finish_request(peer, index) && !self.cancelled.remove(&(peer.clone(), index)) {
            return ChunkVerdict::Reject(Rejection::Unsolicited);
        }
        if self.artifact.chunk_len(index) != Some(data.len() as u64) {
            self.ban(peer);
            return ChunkVerdict::Reject(Rejection::WrongLength);
        }
        if !self.artifact.verify_chunk(index, data) {
            self.ban(peer);
            return ChunkVerdict::Reject(Rejection::WrongHash);
        }
        self.change_peer(peer, |s| {
            s.received += data.len() as u64;
            s.strikes = 0;
        });
        if self.have[index] {
            return ChunkVerdict::Duplicate;
        }
        self.mark_stored(index);
        // Endgame twins of this request are moot: free their peers for other chunks.
        // Their late answers then arrive as duplicates, which costs them nothing.
        if let Some(twins) = self.in_flight.remove(&index) {
            for t in twins {
                if let Some(s) = self.peers.get_mut(&t.peer) {
                    s.in_flight = s.in_flight.saturating_sub(1);
                }
                self.cancelled.insert((t.peer, index));
            }
        }
        ChunkVerdict::Accept(ChunkProof { index, len: data.len(), digest: self.artifact.chunk_hashes[index] })
    }

    /// Records a chunk as held without a peer (read back from disk at resume).
    pub fn mark_stored(&mut self, index: usize) {
        if index < self.have.len() && !self.have[index] {
            self.have[index] = true;
            self.have_count += 1;
        }
    }

    /// Chunk `index` verified but could not be written here (a full disk, say): it is
    /// missing again and will be asked for anew. No peer is struck: its bytes were good.
    pub fn store_failed(&mut self, index: usize) {
        if index < self.have.len() && self.have[index] {
            self.have[index] = false;
            self.have_count -= 1;
        }
    }

    /// The request failed (peer refused, stream error): free it and strike the peer.
    pub fn on_failure(&mut self, peer: &P, index: usize) {
        if self.finish_request(peer, index) {
            self.change_peer(peer, |s| s.strikes += 1);
        } else {
            self.cancelled.remove(&(peer.clone(), index));
        }
    }

    /// Expires requests older than the timeout, striking their peers.
    pub fn on_tick(&mut self, now: UnixMillis) {
        let expired: Vec<(P, usize)> = self
            .in_flight
            .iter()
            .flat_map(|(c, reqs)| {
                reqs.iter().filter(|r| now.since(r.since) >= self.timeout).map(|r| (r.peer.clone(), *c))
            })
            .collect();
        for (peer, chunk) in expired {
            self.on_failure(&peer, chunk);
            self.cancelled.insert((peer, chunk));
        }
    }

    /// When the next request times out, for the driver's timer.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        self.in_flight.values().flatten().map(|r| r.since.saturating_add(self.timeout)).min()
    }

    fn ban(&mut self, peer: &P) {
        for reqs in self.in_flight.values_mut() {
            reqs.retain(|r| &r.peer != peer);
        }
        self.in_flight.retain(|_, r| !r.is_empty());
        self.cancelled.retain(|(p, _)| p != peer);
        self.change_peer(peer, |s| {
            s.banned = true;
            s.in_flight = 0;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MIN_CHUNK_SIZE;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| ((i * 31 + seed as usize) % 251) as u8).collect()
    }

    fn artifact(chunks: usize) -> (Vec<u8>, ArtifactInfo) {
        let bytes = data(MIN_CHUNK_SIZE as usize * chunks - 100, 0);
        let info = ArtifactInfo::describe(&bytes, MIN_CHUNK_SIZE);
        (bytes, info)
    }

    fn chunk(bytes: &[u8], i: usize) -> &[u8] {
        let cs = MIN_CHUNK_SIZE as usize;
        &bytes[i * cs..((i + 1) * cs).min(bytes.len())]
    }

    #[test]
    fn downloads_everything_from_a_seed() {
        let (bytes, info) = artifact(10);
        let mut d = Download::new(info, vec![], 1);
        d.peer_is_seed("seed");
        let mut rounds = 0;
        while !d.is_complete() {
            let reqs = d.next_requests(UnixMillis(0));
            assert!(!reqs.is_empty() && reqs.len() <= DEFAULT_PER_PEER_IN_FLIGHT);
            for (p, c) in reqs {
                assert!(matches!(d.on_chunk(&p, c, chunk(&bytes, c)), ChunkVerdict::Accept(_)));
            }
            rounds += 1;
        }
        assert_eq!(rounds, 3);
        assert_eq!(d.received_from(&"seed"), bytes.len() as u64);
    }

    #[test]
    fn rarest_first_and_least_loaded() {
        let (_, info) = artifact(4);
        let mut d = Download::new(info, vec![], 7);
        d.peer_is_seed("a");
        d.peer_is_seed("b");
        d.peer_has("c", [3]);
        // Chunk 3 has three holders but the others only two... so it goes last; the
        // two seeds share the load.
        let reqs = d.next_requests(UnixMillis(0));
        assert_eq!(reqs.len(), 4);
        assert_eq!(reqs.last().unwrap().1, 3);
        let a = reqs.iter().filter(|(p, _)| *p == "a").count();
        let b = reqs.iter().filter(|(p, _)| *p == "b").count();
        assert!(a.abs_diff(b) <= 1, "{reqs:?}");
    }

    #[test]
    fn corrupt_long_and_foreign_chunks_are_refused_and_the_peer_banned() {
        let (bytes, info) = artifact(3);
        let other = data(bytes.len(), 9); // the same chunk positions of another version
        for (bad, why) in [
            (chunk(&other, 0).to_vec(), Rejection::WrongHash),
            ([chunk(&bytes, 0), b"more and more"].concat(), Rejection::WrongLength),
        ] {
            let mut d = Download::new(info.clone(), vec![], 3);
            d.peer_is_seed("evil");
            d.peer_is_seed("honest");
            let mut pending = d.next_requests(UnixMillis(0));
            let pos = pending.iter().position(|(p, _)| *p == "evil").unwrap();
            let (p, c) = pending.remove(pos);
            let bad = if c == 0 { bad.clone() } else { [chunk(&other, c), b"x"].concat() };
            let verdict = d.on_chunk(&p, c, &bad);
            assert!(matches!(verdict, ChunkVerdict::Reject(r) if c != 0 || r == why), "{verdict:?}");
            assert!(d.is_banned(&"evil"));
            assert!(!d.has_chunk(c));
            // The banned peer's other requests are void: even valid data is refused.
            for (p, c) in pending.iter().filter(|(p, _)| *p == "evil") {
                assert_eq!(d.on_chunk(p, *c, chunk(&bytes, *c)), ChunkVerdict::Reject(Rejection::Unsolicited));
            }
            pending.retain(|(p, _)| *p != "evil");
            // Everything now comes from the honest peer.
            pending.extend(d.next_requests(UnixMillis(1)));
            while let Some((p, c)) = pending.pop() {
                assert_eq!(p, "honest");
                assert!(matches!(d.on_chunk(&p, c, chunk(&bytes, c)), ChunkVerdict::Accept(_)));
                pending.extend(d.next_requests(UnixMillis(1)));
            }
            assert!(d.is_complete());
        }
    }

    #[test]
    fn a_chunk_that_cannot_be_written_here_is_asked_for_again_and_blames_no_one() {
        let (bytes, info) = artifact(2);
        let mut d = Download::new(info, vec![], 3).with_limits(1, Duration::from_secs(10));
        d.peer_is_seed("p");
        let first = d.next_requests(UnixMillis(0));
        let (peer, c) = first[0];
        assert!(matches!(d.on_chunk(&peer, c, chunk(&bytes, c)), ChunkVerdict::Accept(_)));
        d.store_failed(c);
        assert!(!d.has_chunk(c));
        assert_eq!(d.progress().0, 0);
        // Four failed writes in a row would be four strikes if they counted as the peer's.
        for round in 0..4 {
            let again = d.next_requests(UnixMillis(round));
            assert!(again.contains(&("p", c)), "round {round}: {again:?}");
            assert!(matches!(d.on_chunk(&"p", c, chunk(&bytes, c)), ChunkVerdict::Accept(_)));
            d.store_failed(c);
        }
        assert!(!d.is_banned(&"p"));
        let again = d.next_requests(UnixMillis(10));
        assert!(again.iter().any(|r| r.0 == "p"), "the honest peer is still asked: {again:?}");
    }

    #[test]
    fn unsolicited_and_out_of_range_chunks() {
        let (bytes, info) = artifact(2);
        let mut d = Download::new(info, vec![], 3);
        d.peer_is_seed("p");
        assert_eq!(d.on_chunk(&"p", 0, chunk(&bytes, 0)), ChunkVerdict::Reject(Rejection::Unsolicited));
        assert_eq!(d.on_chunk(&"p", 99, b"x"), ChunkVerdict::Reject(Rejection::NoSuchChunk));
        assert!(d.is_banned(&"p"));
    }

    #[test]
    fn timeouts_strike_and_resume_skips_held_chunks() {
        let (_, info) = artifact(4);
        let mut d = Download::new(info, vec![true, true, false, false], 3).with_limits(8, Duration::from_secs(10));
        assert_eq!(d.progress(), (2, 4));
        d.peer_is_seed("slow");
        let reqs = d.next_requests(UnixMillis(0));
        assert_eq!(reqs.iter().map(|r| r.1).collect::<BTreeSet<_>>(), BTreeSet::from([2, 3]));
        assert_eq!(d.next_deadline(), Some(UnixMillis(10_000)));
        for round in 1..=MAX_STRIKES as u64 {
            d.on_tick(UnixMillis(round * 20_000));
            let again = d.next_requests(UnixMillis(round * 20_000));
            if round < MAX_STRIKES as u64 / 2 {
                assert!(!again.is_empty());
            }
        }
        assert!(d.next_requests(UnixMillis(100_000)).is_empty(), "a peer with three strikes is not asked");
    }

    #[test]
    fn endgame_asks_a_second_peer_and_ignores_the_late_duplicate() {
        let (bytes, info) = artifact(1);
        let mut d = Download::new(info, vec![], 3).with_limits(4, Duration::from_secs(20));
        d.peer_is_seed("a");
        d.peer_is_seed("b");
        let first = d.next_requests(UnixMillis(0));
        assert_eq!(first.len(), 1);
        assert!(d.next_requests(UnixMillis(1000)).is_empty(), "not stalled yet");
        let second = d.next_requests(UnixMillis(6000));
        assert_eq!(second.len(), 1);
        assert_ne!(first[0].0, second[0].0);
        assert!(matches!(d.on_chunk(&second[0].0, 0, chunk(&bytes, 0)), ChunkVerdict::Accept(_)));
        // The slow first peer's answer still comes: valid, so a duplicate, never a fault.
        assert_eq!(d.on_chunk(&first[0].0, 0, chunk(&bytes, 0)), ChunkVerdict::Duplicate);
        assert!(!d.is_banned(&first[0].0));
        assert!(d.is_complete());
        // Once answered, that request is settled: the same bytes again are unsolicited.
        assert_eq!(d.on_chunk(&first[0].0, 0, chunk(&bytes, 0)), ChunkVerdict::Reject(Rejection::Unsolicited));
    }

    #[test]
    fn a_late_answer_after_a_timeout_is_judged_on_its_merits() {
        let (bytes, other) = (data(MIN_CHUNK_SIZE as usize * 2, 0), data(MIN_CHUNK_SIZE as usize * 2, 7));
        let info = ArtifactInfo::describe(&bytes, MIN_CHUNK_SIZE);
        let mut d = Download::new(info, vec![], 3).with_limits(4, Duration::from_secs(20));
        d.peer_is_seed("slow");
        let asked = d.next_requests(UnixMillis(0));
        assert_eq!(asked.len(), 2);
        d.on_tick(UnixMillis(20_000));
        // Valid and still missing: stored, and the peer stays welcome.
        assert!(matches!(d.on_chunk(&"slow", 0, chunk(&bytes, 0)), ChunkVerdict::Accept(_)));
        assert!(d.has_chunk(0) && !d.is_banned(&"slow"));
        // Wrong bytes are wrong however late they come.
        assert_eq!(d.on_chunk(&"slow", 1, chunk(&other, 1)), ChunkVerdict::Reject(Rejection::WrongHash));
        assert!(d.is_banned(&"slow"));
    }

    /// Holder counts recomputed from scratch, to check the incremental ones against.
    fn recount(d: &Download<u8>) -> Vec<u32> {
        (0..d.have.len()).map(|c| d.peers.values().filter(|s| s.usable() && s.holds(c)).count() as u32).collect()
    }

    #[derive(Clone, Debug)]
    enum Op {
        Seed(u8),
        Has(u8, Vec<usize>),
        Gone(u8),
        Plan(u64),
        GoodAnswer(usize),
        BadAnswer(usize),
        Fail(usize),
        Tick(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..5).prop_map(Op::Seed),
            ((0u8..5), proptest::collection::vec(0usize..12, 0..12)).prop_map(|(p, c)| Op::Has(p, c)),
            (0u8..5).prop_map(Op::Gone),
            (0u64..100_000).prop_map(Op::Plan),
            (0usize..64).prop_map(Op::GoodAnswer),
            (0usize..64).prop_map(Op::BadAnswer),
            (0usize..64).prop_map(Op::Fail),
            (0u64..100_000).prop_map(Op::Tick),
        ]
    }

    proptest::proptest! {
        /// Whatever peers come, go, hold, answer or fail, the holder counts stay exact,
        /// and every planned request is for a missing chunk not in flight from that peer,
        /// from a usable peer that holds it, within the per-peer limit.
        #[test]
        fn planning_stays_consistent(ops in proptest::collection::vec(op(), 1..80)) {
            let (bytes, info) = artifact(10);
            let mut d: Download<u8> = Download::new(info, vec![], 9).with_limits(2, Duration::from_secs(10));
            let mut asked: Vec<(u8, usize)> = Vec::new();
            for op in ops {
                match op {
                    Op::Seed(p) => d.peer_is_seed(p),
                    Op::Has(p, c) => d.peer_has(p, c),
                    Op::Gone(p) => {
                        d.peer_gone(&p);
                        asked.retain(|(q, _)| *q != p);
                    }
                    Op::Plan(t) => {
                        for (p, c) in d.next_requests(UnixMillis(t)) {
                            let s = &d.peers[&p];
                            proptest::prop_assert!(s.usable() && s.holds(c) && !d.has_chunk(c));
                            proptest::prop_assert!(s.in_flight <= 2);
                            let twins = d.in_flight[&c].iter().filter(|r| r.peer == p).count();
                            proptest::prop_assert_eq!(twins, 1, "asked twice at once");
                            asked.push((p, c));
                        }
                    }
                    Op::GoodAnswer(i) | Op::BadAnswer(i) | Op::Fail(i) if !asked.is_empty() => {
                        let (p, c) = asked.remove(i % asked.len());
                        match op {
                            Op::GoodAnswer(_) => {
                                d.on_chunk(&p, c, chunk(&bytes, c));
                            }
                            Op::BadAnswer(_) => {
                                d.on_chunk(&p, c, b"not the chunk");
                            }
                            _ => d.on_failure(&p, c),
                        }
                    }
                    Op::Tick(t) => d.on_tick(UnixMillis(t)),
                    _ => {}
                }
                proptest::prop_assert_eq!(&d.holders, &recount(&d));
            }
        }
    }
}
