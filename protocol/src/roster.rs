//! A node's view of its own cluster and of the fleet's cluster sizes, at a cost that
//! does not grow with the fleet.
//!
//! Two small signed messages replace the all-to-all fingerprint announcements:
//!
//! - a [`Heartbeat`] (app, cluster key) on the cluster's own topic, which only its
//!   members hear. A member sends one every [`heartbeat_period`] of its cluster's
//!   estimated size, so a cluster's topic carries about [`HEARTBEATS_PER_MIN`] a minute
//!   whatever its size (small clusters: one per member per minute);
//! - a [`ClusterSummary`] (app, cluster key, rounded size, epoch) on the app's topic.
//!   In each epoch about one member per cluster, chosen by a hash every node can
//!   recompute ([`summary_duty`]), signs one; epochs lengthen with the number of
//!   clusters ([`epoch_length`]), so the app topic carries about
//!   [`SUMMARIES_PER_MIN`] a minute whatever the fleet's size.
//!
//! A [`Roster`] is the sans-IO state machine behind both: heartbeats and summaries in,
//! first sightings ([`PresenceBook`]), a size estimate and a capped table of other
//! clusters' sizes kept, and publish actions out, with time passed in. The node and the
//! simulator's observers drive the same code.

use crate::envelope::{MessageKind, SignedPayload, Verified};
use crate::fingerprint::ClusterKey;
use crate::identity::PublicKey;
use crate::manifest::validate_app_name;
use crate::presence::{Observed, Presence, PresenceBook};
use crate::time::UnixMillis;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use thiserror::Error;

/// Memory per first sighting: a key, a cluster key, two times, the hash table's overhead.
pub const SIGHTING_BYTES: u64 = 32 + 32 + 16 + 16;
/// Memory per known cluster size: a cluster key, size and epoch and time, overhead.
pub const SIZE_RECORD_BYTES: u64 = 32 + 24 + 16;

/// Heartbeats a cluster's topic carries per minute once the cluster is big enough.
pub const HEARTBEATS_PER_MIN: u64 = 30;
/// No member heartbeats more often than this.
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(60);
/// A member unheard for this many of its heartbeat periods is no longer counted.
pub const EXPIRY_PERIODS: u32 = 5;
/// Summaries the app topic carries per minute, fleet-wide.
pub const SUMMARIES_PER_MIN: u64 = 30;
/// Members on summary duty per cluster and epoch, on average: with two, a cluster goes
/// unsummarized for an epoch 13% of the time, and for the three epochs a size is kept
/// 0.25% of the time.
pub const DUTY_PER_EPOCH: u64 = 2;
/// The shortest summary epoch.
pub const MIN_EPOCH: Duration = Duration::from_secs(600);
/// Most clusters whose sizes a node keeps; summaries for more are dropped and counted.
pub const MAX_CLUSTERS: usize = 65_536;
/// A heartbeat counts only this fresh: a sighting is "now", never a signed claim about
/// the past.
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(120);
/// Largest size a summary may state.
pub const MAX_CLUSTER_SIZE: u64 = 1 << 32;

/// "I am in this cluster": a member's periodic sign of life on its cluster's topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub app: String,
    pub cluster_key: ClusterKey,
}

impl SignedPayload for Heartbeat {
    const KIND: MessageKind = MessageKind::Heartbeat;

    fn validate(&self) -> Result<(), String> {
        validate_app_name(&self.app)
    }
}

/// One member's statement of its cluster's size for an epoch, on the app's topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSummary {
    pub app: String,
    pub cluster_key: ClusterKey,
    /// Rounded with [`round_size`].
    pub size: u64,
    pub epoch: u64,
}

impl SignedPayload for ClusterSummary {
    const KIND: MessageKind = MessageKind::ClusterSummary;

    fn validate(&self) -> Result<(), String> {
        validate_app_name(&self.app)?;
        if self.size == 0 || self.size > MAX_CLUSTER_SIZE {
            return Err(format!("cluster size {} outside 1..={MAX_CLUSTER_SIZE}", self.size));
        }
        Ok(())
    }
}

