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
//!
//! A node that was down missed its cluster-mates' heartbeats. In a big cluster each
//! member heartbeats only once a period (hours), so a missed one would leave the node
//! counting a departed member a period less, or a present one not at all, than its
//! cluster-mates: they would disagree on who is live, and so on representatives. So a
//! resumed node asks one cluster-mate for the signed heartbeats it kept over the
//! downtime ([`CatchUpRequest`], [`CatchUp`]); each member keeps the last
//! [`CATCH_UP_WINDOW`] of its topic, at most [`MAX_CATCH_UP`] heartbeats.

use crate::envelope::{Envelope, MessageKind, SignedPayload, Verified};
use crate::fingerprint::scope::validate_membership_name;
use crate::fingerprint::ClusterKey;
use crate::identity::PublicKey;
use crate::presence::{Observed, Presence, PresenceBook, Sighting};
use crate::time::UnixMillis;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
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
/// The shortest summary epoch: a little over the shortest heartbeat period, so a fresh
/// node of a small fleet is ready to stage after 75 s ([`Roster::is_ready`]). Epochs
/// double with the number of clusters ([`RosterTiming::epoch_length`]); 600 s is one of
/// the doublings, so fleets with epochs that long or longer get the same ones as with a
/// ten-minute floor.
pub const MIN_EPOCH: Duration = Duration::from_secs(75);
/// Most clusters whose sizes a node keeps; summaries for more are dropped and counted.
pub const MAX_CLUSTERS: usize = 65_536;
/// A heartbeat counts only this fresh: a sighting is "now", never a signed claim about
/// the past.
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(120);
/// Largest size a summary may state.
pub const MAX_CLUSTER_SIZE: u64 = 1 << 32;
/// How far back a member keeps its topic's heartbeats for cluster-mates that were down.
/// Nine restarts in ten are shorter than this at the simulator's five-minute mean.
pub const CATCH_UP_WINDOW: Duration = Duration::from_secs(30 * 60);
/// Most heartbeats kept for, and carried by, one catch-up: the window at the topic's
/// rate ([`HEARTBEATS_PER_MIN`]) with room for bursts (about 160 KB on the wire).
pub const MAX_CATCH_UP: usize = 1024;
/// How soon a heartbeat that reached no one is tried again.
pub const HEARTBEAT_RETRY: Duration = Duration::from_secs(2);
/// Memory per kept heartbeat: its envelope and the time heard.
pub const KEPT_HEARTBEAT_BYTES: u64 = 200;

/// "I am in this cluster": a member's periodic sign of life on its cluster's topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub app: String,
    pub cluster_key: ClusterKey,
}

impl SignedPayload for Heartbeat {
    const KIND: MessageKind = MessageKind::Heartbeat;

    fn validate(&self) -> Result<(), String> {
        validate_membership_name(&self.app)
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
        validate_membership_name(&self.app)?;
        if self.size == 0 || self.size > MAX_CLUSTER_SIZE {
            return Err(format!("cluster size {} outside 1..={MAX_CLUSTER_SIZE}", self.size));
        }
        Ok(())
    }
}

/// A resumed member's request to a cluster-mate: the heartbeats it kept since `since`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpRequest {
    pub app: String,
    pub cluster_key: ClusterKey,
    pub since: UnixMillis,
}

/// The answer: heartbeats as their signers signed them (each checked on its own), and
/// from when the answering member was listening without a gap. Unsigned as a whole: a
/// member that leaves heartbeats out only makes the asker count fewer members, which
/// the asker would have done without asking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUp {
    pub app: String,
    pub cluster_key: ClusterKey,
    pub covers_from: UnixMillis,
    pub heartbeats: Vec<Envelope>,
}

/// What a catch-up changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaughtUp {
    /// Known members whose last sighting moved to a heartbeat in the downtime.
    pub refreshed: u64,
    /// Members first seen in the catch-up; their standing starts now.
    pub new: u64,
    /// Heartbeats dropped (counted by reason in [`Roster::drops`]).
    pub dropped: u64,
    /// The answer covered the whole downtime: the view is settled again at once.
    pub covered: bool,
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

/// The roster's time scale. Periods, epochs, liveness and settling follow from it, so
/// every node of a fleet must use the same one: production runs at scale 1, a loopback
/// testnet compressed (every duration divided by the scale, so every rate multiplied)
/// so that a rollout fits in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RosterTiming {
    scale: u32,
}

impl Default for RosterTiming {
    fn default() -> Self {
        RosterTiming { scale: 1 }
    }
}