/// Rounds a size to the nearest of 1, 2, 3, 4, then steps of about 19% (2^(1/4)), so
/// that nodes whose counts differ by a member or two state the same size.
pub fn round_size(n: u64) -> u64 {
    if n <= 4 {
        return n.max(1);
    }
    let step = ((n as f64).log2() * 4.0).round();
    (2f64.powf(step / 4.0)).round() as u64
}

/// How often a member of a cluster of `size` heartbeats.
pub fn heartbeat_period(size: u64) -> Duration {
    let ms = size.saturating_mul(60_000) / HEARTBEATS_PER_MIN;
    Duration::from_millis(ms).max(MIN_HEARTBEAT)
}

/// How long after its first sighting a member of a cluster with heartbeat `period`
/// counts as present (see [`Roster::members`]).
pub fn establishment(period: Duration) -> Duration {
    if period > MIN_HEARTBEAT {
        period * 3
    } else {
        Duration::ZERO
    }
}

/// How long a summary epoch lasts when the node knows of `clusters` clusters: the
/// shortest power-of-two multiple of [`MIN_EPOCH`] over which one summary per cluster
/// stays under [`SUMMARIES_PER_MIN`]. Nodes whose counts differ by less than a factor
/// of two agree on it.
pub fn epoch_length(clusters: u64) -> Duration {
    let mut epoch = MIN_EPOCH;
    while clusters.saturating_mul(DUTY_PER_EPOCH * 60) > SUMMARIES_PER_MIN.saturating_mul(epoch.as_secs())
        && epoch < MAX_EPOCH
    {
        epoch *= 2;
    }
    epoch
}

/// Summaries never wait longer than this, however many clusters there are.
pub const MAX_EPOCH: Duration = Duration::from_secs(64 * 24 * 3600);

/// A uniform number in [0, 1) from a domain and parts: every node computes the same.
fn unit(domain: &[u8], parts: &[&[u8]]) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(domain);
    for p in parts {
        h.update(p);
    }
    let head = u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
    head as f64 / 2f64.powi(64)
}

/// Where in its period a member heartbeats: spread by key, so a cluster's heartbeats do
/// not arrive in a burst.
pub fn heartbeat_offset(peer: &PublicKey, period: Duration) -> Duration {
    period.mul_f64(unit(b"mirage/v1/heartbeat-phase", &[&peer.0]))
}

/// The first of `peer`'s heartbeat slots (its offset within each `period`) at or after
/// `from`.
pub fn heartbeat_slot(peer: &PublicKey, period: Duration, from: UnixMillis) -> UnixMillis {
    let p = (period.as_millis() as u64).max(1);
    let slot = (from.0 / p) * p + heartbeat_offset(peer, period).as_millis() as u64;
    UnixMillis(if slot >= from.0 { slot } else { slot + p })
}

/// Whether `peer` signs its cluster's summary in `epoch`: about [`DUTY_PER_EPOCH`]
/// members of a cluster of `size` do, and anyone can check who.
pub fn summary_duty(epoch: u64, cluster: &ClusterKey, peer: &PublicKey, size: u64) -> bool {
    unit(b"mirage/v1/summary-duty", &[&epoch.to_be_bytes(), &cluster.0 .0, &peer.0])
        < DUTY_PER_EPOCH as f64 / size.max(1) as f64
}

/// Why a heartbeat or summary was dropped. Counted per reason.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq, PartialOrd, Ord)]
pub enum RosterDrop {
    #[error("for another application")]
    OtherApp,
    #[error("a heartbeat for another cluster than this topic's")]
    OtherCluster,
    #[error("not fresh")]
    Stale,
    #[error("from this node itself")]
    Own,
    #[error("too many clusters known already")]
    TooManyClusters,
    #[error("older than the summary already held")]
    Older,
    #[error("the presence book is full")]
    BookFull,
}

impl RosterDrop {
    pub fn name(self) -> &'static str {
        match self {
            RosterDrop::OtherApp => "other_app",
            RosterDrop::OtherCluster => "other_cluster",
            RosterDrop::Stale => "stale",
            RosterDrop::Own => "own",
            RosterDrop::TooManyClusters => "too_many_clusters",
            RosterDrop::Older => "older",
            RosterDrop::BookFull => "book_full",
        }
    }
}

/// What the node must publish for the roster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RosterAction {
    /// Sign and publish on the cluster's topic.
    Heartbeat(Heartbeat),
    /// Sign and publish on the app's topic.
    Summary(ClusterSummary),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SizeRecord {
    size: u64,
    epoch: u64,
    heard_at: UnixMillis,
}

/// One node's roster for one app.
#[derive(Clone, Debug)]
pub struct Roster {
    app: String,
    me: PublicKey,
    cluster: Option<ClusterKey>,
    /// When this node started listening (or joined its cluster).
    listening_since: UnixMillis,
    book: PresenceBook,
    estimate: u64,
    next_heartbeat: UnixMillis,
    sizes: HashMap<ClusterKey, SizeRecord>,
    /// The last epoch this node summarized its cluster for.
    summarized: Option<u64>,
    /// The newest summary of this node's own cluster (epoch, size): signed data every
    /// member hears alike, so every member derives the same heartbeat period from it.
    own_summary: Option<(u64, u64)>,
    next_summary_check: UnixMillis,
    drops: BTreeMap<RosterDrop, u64>,
}

impl Roster {
    pub fn new(app: &str, me: PublicKey, now: UnixMillis) -> Self {
        Roster {
            app: app.to_string(),
            me,
            cluster: None,
            listening_since: now,
            book: PresenceBook::new(),
            estimate: 1,
            next_heartbeat: now,
            sizes: HashMap::new(),
            summarized: None,
            own_summary: None,
            next_summary_check: now,
            drops: BTreeMap::new(),
        }
    }

    /// This node's cluster (from its fingerprint). Heartbeats start at once.
    pub fn set_cluster(&mut self, cluster: ClusterKey, now: UnixMillis) {
        if self.cluster == Some(cluster) {
            return;
        }
        self.cluster = Some(cluster);
        self.listening_since = now;
        self.book.observe(self.me, cluster, now);
        self.estimate = self.count_live(now).max(1);
        self.next_heartbeat = now;
        self.summarized = None;
        self.own_summary = None;
    }

    pub fn cluster(&self) -> Option<ClusterKey> {
        self.cluster
    }

    /// Puts back a node's persisted first sightings (its standing survives a restart).
    pub fn book_mut(&mut self) -> &mut PresenceBook {
        &mut self.book
    }

    /// A verified heartbeat off the cluster's topic.
    pub fn on_heartbeat(&mut self, hb: &Verified<Heartbeat>, now: UnixMillis) -> Result<Observed, RosterDrop> {
        let r = self.check_heartbeat(hb, now).and_then(|()| self.heard(*hb.signer(), now));
        if let Err(why) = r {
            *self.drops.entry(why).or_default() += 1;
        }
        r
    }

    fn check_heartbeat(&self, hb: &Verified<Heartbeat>, now: UnixMillis) -> Result<(), RosterDrop> {
        let p = hb.payload();
        if p.app != self.app {
            return Err(RosterDrop::OtherApp);
        }
        if Some(p.cluster_key) != self.cluster {
            return Err(RosterDrop::OtherCluster);
        }
        if hb.issued_at() > now.saturating_add(HEARTBEAT_MAX_AGE) || now.since(hb.issued_at()) > HEARTBEAT_MAX_AGE {
            return Err(RosterDrop::Stale);
        }
        if hb.signer() == &self.me {
            return Err(RosterDrop::Own);
        }
        Ok(())
    }