impl RosterTiming {
    /// Production's timing compressed `factor`-fold.
    pub fn scaled(factor: u32) -> Self {
        RosterTiming { scale: factor.max(1) }
    }

    pub fn scale(&self) -> u32 {
        self.scale
    }

    fn compress(&self, d: Duration) -> Duration {
        d / self.scale
    }

    /// No member heartbeats more often than this.
    pub fn min_heartbeat(&self) -> Duration {
        self.compress(MIN_HEARTBEAT)
    }

    /// How often a member of a cluster of `size` heartbeats.
    pub fn heartbeat_period(&self, size: u64) -> Duration {
        let ms = size.saturating_mul(60_000) / HEARTBEATS_PER_MIN;
        self.compress(Duration::from_millis(ms).max(MIN_HEARTBEAT))
    }

    /// How long after its first sighting a member of a cluster with heartbeat `period`
    /// counts as present (see [`Roster::members`]).
    pub fn establishment(&self, period: Duration) -> Duration {
        if period > self.min_heartbeat() {
            period * 3
        } else {
            Duration::ZERO
        }
    }

    /// How long a summary epoch lasts when the node knows of `clusters` clusters: the
    /// shortest power-of-two multiple of [`MIN_EPOCH`] over which one summary per
    /// cluster stays under [`SUMMARIES_PER_MIN`] (at scale 1). Nodes whose counts differ
    /// by less than a factor of two agree on it.
    pub fn epoch_length(&self, clusters: u64) -> Duration {
        self.compress(production_epoch(clusters))
    }

    /// Members on summary duty per cluster and epoch, on average. A fleet with few
    /// clusters would leave the app topic's budget (a shortest epoch's worth of
    /// [`SUMMARIES_PER_MIN`]) mostly unused at [`DUTY_PER_EPOCH`], and a cluster
    /// unsummarized for a whole epoch one time in eight; there the budget is shared
    /// out instead, so every small cluster is summarized in every epoch. Only senders
    /// use this (a receiver takes any member's summary), so nodes that count the
    /// clusters a little differently do no harm.
    pub fn duty(&self, clusters: u64) -> u64 {
        if production_epoch(clusters) > MIN_EPOCH {
            return DUTY_PER_EPOCH;
        }
        let budget = SUMMARIES_PER_MIN * MIN_EPOCH.as_secs() / 60;
        (budget / clusters.max(1)).max(DUTY_PER_EPOCH)
    }
}

fn production_epoch(clusters: u64) -> Duration {
    let mut epoch = MIN_EPOCH;
    while clusters.saturating_mul(DUTY_PER_EPOCH * 60) > SUMMARIES_PER_MIN.saturating_mul(epoch.as_secs())
        && epoch < MAX_EPOCH
    {
        epoch *= 2;
    }
    epoch
}

/// How often a member of a cluster of `size` heartbeats, at the default timing.
pub fn heartbeat_period(size: u64) -> Duration {
    RosterTiming::default().heartbeat_period(size)
}

/// [`RosterTiming::establishment`] at the default timing.
pub fn establishment(period: Duration) -> Duration {
    RosterTiming::default().establishment(period)
}