    /// A member of this node's cluster was heard at `now`, by a heartbeat that verified
    /// and was checked as [`Roster::on_heartbeat`] does. (The simulator's observers feed
    /// this directly: they model millions of heartbeats and verify a sample.)
    pub fn heard(&mut self, peer: PublicKey, now: UnixMillis) -> Result<Observed, RosterDrop> {
        let cluster = self.cluster.ok_or(RosterDrop::OtherCluster)?;
        match self.book.observe(peer, cluster, now) {
            Observed::Dropped => Err(RosterDrop::BookFull),
            o => Ok(o),
        }
    }

    /// A verified summary off the app's topic.
    pub fn on_summary(&mut self, s: &Verified<ClusterSummary>, now: UnixMillis) -> Result<(), RosterDrop> {
        let p = s.payload();
        let r = if p.app != self.app {
            Err(RosterDrop::OtherApp)
        } else if now.since(s.issued_at()) > self.epoch() * 2 || s.issued_at() > now.saturating_add(HEARTBEAT_MAX_AGE) {
            Err(RosterDrop::Stale)
        } else {
            self.summary_heard(p.cluster_key, p.size, p.epoch, now)
        };
        if let Err(why) = r {
            *self.drops.entry(why).or_default() += 1;
        }
        r
    }

    /// A cluster's stated size for `epoch`, from a summary that verified and was checked
    /// as [`Roster::on_summary`] does.
    pub fn summary_heard(
        &mut self,
        cluster: ClusterKey,
        size: u64,
        epoch: u64,
        now: UnixMillis,
    ) -> Result<(), RosterDrop> {
        if Some(cluster) == self.cluster {
            if self.own_summary.is_some_and(|(e, _)| e > epoch) {
                return Err(RosterDrop::Older);
            }
            self.own_summary = Some((epoch, size.clamp(1, MAX_CLUSTER_SIZE)));
            return Ok(());
        }
        let record = SizeRecord { size: size.clamp(1, MAX_CLUSTER_SIZE), epoch, heard_at: now };
        let full = self.sizes.len() >= MAX_CLUSTERS;
        match self.sizes.get_mut(&cluster) {
            Some(old) if old.epoch > epoch => Err(RosterDrop::Older),
            Some(old) => {
                *old = record;
                Ok(())
            }
            None if full => Err(RosterDrop::TooManyClusters),
            None => {
                self.sizes.insert(cluster, record);
                Ok(())
            }
        }
    }

    /// Members heard within the expiry window, this node included.
    fn count_live(&self, now: UnixMillis) -> u64 {
        let Some(cluster) = self.cluster else { return 0 };
        self.live_members(&cluster, now).count() as u64
    }

    /// Members heard within [`EXPIRY_PERIODS`] periods (and a heartbeat's age), with
    /// their first sightings. This node is live for itself whenever it asks.
    fn live_members<'a>(&'a self, cluster: &'a ClusterKey, now: UnixMillis) -> impl Iterator<Item = Presence> + 'a {
        let window = self.period() * EXPIRY_PERIODS + HEARTBEAT_MAX_AGE;
        self.book
            .iter()
            .filter(move |(p, s)| &s.cluster == cluster && (now.since(s.last_seen) <= window || **p == self.me))
            .map(|(peer, s)| Presence { peer: *peer, since: s.since })
    }

    /// The live members of this node's cluster, each with the time from which it counts
    /// as present: what the staging core elects representatives from.
    ///
    /// In a cluster big enough that its heartbeats are rate-limited, a member heartbeats
    /// only once a period, so a node that was down when a newcomer first heartbeat does
    /// not know it for up to a period. Nodes would then disagree on the newcomer's
    /// eligibility. So there a member counts from its first sighting plus three periods
    /// ([`establishment`]). By then every node that was up for any of its heartbeats
    /// knows it. In small clusters every member heartbeats every minute, and the
    /// policy's presence margin already covers a missed one.
    pub fn members(&self, now: UnixMillis) -> Vec<Presence> {
        let Some(cluster) = self.cluster else { return Vec::new() };
        let settle = establishment(self.period());
        let mut out: Vec<Presence> = self
            .live_members(&cluster, now)
            .map(|p| Presence { peer: p.peer, since: p.since.saturating_add(settle) })
            .collect();
        out.sort_unstable();
        out
    }