/// [`RosterTiming::epoch_length`] at the default timing.
pub fn epoch_length(clusters: u64) -> Duration {
    RosterTiming::default().epoch_length(clusters)
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

/// Whether `peer` signs its cluster's summary in `epoch`: about `duty` members of a
/// cluster of `size` do ([`RosterTiming::duty`]), and anyone can check who.
pub fn summary_duty(epoch: u64, cluster: &ClusterKey, peer: &PublicKey, size: u64, duty: u64) -> bool {
    unit(b"mirage/v1/summary-duty", &[&epoch.to_be_bytes(), &cluster.0 .0, &peer.0]) < duty as f64 / size.max(1) as f64
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
    #[error("bad signature or payload")]
    Invalid,
    #[error("a caught-up heartbeat signed outside the downtime it was asked for")]
    OutsideCatchUp,
    #[error("a catch-up nobody asked for")]
    Unsolicited,
    #[error("a catch-up over its heartbeat limit")]
    CatchUpTooLong,
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
            RosterDrop::Invalid => "invalid",
            RosterDrop::OutsideCatchUp => "outside_catch_up",
            RosterDrop::Unsolicited => "unsolicited",
            RosterDrop::CatchUpTooLong => "catch_up_too_long",
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
    /// Ask a cluster-mate for what this node missed while down; hand the answer to
    /// [`Roster::on_catch_up`].
    CatchUp(CatchUpRequest),
}

/// A restart whose catch-up has not been answered yet.
#[derive(Clone, Copy, Debug)]
struct Resumed {
    down_since: UnixMillis,
    /// When the view had been listening from before the restart.
    listening_since: UnixMillis,
    asked: bool,
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
    timing: RosterTiming,
    /// Since when this node has been taking summaries: sizes of other clusters are
    /// complete only after a whole epoch of them.
    sizes_since: UnixMillis,
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
    /// Heartbeats heard over the last [`CATCH_UP_WINDOW`], oldest first, for
    /// cluster-mates that were down.
    kept: VecDeque<(UnixMillis, Envelope)>,
    /// Since when `kept` has no gap (this node was up and in this cluster).
    kept_since: UnixMillis,
    resumed: Option<Resumed>,
}

impl Roster {
    pub fn new(app: &str, me: PublicKey, now: UnixMillis) -> Self {
        Roster::with_timing(app, me, now, RosterTiming::default())
    }

    /// A roster on another time scale than production's (every node of the fleet must
    /// use the same).
    pub fn with_timing(app: &str, me: PublicKey, now: UnixMillis, timing: RosterTiming) -> Self {
        Roster {
            app: app.to_string(),
            me,
            timing,
            sizes_since: now,
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
            kept: VecDeque::new(),
            kept_since: now,
            resumed: None,
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
        self.estimate = self.live_count(now).max(1);
        self.next_heartbeat = now;
        self.summarized = None;
        self.own_summary = None;
        self.kept.clear();
        self.kept_since = now;
        self.resumed = None;
    }

    pub fn cluster(&self) -> Option<ClusterKey> {
        self.cluster
    }

    /// What this roster holds of `peer`: its cluster, first and last sighting.
    pub fn sighting(&self, peer: &PublicKey) -> Option<Sighting> {
        self.book.get(peer).copied()
    }

    /// Puts back a node's persisted first sightings (its standing survives a restart).
    pub fn book_mut(&mut self) -> &mut PresenceBook {
        &mut self.book
    }

    /// A heartbeat off the cluster's topic. Kept for cluster-mates that were down.
    pub fn on_heartbeat(&mut self, env: &Envelope, now: UnixMillis) -> Result<Observed, RosterDrop> {
        let r = self.check_heartbeat(env).and_then(|signer| {
            if env.issued_at > now.saturating_add(HEARTBEAT_MAX_AGE) || now.since(env.issued_at) > HEARTBEAT_MAX_AGE {
                return Err(RosterDrop::Stale);
            }
            self.heard(signer, now)
        });
        match r {
            Ok(_) => self.keep(env, now),
            Err(why) => self.tally(why),
        }
        r
    }

    /// Signature, app, cluster and signer of a heartbeat, not its age.
    fn check_heartbeat(&self, env: &Envelope) -> Result<PublicKey, RosterDrop> {
        let hb = env.verify::<Heartbeat>().map_err(|_| RosterDrop::Invalid)?;
        let p = hb.payload();
        if p.app != self.app {
            return Err(RosterDrop::OtherApp);
        }
        if Some(p.cluster_key) != self.cluster {
            return Err(RosterDrop::OtherCluster);
        }
        if hb.signer() == &self.me {
            return Err(RosterDrop::Own);
        }
        Ok(*hb.signer())
    }

    fn keep(&mut self, env: &Envelope, now: UnixMillis) {
        while self.kept.len() >= MAX_CATCH_UP
            || self.kept.front().is_some_and(|(at, _)| now.since(*at) > CATCH_UP_WINDOW)
        {
            if let Some((at, _)) = self.kept.pop_front() {
                self.kept_since = self.kept_since.max(at);
            }
        }
        self.kept.push_back((now, env.clone()));
    }

    /// What this node answers a cluster-mate's [`CatchUpRequest`] with: nothing for
    /// another app or cluster.
    pub fn serve_catch_up(&self, req: &CatchUpRequest, now: UnixMillis) -> Option<CatchUp> {
        if req.app != self.app || Some(req.cluster_key) != self.cluster {
            return None;
        }
        let from = req.since.max(now.saturating_sub(CATCH_UP_WINDOW));
        let heartbeats: Vec<Envelope> =
            self.kept.iter().filter(|(at, _)| *at >= from).map(|(_, env)| env.clone()).collect();
        Some(CatchUp {
            app: self.app.clone(),
            cluster_key: req.cluster_key,
            covers_from: self.kept_since.max(now.saturating_sub(CATCH_UP_WINDOW)),
            heartbeats,
        })
    }

    /// A cluster-mate's answer to this node's [`RosterAction::CatchUp`]: each heartbeat
    /// checked as one off the topic, except that it may be as old as the downtime.
    pub fn on_catch_up(&mut self, answer: &CatchUp, now: UnixMillis) -> CaughtUp {
        let Some(resumed) = self.resumed.filter(|r| r.asked) else {
            self.tally(RosterDrop::Unsolicited);
            return CaughtUp { dropped: answer.heartbeats.len() as u64, ..CaughtUp::default() };
        };
        if answer.app != self.app || Some(answer.cluster_key) != self.cluster {
            self.tally(RosterDrop::OtherCluster);
            return CaughtUp { dropped: answer.heartbeats.len() as u64, ..CaughtUp::default() };
        }
        let mut dropped = 0u64;
        let over = answer.heartbeats.len().saturating_sub(MAX_CATCH_UP) as u64;
        if over > 0 {
            *self.drops.entry(RosterDrop::CatchUpTooLong).or_default() += over;
            dropped += over;
        }
        let earliest = resumed.down_since.saturating_sub(HEARTBEAT_MAX_AGE);
        let mut heard = Vec::with_capacity(answer.heartbeats.len().min(MAX_CATCH_UP));
        for env in answer.heartbeats.iter().take(MAX_CATCH_UP) {
            let r = self.check_heartbeat(env).and_then(|signer| {
                if env.issued_at < earliest || env.issued_at > now.saturating_add(HEARTBEAT_MAX_AGE) {
                    return Err(RosterDrop::OutsideCatchUp);
                }
                Ok((signer, env.issued_at))
            });
            match r {
                Ok(h) => heard.push(h),
                Err(why) => {
                    self.tally(why);
                    dropped += 1;
                }
            }
        }
        let mut out = self.caught_up(heard, answer.covers_from, now);
        out.dropped += dropped;
        out
    }

    /// Heartbeats (signer, signed time) that reached this node in a catch-up answer
    /// covering the time from `covers_from`, checked as [`Roster::on_catch_up`] does.
    /// (The simulator's observers feed this directly.)
    ///
    /// Each counts as heard when it was signed, within the downtime: a known member's
    /// last sighting moves there, as if this node had been up. A member first seen here
    /// counts from now, this node's own receipt, so a key minted during the downtime
    /// cannot date its standing back. An answer that covers the whole downtime leaves
    /// the view settled as it was before.
    pub fn caught_up(
        &mut self,
        heard: impl IntoIterator<Item = (PublicKey, UnixMillis)>,
        covers_from: UnixMillis,
        now: UnixMillis,
    ) -> CaughtUp {
        let mut out = CaughtUp::default();
        let (Some(cluster), Some(resumed)) = (self.cluster, self.resumed.take()) else {
            self.tally(RosterDrop::Unsolicited);
            return out;
        };
        for (peer, signed) in heard {
            if self.book.refresh(&peer, &cluster, signed.clamp(resumed.down_since, now)) {
                out.refreshed += 1;
            } else if self.book.observe(peer, cluster, now) == Observed::Dropped {
                self.tally(RosterDrop::BookFull);
                out.dropped += 1;
            } else {
                out.new += 1;
            }
        }
        out.covered = covers_from <= resumed.down_since;
        if out.covered {
            self.listening_since = self.listening_since.min(resumed.listening_since);
        }
        out
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
            self.tally(why);
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
            let size = size.clamp(1, MAX_CLUSTER_SIZE);
            self.own_summary = match self.own_summary {
                Some((e, _)) if e > epoch => return Err(RosterDrop::Older),
                Some((e, s)) if e == epoch => Some((e, s.max(size))),
                _ => Some((epoch, size)),
            };
            return Ok(());
        }
        let record = SizeRecord { size: size.clamp(1, MAX_CLUSTER_SIZE), epoch, heard_at: now };
        let full = self.sizes.len() >= MAX_CLUSTERS;
        match self.sizes.get_mut(&cluster) {
            Some(old) if old.epoch > epoch => Err(RosterDrop::Older),
            // Members on duty in one epoch may count a member or two apart: the larger
            // stands, so every node keeps the same whatever the arrival order.
            Some(old) if old.epoch == epoch => {
                old.size = old.size.max(record.size);
                old.heard_at = now;
                Ok(())
            }
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

    /// Members of our cluster heard within the expiry window, this node included.
    pub fn live_count(&self, now: UnixMillis) -> u64 {
        let Some(cluster) = self.cluster else { return 0 };
        self.live_members(&cluster, now).count() as u64
    }

    /// Members heard within [`EXPIRY_PERIODS`] periods (and a heartbeat's age), with
    /// their first sightings. This node is live for itself whenever it asks.
    fn live_members<'a>(&'a self, cluster: &'a ClusterKey, now: UnixMillis) -> impl Iterator<Item = Presence> + 'a {
        let window = self.period() * EXPIRY_PERIODS + self.timing.compress(HEARTBEAT_MAX_AGE);
        self.book
            .iter()
            .filter(move |(p, s)| &s.cluster == cluster && (now.since(s.last_seen) <= window || **p == self.me))
            .map(|(peer, s)| Presence { peer: *peer, since: s.since })
    }

    /// Other live members of this node's cluster, in no particular order.
    pub fn live_peers(&self, now: UnixMillis) -> impl Iterator<Item = PublicKey> + '_ {
        self.cluster.iter().flat_map(move |c| self.live_members(c, now)).map(|p| p.peer).filter(|p| *p != self.me)
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
        let settle = self.timing.establishment(self.period());
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
        self.timing.heartbeat_period(self.own_summary.map_or_else(|| self.own_size(), |(_, size)| size))
    }

    /// Every cluster's size as this node knows it (its own included), for the stage plan.
    /// Its own cluster's too comes from the newest summary where there is one: that is
    /// what every other node plans with, where this node's own count could differ.
    pub fn sizes(&self) -> BTreeMap<ClusterKey, u64> {
        let mut out: BTreeMap<ClusterKey, u64> = self.sizes.iter().map(|(c, r)| (*c, r.size)).collect();
        if let Some(c) = self.cluster {
            out.insert(c, self.own_summary.map_or_else(|| self.own_size(), |(_, size)| size));
        }
        out
    }

    pub fn cluster_count(&self) -> usize {
        self.sizes.len() + usize::from(self.cluster.is_some())
    }

    /// The summary epoch length this node uses now.
    pub fn epoch(&self) -> Duration {
        self.timing.epoch_length(self.cluster_count() as u64)
    }

    /// Whether the view has settled: the node has listened for a full heartbeat period
    /// of its cluster, so it has heard every live member at least once. A node whose
    /// view has not settled waits rather than plan alone.
    pub fn is_settled(&self, now: UnixMillis) -> bool {
        self.cluster.is_some() && now.since(self.listening_since) >= self.period()
    }

    /// Whether staging may act on this view: it has settled, and the node has taken
    /// summaries for a whole epoch, so it knows the sizes of the fleet's clusters as
    /// its peers do. Until then a node waits rather than plan its stages alone.
    pub fn is_ready(&self, now: UnixMillis) -> bool {
        self.is_settled(now) && now.since(self.sizes_since) >= self.epoch()
    }

    /// The node is back at `now` after being down since `down_since`, with this roster
    /// restored from disk. A member's heartbeat slot follows from its key, so it keeps
    /// its phase rather than heartbeat at once: a fleet of restarting nodes does not
    /// flood its clusters' topics. Its view stays settled if it was down for less than a
    /// heartbeat period (it missed at most one heartbeat of each member); otherwise it
    /// listens for a period again first.
    pub fn resume(&mut self, down_since: UnixMillis, now: UnixMillis) {
        let period = self.period();
        self.resumed = Some(Resumed { down_since, listening_since: self.listening_since, asked: false });
        self.kept.clear();
        self.kept_since = now;
        if now.since(down_since) >= period {
            self.listening_since = now;
        }
        if let Some(cluster) = self.cluster {
            self.book.observe(self.me, cluster, now);
        }
        // At once, as a member that just joined does: its cluster-mates learn it is
        // back without waiting up to a period for its slot (a restart made the e2e
        // test wait past a minute).
        self.next_heartbeat = now;
    }

    /// Timers: this node's heartbeat, its summary duty, forgetting silent clusters.
    pub fn poll(&mut self, now: UnixMillis) -> Vec<RosterAction> {
        let Some(cluster) = self.cluster else { return Vec::new() };
        let mut out = Vec::new();
        if let Some(r) = self.resumed.as_mut().filter(|r| !r.asked) {
            r.asked = true;
            out.push(RosterAction::CatchUp(CatchUpRequest {
                app: self.app.clone(),
                cluster_key: cluster,
                since: r.down_since.saturating_sub(HEARTBEAT_MAX_AGE),
            }));
        }
        if now >= self.next_heartbeat {
            self.estimate = self.live_count(now).max(1);
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
            if self.summarized != Some(epoch)
                && summary_duty(epoch, &cluster, &self.me, size, self.timing.duty(self.cluster_count() as u64))
            {
                if now >= due && self.is_settled(now) {
                    // The count now, not at this member's last heartbeat.
                    self.estimate = self.live_count(now).max(1);
                    let size = self.own_size();
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
        // A catch-up to ask for is due at once.
        let ask = if self.resumed.is_some_and(|r| !r.asked) { UnixMillis(0) } else { UnixMillis::MAX };
        self.cluster.map(|_| self.next_heartbeat.min(self.next_summary_check).min(ask))
    }

    /// The heartbeat [`Roster::poll`] last asked for reached no one (no member of the
    /// cluster is connected yet, as right after joining): try again shortly. It never
    /// went out, so the retry adds nothing to the topic's rate.
    pub fn heartbeat_not_sent(&mut self, now: UnixMillis) {
        self.next_heartbeat = self.next_heartbeat.min(now.saturating_add(HEARTBEAT_RETRY));
    }

    fn tally(&mut self, why: RosterDrop) {
        *self.drops.entry(why).or_default() += 1;
    }

    /// Counts a drop its caller found (a message that does not even decode).
    pub fn count<T>(&mut self, why: RosterDrop) -> Result<T, RosterDrop> {
        self.tally(why);
        Err(why)
    }

    pub fn drops(&self) -> &BTreeMap<RosterDrop, u64> {
        &self.drops
    }

    /// Roughly what this roster keeps in memory: [`SIGHTING_BYTES`] per first sighting
    /// and [`SIZE_RECORD_BYTES`] per known cluster size.
    pub fn state_bytes(&self) -> u64 {
        self.book.len() as u64 * SIGHTING_BYTES
            + self.sizes.len() as u64 * SIZE_RECORD_BYTES
            + self.kept.len() as u64 * KEPT_HEARTBEAT_BYTES
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
        let on_duty: usize =
            (0..200u64).map(|e| (0..50).filter(|m| summary_duty(e, &c, &key(*m), 50, DUTY_PER_EPOCH)).count()).sum();
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
        let sign = |c: ClusterKey, at: u64| -> Envelope {
            Envelope::sign(&kp, &Heartbeat { app: "app".into(), cluster_key: c }, UnixMillis(at)).unwrap()
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
    fn a_node_waits_a_whole_epoch_of_summaries_before_staging_on_its_view() {
        let timing = RosterTiming::scaled(100);
        let mut r = Roster::with_timing("app", key(0), UnixMillis(0), timing);
        r.set_cluster(cluster(0), UnixMillis(0));
        let period = r.period().as_millis() as u64;
        let epoch = r.epoch().as_millis() as u64;
        assert_eq!((period, epoch), (600, 750));
        assert_eq!(RosterTiming::default().epoch_length(1), MIN_EPOCH);
        assert!(r.is_settled(UnixMillis(period)));
        assert!(!r.is_ready(UnixMillis(epoch - 1)), "sizes heard for less than an epoch");
        assert!(r.is_ready(UnixMillis(epoch)));
        // A big fleet's epochs are longer than any period: readiness waits for them.
        for i in 0..5_000u32 {
            let mut d = [0xCD; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            r.summary_heard(ClusterKey(Digest(d)), 3, 0, UnixMillis(10)).unwrap();
        }
        let epoch = r.epoch().as_millis() as u64;
        assert!(epoch > 100 * period);
        assert!(!r.is_ready(UnixMillis(epoch - 1)));
    }

    #[test]
    fn in_a_fleet_of_few_clusters_every_small_cluster_is_summarized_every_epoch() {
        let t = RosterTiming::default();
        assert_eq!(t.duty(20_000), DUTY_PER_EPOCH, "the app topic's rate is capped in big fleets");
        let duty = t.duty(4);
        for e in 0..100u64 {
            for c in 0..4u8 {
                let on_duty = (0..3).filter(|m| summary_duty(e, &cluster(c), &key(*m), 3, duty)).count();
                assert_eq!(on_duty, 3);
            }
        }
        // The budget holds: at most a shortest epoch's worth of summaries per epoch.
        for clusters in [1u64, 10, 149, 150, 151, 1_000, 9_000] {
            let per_epoch = clusters * t.duty(clusters);
            let budget = SUMMARIES_PER_MIN * t.epoch_length(clusters).as_secs() / 60;
            assert!(per_epoch <= budget.max(clusters * DUTY_PER_EPOCH), "{clusters} clusters: {per_epoch}");
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

    fn beat(kp: &Keypair, c: ClusterKey, at: u64) -> Envelope {
        Envelope::sign(kp, &Heartbeat { app: "app".into(), cluster_key: c }, UnixMillis(at)).unwrap()
    }

    /// A 3,000-member cluster: heartbeats every 100 minutes.
    fn big_cluster_roster(me: PublicKey) -> Roster {
        let mut r = Roster::new("app", me, UnixMillis(0));
        r.set_cluster(cluster(1), UnixMillis(0));
        r.summary_heard(cluster(1), 3_000, 1, UnixMillis(0)).unwrap();
        assert_eq!(r.period(), Duration::from_secs(6_000));
        r
    }

    #[test]
    fn a_resumed_member_catches_up_on_the_heartbeats_it_missed() {
        let members: Vec<Keypair> = (1..=3).map(|i| Keypair::from_secret_bytes(&[i; 32])).collect();
        let mut up = big_cluster_roster(key(100));
        let mut was_down = big_cluster_roster(key(101));
        for kp in &members {
            up.on_heartbeat(&beat(kp, cluster(1), 1_000), UnixMillis(1_000)).unwrap();
            was_down.on_heartbeat(&beat(kp, cluster(1), 1_000), UnixMillis(1_000)).unwrap();
        }
        // One more heartbeat each while `was_down` is down from 100 to 110 minutes.
        for kp in &members {
            let at = 105 * MIN;
            up.on_heartbeat(&beat(kp, cluster(1), at), UnixMillis(at)).unwrap();
        }
        was_down.resume(UnixMillis(100 * MIN), UnixMillis(110 * MIN));
        let asked = was_down.poll(UnixMillis(110 * MIN));
        let Some(RosterAction::CatchUp(req)) = asked.first() else { panic!("no catch-up asked: {asked:?}") };
        let answer = up.serve_catch_up(req, UnixMillis(110 * MIN)).unwrap();
        assert_eq!(answer.heartbeats.len(), 3);
        let got = was_down.on_catch_up(&answer, UnixMillis(110 * MIN));
        assert_eq!((got.refreshed, got.new, got.dropped), (3, 0, 0));
        // Both now expire the members at the same time.
        let expiry = 105 * MIN + 5 * 100 * MIN + 120_000;
        let others = |r: &Roster, t: u64| -> Vec<PublicKey> {
            r.members(UnixMillis(t)).into_iter().map(|p| p.peer).filter(|p| ![key(100), key(101)].contains(p)).collect()
        };
        assert_eq!(others(&up, expiry - 1).len(), 3);
        for t in [expiry - 1, expiry + 1] {
            assert_eq!(others(&up, t), others(&was_down, t), "at {t}");
        }
        // A second answer is unsolicited.
        assert_eq!(was_down.on_catch_up(&answer, UnixMillis(111 * MIN)).dropped, 3);
        assert_eq!(was_down.drops()[&RosterDrop::Unsolicited], 1);
    }

    #[test]
    fn a_restarted_member_heartbeats_at_once_then_keeps_its_slot() {
        let mut r = Roster::new("app", key(0), UnixMillis(0));
        r.set_cluster(cluster(1), UnixMillis(0));
        let _ = r.poll(UnixMillis(0));
        r.resume(UnixMillis(10 * MIN), UnixMillis(20 * MIN));
        let beats = |acts: &[RosterAction]| acts.iter().filter(|a| matches!(a, RosterAction::Heartbeat(_))).count();
        assert_eq!(beats(&r.poll(UnixMillis(20 * MIN))), 1, "a heartbeat at once");
        assert_eq!(beats(&r.poll(UnixMillis(20 * MIN + 1))), 0, "then only at its slot");
    }

    /// A member of a small cluster, down from minute 10 to 20, that asked for a catch-up.
    fn asked_for_catch_up() -> Roster {
        let mut r = Roster::new("app", key(0), UnixMillis(0));
        r.set_cluster(cluster(1), UnixMillis(0));
        r.resume(UnixMillis(10 * MIN), UnixMillis(20 * MIN));
        assert!(matches!(r.poll(UnixMillis(20 * MIN)).first(), Some(RosterAction::CatchUp(_))));
        r
    }

    #[test]
    fn a_key_first_seen_in_a_catch_up_counts_from_its_receipt_not_its_signature() {
        let mut r = asked_for_catch_up();
        let minted = Keypair::from_secret_bytes(&[42; 32]);
        let answer = CatchUp {
            app: "app".into(),
            cluster_key: cluster(1),
            covers_from: UnixMillis(0),
            heartbeats: vec![beat(&minted, cluster(1), 10 * MIN + 1)],
        };
        let got = r.on_catch_up(&answer, UnixMillis(20 * MIN));
        assert_eq!(got.new, 1);
        let p = r.members(UnixMillis(20 * MIN)).into_iter().find(|p| p.peer == minted.public()).unwrap();
        assert_eq!(p.since, UnixMillis(20 * MIN));
    }

    #[test]
    fn a_catch_up_that_covers_the_downtime_keeps_the_view_settled() {
        let mut r = Roster::new("app", key(0), UnixMillis(0));
        r.set_cluster(cluster(1), UnixMillis(0));
        assert!(r.is_settled(UnixMillis(10 * MIN)));
        // Down five periods of a small cluster: unsettled until a period has passed...
        r.resume(UnixMillis(10 * MIN), UnixMillis(15 * MIN));
        assert!(!r.is_settled(UnixMillis(15 * MIN)));
        let _ = r.poll(UnixMillis(15 * MIN));
        // ...or until a cluster-mate that was up all along answers.
        let partial = CatchUp {
            app: "app".into(),
            cluster_key: cluster(1),
            covers_from: UnixMillis(12 * MIN),
            heartbeats: vec![],
        };
        let mut r2 = r.clone();
        assert!(!r2.on_catch_up(&partial, UnixMillis(15 * MIN)).covered);
        assert!(!r2.is_settled(UnixMillis(15 * MIN)));
        let whole = CatchUp { covers_from: UnixMillis(MIN), ..partial };
        assert!(r.on_catch_up(&whole, UnixMillis(15 * MIN)).covered);
        assert!(r.is_settled(UnixMillis(15 * MIN)));
    }

    #[test]
    fn catch_up_answers_are_checked_heartbeat_by_heartbeat_and_capped() {
        let mut r = asked_for_catch_up();
        let kp = Keypair::from_secret_bytes(&[5; 32]);
        let mut forged = beat(&kp, cluster(1), 15 * MIN);
        forged.issued_at = UnixMillis(15 * MIN + 1);
        let mut heartbeats = vec![beat(&kp, cluster(2), 15 * MIN), beat(&kp, cluster(1), 2 * MIN), forged];
        heartbeats.extend((0..MAX_CATCH_UP as u32).map(|i| {
            let mut secret = [7u8; 32];
            secret[..4].copy_from_slice(&i.to_be_bytes());
            beat(&Keypair::from_secret_bytes(&secret), cluster(1), 15 * MIN)
        }));
        let answer = CatchUp { app: "app".into(), cluster_key: cluster(1), covers_from: UnixMillis(0), heartbeats };
        let got = r.on_catch_up(&answer, UnixMillis(20 * MIN));
        assert_eq!(got.new, MAX_CATCH_UP as u64 - 3);
        assert_eq!(got.dropped, 6);
        for why in [RosterDrop::OtherCluster, RosterDrop::OutsideCatchUp, RosterDrop::Invalid] {
            assert_eq!(r.drops()[&why], 1, "{why:?}");
        }
        assert_eq!(r.drops()[&RosterDrop::CatchUpTooLong], 3);
    }

    #[test]
    fn a_member_keeps_only_the_catch_up_window_of_its_topic() {
        let mut r = Roster::new("app", key(0), UnixMillis(0));
        r.set_cluster(cluster(1), UnixMillis(0));
        for i in 0..2_000u32 {
            let mut secret = [3u8; 32];
            secret[..4].copy_from_slice(&i.to_be_bytes());
            let at = u64::from(i) * 2_000;
            r.on_heartbeat(&beat(&Keypair::from_secret_bytes(&secret), cluster(1), at), UnixMillis(at)).unwrap();
        }
        let now = UnixMillis(2_000 * 2_000);
        let req = CatchUpRequest { app: "app".into(), cluster_key: cluster(1), since: UnixMillis(0) };
        let answer = r.serve_catch_up(&req, now).unwrap();
        assert_eq!(answer.heartbeats.len(), 900, "30 minutes at one per 2 s");
        assert_eq!(answer.covers_from, now.saturating_sub(CATCH_UP_WINDOW));
        let other = CatchUpRequest { cluster_key: cluster(2), ..req };
        assert!(r.serve_catch_up(&other, now).is_none());
    }
}