    /// This node's estimate of its own cluster's size, rounded.
    pub fn own_size(&self) -> u64 {
        round_size(self.estimate)
    }

    /// The cluster's heartbeat period. It comes from the newest summary of the cluster
    /// when there is one, and from this node's own count until then. Whether a member
    /// is live, and when it counts as present, depend on the period. Taking it from
    /// signed data every member hears keeps members agreeing on those, where each
    /// member's own count would differ a little.
    pub fn period(&self) -> Duration {
        heartbeat_period(self.own_summary.map_or_else(|| self.own_size(), |(_, size)| size))
    }

    /// Every cluster's size as this node knows it (its own included), for the stage plan.
    pub fn sizes(&self) -> BTreeMap<ClusterKey, u64> {
        let mut out: BTreeMap<ClusterKey, u64> = self.sizes.iter().map(|(c, r)| (*c, r.size)).collect();
        if let Some(c) = self.cluster {
            out.insert(c, self.own_size());
        }
        out
    }

    pub fn cluster_count(&self) -> usize {
        self.sizes.len() + usize::from(self.cluster.is_some())
    }

    /// The summary epoch length this node uses now.
    pub fn epoch(&self) -> Duration {
        epoch_length(self.cluster_count() as u64)
    }

    /// Whether the view has settled: the node has listened for a full heartbeat period
    /// of its cluster, so it has heard every live member at least once. A node whose
    /// view has not settled waits rather than plan alone.
    pub fn is_settled(&self, now: UnixMillis) -> bool {
        self.cluster.is_some() && now.since(self.listening_since) >= self.period()
    }

    /// The node is back at `now` after being down since `down_since`, with this roster
    /// restored from disk. A member's heartbeat slot follows from its key, so it keeps
    /// its phase rather than heartbeat at once: a fleet of restarting nodes does not
    /// flood its clusters' topics. Its view stays settled if it was down for less than a
    /// heartbeat period (it missed at most one heartbeat of each member); otherwise it
    /// listens for a period again first.
    pub fn resume(&mut self, down_since: UnixMillis, now: UnixMillis) {
        let period = self.period();
        if now.since(down_since) >= period {
            self.listening_since = now;
        }
        if let Some(cluster) = self.cluster {
            self.book.observe(self.me, cluster, now);
        }
        self.next_heartbeat = heartbeat_slot(&self.me, period, now);
    }

    /// Timers: this node's heartbeat, its summary duty, forgetting silent clusters.
    pub fn poll(&mut self, now: UnixMillis) -> Vec<RosterAction> {
        let Some(cluster) = self.cluster else { return Vec::new() };
        let mut out = Vec::new();
        if now >= self.next_heartbeat {
            self.estimate = self.count_live(now).max(1);
            out.push(RosterAction::Heartbeat(Heartbeat { app: self.app.clone(), cluster_key: cluster }));
            // The next slot of this member's phase after this one.
            self.next_heartbeat = heartbeat_slot(&self.me, self.period(), now.saturating_add(Duration::from_millis(1)));
        }
        if now >= self.next_summary_check {
            let epoch_len = self.epoch();
            let e_ms = epoch_len.as_millis() as u64;
            let epoch = now.0 / e_ms;
            let size = self.own_size();
            let offset = heartbeat_offset(&self.me, epoch_len).as_millis() as u64;
            let due = UnixMillis(epoch * e_ms + offset);
            if self.summarized != Some(epoch) && summary_duty(epoch, &cluster, &self.me, size) {
                if now >= due && self.is_settled(now) {
                    out.push(RosterAction::Summary(ClusterSummary {
                        app: self.app.clone(),
                        cluster_key: cluster,
                        size,
                        epoch,
                    }));
                    self.summarized = Some(epoch);
                    self.next_summary_check = UnixMillis((epoch + 1) * e_ms);
                } else {
                    self.next_summary_check = due.max(now.saturating_add(Duration::from_secs(1)));
                }
            } else {
                self.next_summary_check = UnixMillis((epoch + 1) * e_ms);
            }
            // A size outlives three epochs of silence at most.
            let keep = epoch_len * 3;
            self.sizes.retain(|_, r| now.since(r.heard_at) <= keep);
        }
        out
    }

    /// When [`Roster::poll`] next has something to do.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        self.cluster.map(|_| self.next_heartbeat.min(self.next_summary_check))
    }

    pub fn drops(&self) -> &BTreeMap<RosterDrop, u64> {
        &self.drops
    }

    /// Roughly what this roster keeps in memory: [`SIGHTING_BYTES`] per first sighting
    /// and [`SIZE_RECORD_BYTES`] per known cluster size.
    pub fn state_bytes(&self) -> u64 {
        self.book.len() as u64 * SIGHTING_BYTES + self.sizes.len() as u64 * SIZE_RECORD_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::{Digest, Envelope};

    fn key(i: u32) -> PublicKey {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        PublicKey(k)
    }

    fn cluster(i: u8) -> ClusterKey {
        ClusterKey(Digest([i; 32]))
    }

    const MIN: u64 = 60_000;

    #[test]
    fn sizes_round_so_nearby_counts_agree() {
        assert_eq!(round_size(0), 1);
        assert_eq!(round_size(3), 3);
        assert_eq!(round_size(100), round_size(103));
        assert_eq!(round_size(95_000), round_size(96_000));
        for n in [5u64, 37, 1000, 123_456] {
            let r = round_size(n) as f64;
            assert!((r / n as f64 - 1.0).abs() < 0.1, "{n} → {r}");
        }
    }

    #[test]
    fn a_clusters_heartbeat_rate_is_flat_above_a_few_dozen_members() {
        for size in [1u64, 10, 30] {
            assert_eq!(heartbeat_period(size), MIN_HEARTBEAT);
        }
        for size in [1_000u64, 100_000, 1_000_000] {
            let per_min = size as f64 * 60.0 / heartbeat_period(size).as_secs_f64();
            assert!((per_min - HEARTBEATS_PER_MIN as f64).abs() < 0.5, "{size}: {per_min}/min");
        }
    }

    #[test]
    fn the_fleet_wide_summary_rate_is_flat_in_the_number_of_clusters() {
        for clusters in [10u64, 1_000, 20_000, 1_000_000] {
            let epoch = epoch_length(clusters);
            let per_min = clusters as f64 * 60.0 / epoch.as_secs_f64();
            assert!(per_min <= SUMMARIES_PER_MIN as f64, "{clusters}: {per_min}/min");
            assert_eq!(epoch_length(clusters + clusters / 3), epoch.max(epoch_length(clusters + clusters / 3)));
        }
        // About one member per cluster is on duty each epoch.
        let c = cluster(1);
        let on_duty: usize = (0..200u64).map(|e| (0..50).filter(|m| summary_duty(e, &c, &key(*m), 50)).count()).sum();
        assert!((300..=500).contains(&on_duty), "{on_duty} duties over 200 epochs of a 50-member cluster");
    }

    #[test]
    fn members_are_counted_while_heard_and_forgotten_after_their_periods() {
        let mut r = Roster::new("app", key(0), UnixMillis(0));
        r.set_cluster(cluster(1), UnixMillis(0));
        for i in 1..10 {
            r.heard(key(i), UnixMillis(1_000)).unwrap();
        }
        assert!(!r.is_settled(UnixMillis(30_000)));
        r.poll(UnixMillis(MIN + 1));
        assert_eq!(r.own_size(), 10);
        assert!(r.is_settled(UnixMillis(MIN + 1)));
        assert_eq!(r.members(UnixMillis(MIN)).len(), 10);
        // Nine go silent; after five periods only this node is left.
        assert_eq!(r.members(UnixMillis(1_000 + 5 * MIN + 121_000)).len(), 1);
    }

    #[test]
    fn heartbeats_for_another_cluster_or_stale_ones_are_dropped_and_counted() {
        let kp = Keypair::from_secret_bytes(&[9; 32]);
        let mut r = Roster::new("app", key(0), UnixMillis(0));
        r.set_cluster(cluster(1), UnixMillis(0));
        let sign = |c: ClusterKey, at: u64| -> Verified<Heartbeat> {
            Envelope::sign(&kp, &Heartbeat { app: "app".into(), cluster_key: c }, UnixMillis(at))
                .unwrap()
                .verify()
                .unwrap()
        };
        assert_eq!(r.on_heartbeat(&sign(cluster(2), 500_000), UnixMillis(500_000)), Err(RosterDrop::OtherCluster));
        assert_eq!(r.on_heartbeat(&sign(cluster(1), 0), UnixMillis(500_000)), Err(RosterDrop::Stale));
        assert_eq!(r.on_heartbeat(&sign(cluster(1), 499_000), UnixMillis(500_000)), Ok(Observed::New));
        assert_eq!(r.on_heartbeat(&sign(cluster(1), 520_000), UnixMillis(530_000)), Ok(Observed::Known));
        assert_eq!(r.drops()[&RosterDrop::Stale], 1);
        // The first sighting is the time it was heard, not the signer's claim.
        assert_eq!(
            r.members(UnixMillis(530_000)).iter().find(|p| p.peer == kp.public()).unwrap().since,
            UnixMillis(500_000)
        );
    }

    #[test]
    fn a_member_heartbeats_once_per_period_at_its_own_phase() {
        let mut r = Roster::new("app", key(7), UnixMillis(0));
        r.set_cluster(cluster(1), UnixMillis(0));
        let mut beats = Vec::new();
        let mut now = 0;
        while now < 10 * MIN {
            if r.poll(UnixMillis(now)).iter().any(|a| matches!(a, RosterAction::Heartbeat(_))) {
                beats.push(now);
            }
            now = r.next_deadline().unwrap().0.max(now + 1);
        }
        assert!((10..=11).contains(&beats.len()), "{beats:?}");
        for w in beats.windows(2).skip(1) {
            assert_eq!(w[1] - w[0], MIN);
        }
    }

    #[test]
    fn summary_tables_are_capped_and_keep_the_newest_epoch() {
        let mut r = Roster::new("app", key(0), UnixMillis(0));
        r.set_cluster(cluster(0), UnixMillis(0));
        r.summary_heard(cluster(1), 40, 5, UnixMillis(10)).unwrap();
        assert_eq!(r.summary_heard(cluster(1), 80, 4, UnixMillis(11)), Err(RosterDrop::Older));
        r.summary_heard(cluster(1), 50, 6, UnixMillis(12)).unwrap();
        assert_eq!(r.sizes()[&cluster(1)], 50);
        // The own cluster's summary sets the heartbeat period every member uses.
        r.summary_heard(cluster(0), 6_000, 6, UnixMillis(12)).unwrap();
        assert_eq!(r.period(), heartbeat_period(6_000));
        assert_eq!(r.summary_heard(cluster(0), 50, 5, UnixMillis(13)), Err(RosterDrop::Older));
        for i in 0..MAX_CLUSTERS as u32 {
            let mut d = [0xAB; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            let _ = r.summary_heard(ClusterKey(Digest(d)), 3, 1, UnixMillis(20));
        }
        assert_eq!(r.cluster_count(), MAX_CLUSTERS + 1);
        assert!(r.state_bytes() < 64 << 20);
    }
}
