//! Cluster membership: who shares this machine's environment, per application.
//!
//! A sans-IO state machine. The node feeds it announcements (raw bytes off gossip or a
//! request-response reply), DHT provider lists, publish outcomes and the current time;
//! it answers with verdicts and [`Action`]s (publish this signed fingerprint, provide
//! or look up this cluster key, fetch a fingerprint from this peer).
//!
//! A peer counts as a member of `(app, cluster_key)` only while we hold a signed
//! fingerprint from it that verifies, is fresh, and hashes to that cluster key. A DHT
//! provider record alone proves nothing: it only tells us whom to ask.

use crate::envelope::{Envelope, VerifyError};
use crate::fingerprint::{ClusterKey, Fingerprint};
use crate::identity::{Keypair, PublicKey};
use crate::presence::{Observed, Presence, PresenceBook, Sighting, PRESENCE_KEEP};
use crate::roster::{
    CatchUp, CatchUpRequest, CaughtUp, ClusterSummary, Roster, RosterAction, RosterDrop, RosterTiming,
};
use crate::time::UnixMillis;
use crate::wire::{WireError, MAX_MESSAGE_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// Connected peers on our cluster's topic a node looks for: gossipsub's mesh degree
/// (6) and two spares to graft from when mesh peers leave.
pub const WANTED_CLUSTER_PEERS: usize = 8;

/// Cluster-mates a node names, at most, to a cluster-mate that fetches its fingerprint
/// (and takes from one): enough to fill a mesh from one answer.
pub const MAX_INTRODUCTIONS: usize = 8;

/// Fetches from enough of `candidates` (not connected, not asked within `backoff`) to
/// bring the connected peers on our cluster's topic up to [`WANTED_CLUSTER_PEERS`].
fn fetch_some(
    last_fetch: &mut BTreeMap<(PublicKey, String), UnixMillis>,
    backoff: Duration,
    app: &str,
    candidates: impl IntoIterator<Item = PublicKey>,
    connected: usize,
    is_connected: impl Fn(&PublicKey) -> bool,
    now: UnixMillis,
) -> Vec<Action> {
    let wanted = WANTED_CLUSTER_PEERS.saturating_sub(connected);
    let mut actions = Vec::new();
    for peer in candidates {
        if actions.len() >= wanted {
            break;
        }
        let slot = (peer, app.to_string());
        if is_connected(&peer) || last_fetch.get(&slot).is_some_and(|t| now.since(*t) < backoff) {
            continue;
        }
        last_fetch.insert(slot, now);
        actions.push(Action::Fetch { peer, app: app.to_string() });
    }
    actions
}

/// Why an announcement was dropped. Counted per reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Over [`MAX_MESSAGE_BYTES`].
    TooLarge,
    /// Not a well-formed envelope or fingerprint (bad wire version, garbage, wrong kind).
    Decode,
    /// Missing or wrong signature.
    Signature,
    /// Decoded and signed, but the fingerprint breaks its own rules.
    Invalid,
    /// Issued too long ago, or too far in the future.
    Stale,
    /// A fingerprint for another application than the topic's or the request's.
    WrongApp,
    /// Signed by someone other than the peer it came from.
    WrongSender,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::TooLarge,
        DropReason::Decode,
        DropReason::Signature,
        DropReason::Invalid,
        DropReason::Stale,
        DropReason::WrongApp,
        DropReason::WrongSender,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::TooLarge => "too_large",
            DropReason::Decode => "decode",
            DropReason::Signature => "signature",
            DropReason::Invalid => "invalid",
            DropReason::Stale => "stale",
            DropReason::WrongApp => "wrong_app",
            DropReason::WrongSender => "wrong_sender",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Timing rules for announcements and membership.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// Announcements older than this are stale.
    pub max_age: Duration,
    /// Announcements this far ahead of our clock are rejected too.
    pub max_skew: Duration,
    /// How often a node re-signs and re-publishes its fingerprints.
    pub announce_interval: Duration,
    /// A member whose newest fingerprint is older than this is forgotten.
    pub member_ttl: Duration,
    /// First delay between DHT provider lookups; doubles up to `lookup_interval`.
    pub first_lookup_delay: Duration,
    /// Longest delay between lookups while no peer on our cluster's topic is
    /// connected: lookups back off only once a node has cluster-mates to hear from.
    pub alone_lookup_interval: Duration,
    /// Steady-state delay between provider lookups. Lookups start at once and back off
    /// (doubling) to this: a node finds most cluster-mates in its first lookups, and
    /// those who join later find it with theirs; with fingerprints no longer gossiped
    /// to the whole app, the DHT is how cluster-mates meet, so it stays short. Every
    /// 30 s cost each node about 100 KB/min in a fleet of 50 (`mirage bench
    /// overlay-cost`).
    pub lookup_interval: Duration,
    /// Steady-state delay between re-registrations as a provider. Re-registration
    /// starts fast (twice the first lookup delay, doubling) because while a fleet is
    /// young the peers closest to the cluster key keep changing, and a record stored
    /// with yesterday's closest peers is not found by today's lookups. It must stay well
    /// below the DHT's provider record lifetime.
    pub provide_interval: Duration,
    /// Delay before retrying a publish that found no peers.
    pub publish_retry: Duration,
    /// Do not ask the same peer for its fingerprint more often than this.
    pub fetch_backoff: Duration,
    /// The roster's time scale: the same on every node of a fleet.
    pub roster: RosterTiming,
    /// Publish our signed fingerprint on the app's topic every `announce_interval`:
    /// the all-to-all design, whose cost per node grows with the fleet (every node
    /// hears every node), kept to measure against. Off (the default), the fingerprint
    /// is only re-signed on that schedule, for the peers that fetch it (cluster-mates
    /// found through the DHT), and staging counts members by the roster.
    pub gossip_announcements: bool,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            max_age: Duration::from_secs(600),
            max_skew: Duration::from_secs(30),
            announce_interval: Duration::from_secs(60),
            member_ttl: Duration::from_secs(200),
            first_lookup_delay: Duration::from_secs(1),
            alone_lookup_interval: Duration::from_secs(20),
            lookup_interval: Duration::from_secs(120),
            provide_interval: Duration::from_secs(600),
            publish_retry: Duration::from_secs(1),
            fetch_backoff: Duration::from_secs(10),
            roster: RosterTiming::default(),
            gossip_announcements: false,
        }
    }
}

/// Checks an announcement as received: size, decoding, signature, payload rules,
/// freshness, application and (if known) sender, in that order.
/// Decodes a gossiped envelope, with the size limit checked first.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, DropReason> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DropReason::TooLarge);
    }
    Envelope::from_bytes(bytes).map_err(|e| match e {
        WireError::TooLarge { .. } => DropReason::TooLarge,
        _ => DropReason::Decode,
    })
}

/// Checks a message on an app's topic as a relay does: a fingerprint announcement
/// ([`check_announcement`]) or a cluster summary (signed by its author, for this app,
/// fresh). Nodes judge summaries further with their roster.
pub fn check_app_message(
    bytes: &[u8],
    app: &str,
    author: Option<&PublicKey>,
    now: UnixMillis,
    config: &MembershipConfig,
) -> Result<(), DropReason> {
    let env = decode_envelope(bytes)?;
    if env.kind == crate::envelope::MessageKind::ClusterSummary {
        check_signed::<ClusterSummary>(&env, |s| &s.app, app, author, now, config).map(|_| ())
    } else {
        check_signed::<Fingerprint>(&env, Fingerprint::app, app, author, now, config).map(|_| ())
    }
}

/// `payload` signed by `keypair` at `now`, encoded for the wire.
fn signed<T: crate::envelope::SignedPayload>(
    keypair: &Keypair,
    payload: &T,
    now: UnixMillis,
) -> Result<Vec<u8>, WireError> {
    Envelope::sign(keypair, payload, now)?.to_bytes()
}

/// What every message on an app's topic must pass: kind, signature, payload rules,
/// freshness, application and (if known) sender, in that order.
fn check_signed<T: crate::envelope::SignedPayload>(
    envelope: &Envelope,
    app_of: impl Fn(&T) -> &str,
    expected_app: &str,
    expected_signer: Option<&PublicKey>,
    now: UnixMillis,
    config: &MembershipConfig,
) -> Result<crate::Verified<T>, DropReason> {
    let verified = envelope.verify::<T>().map_err(|e| match e {
        VerifyError::KindMismatch { .. } | VerifyError::Payload(_) => DropReason::Decode,
        VerifyError::BadSignature(_) => DropReason::Signature,
        VerifyError::Invalid(_) => DropReason::Invalid,
        VerifyError::Stale { .. } | VerifyError::FromTheFuture { .. } => DropReason::Stale,
    })?;
    verified.check_freshness(now, config.max_age, config.max_skew).map_err(|_| DropReason::Stale)?;
    if app_of(verified.payload()) != expected_app {
        return Err(DropReason::WrongApp);
    }
    if expected_signer.is_some_and(|signer| verified.signer() != signer) {
        return Err(DropReason::WrongSender);
    }
    Ok(verified)
}

pub fn check_announcement(
    bytes: &[u8],
    expected_app: &str,
    expected_signer: Option<&PublicKey>,
    now: UnixMillis,
    config: &MembershipConfig,
) -> Result<(Envelope, crate::Verified<Fingerprint>), DropReason> {
    let envelope = decode_envelope(bytes)?;
    let verified =
        check_signed::<Fingerprint>(&envelope, Fingerprint::app, expected_app, expected_signer, now, config)?;
    Ok((envelope, verified))
}

/// Something the node must do on the membership's behalf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Publish these envelope bytes on the app's topic. Report the outcome with
    /// [`Membership::on_publish_result`].
    Publish {
        app: String,
        bytes: Vec<u8>,
    },
    /// Our fingerprint was signed afresh (what we answer fetches with); keep it, but
    /// publish nothing.
    Resigned {
        app: String,
        bytes: Vec<u8>,
    },
    /// Register as a DHT provider of the cluster key. Repeated on a schedule, so the
    /// record is refreshed well before it expires and moves to the currently closest peers.
    StartProviding {
        key: ClusterKey,
    },
    /// Withdraw a provider record (the environment changed).
    StopProviding {
        key: ClusterKey,
    },
    /// Look up the providers of the key and report them with [`Membership::on_providers`].
    FindProviders {
        app: String,
        key: ClusterKey,
    },
    /// Ask `peer` for its signed fingerprint for `app`; hand the reply to
    /// [`Membership::on_announcement`] with the peer as expected signer.
    Fetch {
        peer: PublicKey,
        app: String,
    },
    /// Join (or leave) our cluster's own topic, where its members' heartbeats go.
    JoinCluster {
        app: String,
        cluster: ClusterKey,
    },
    LeaveCluster {
        app: String,
        cluster: ClusterKey,
    },
    /// Publish a signed heartbeat on the cluster's topic.
    PublishHeartbeat {
        app: String,
        cluster: ClusterKey,
        bytes: Vec<u8>,
    },
    /// Publish a signed cluster summary on the app's topic.
    PublishSummary {
        app: String,
        bytes: Vec<u8>,
    },
    /// Ask a connected member of our cluster for the heartbeats it kept; hand the
    /// answer to [`Membership::on_catch_up`].
    CatchUp {
        app: String,
        request: CatchUpRequest,
    },
}

/// What became of an announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new: forward it. `member_changed` says whether our cluster changed.
    Accepted { member_changed: bool },
    /// Valid but nothing new (a duplicate or older than what we hold): do not forward,
    /// do not penalize.
    Ignored,
    /// Invalid: drop it, count it, penalize the sender.
    Rejected(DropReason),
}

/// The newest verified fingerprint we hold from one peer for one app.
#[derive(Clone, Debug)]
pub struct PeerRecord {
    pub cluster_key: ClusterKey,
    pub issued_at: UnixMillis,
    pub received_at: UnixMillis,
}

#[derive(Clone, Debug)]
struct LocalApp {
    fingerprint: Fingerprint,
    cluster_key: ClusterKey,
    /// The newest signed announcement of our fingerprint.
    envelope: Option<Vec<u8>>,
    next_announce: UnixMillis,
    next_lookup: UnixMillis,
    lookup_delay: Duration,
    next_provide: UnixMillis,
    provide_delay: Duration,
}

/// Membership state for one node across all its applications.
pub struct Membership {
    keypair: Keypair,
    config: MembershipConfig,
    local: BTreeMap<String, LocalApp>,
    peers: BTreeMap<String, BTreeMap<PublicKey, PeerRecord>>,
    /// The same peers by app and cluster, kept in step with `peers`, so that asking for
    /// one cluster's members or whether a peer is one costs no scan of every peer: each
    /// announcement asks, and a fleet's announcements arrive all the time.
    by_cluster: BTreeMap<String, BTreeMap<ClusterKey, BTreeSet<PublicKey>>>,
    last_fetch: BTreeMap<(PublicKey, String), UnixMillis>,
    drops: BTreeMap<DropReason, u64>,
    /// First sightings per app (ourselves included): who may represent a cluster.
    presence: BTreeMap<String, PresenceBook>,
    /// Sightings that changed since the node last took them, to persist.
    presence_changes: Vec<(String, PublicKey, Sighting)>,
    next_presence_expiry: UnixMillis,
    /// Per app: our cluster's heartbeats and the fleet's cluster sizes, at a cost that
    /// does not grow with the fleet (see [`crate::roster`]).
    rosters: BTreeMap<String, Roster>,
}

impl Membership {
    pub fn new(keypair: Keypair, config: MembershipConfig) -> Self {
        Membership {
            keypair,
            config,
            local: BTreeMap::new(),
            peers: BTreeMap::new(),
            by_cluster: BTreeMap::new(),
            last_fetch: BTreeMap::new(),
            drops: BTreeMap::new(),
            presence: BTreeMap::new(),
            presence_changes: Vec::new(),
            next_presence_expiry: UnixMillis(0),
            rosters: BTreeMap::new(),
        }
    }

    /// One cluster's members for `app` (ourselves included in ours) with their first
    /// sightings, without a pass over the other clusters. A member the presence book had
    /// no room for is as new as can be.
    pub fn cluster_members(&self, app: &str, cluster: &ClusterKey) -> Vec<Presence> {
        let mut keys: BTreeSet<PublicKey> = self.cluster_index(app, cluster).cloned().unwrap_or_default();
        if self.local.get(app).is_some_and(|l| &l.cluster_key == cluster) {
            keys.insert(self.keypair.public());
        }
        let book = self.presence.get(app);
        keys.into_iter()
            .map(|peer| Presence { peer, since: book.and_then(|b| b.since(&peer, cluster)).unwrap_or(UnixMillis::MAX) })
            .collect()
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    pub fn local_key(&self) -> PublicKey {
        self.keypair.public()
    }

    /// Sets (or replaces) our own fingerprint for its app. Announces and provides at
    /// once when the cluster is new or changed.
    pub fn set_local(&mut self, fingerprint: Fingerprint, now: UnixMillis) -> Vec<Action> {
        let app = fingerprint.app().to_string();
        let key = fingerprint.cluster_key();
        let mut actions = Vec::new();
        if let Some(old) = self.local.get(&app) {
            if old.cluster_key == key {
                return actions;
            }
            let old = old.cluster_key;
            actions.push(Action::StopProviding { key: old });
            actions.push(Action::LeaveCluster { app: app.clone(), cluster: old });
        }
        self.local.insert(
            app.clone(),
            LocalApp {
                fingerprint,
                cluster_key: key,
                envelope: None,
                next_announce: now,
                next_lookup: now,
                lookup_delay: self.config.first_lookup_delay,
                next_provide: now.saturating_add(self.config.first_lookup_delay * 2),
                provide_delay: self.config.first_lookup_delay * 4,
            },
        );
        actions.push(Action::StartProviding { key });
        actions.push(Action::JoinCluster { app: app.clone(), cluster: key });
        let me = self.keypair.public();
        let timing = self.config.roster;
        let presence = &self.presence;
        self.rosters
            .entry(app.clone())
            .or_insert_with(|| {
                // Standings survive a restart: the persisted first sightings go in first.
                let mut r = Roster::with_timing(&app, me, now, timing);
                for (peer, s) in presence.get(&app).into_iter().flat_map(PresenceBook::iter) {
                    r.book_mut().restore(*peer, *s);
                }
                r
            })
            .set_cluster(key, now);
        self.sight(&app, self.keypair.public(), key, now);
        actions.extend(self.tick(now));
        actions
    }

    /// Records a sighting, keeping the change for the node to persist.
    fn sight(&mut self, app: &str, peer: PublicKey, cluster: ClusterKey, now: UnixMillis) {
        let book = self.presence.entry(app.to_string()).or_default();
        match book.observe(peer, cluster, now) {
            Observed::New => {
                let s = *book.get(&peer).expect("just observed");
                self.presence_changes.push((app.to_string(), peer, s));
            }
            Observed::Known | Observed::Dropped => {}
        }
    }

    /// Puts back persisted sightings (before the first announcements arrive).
    pub fn restore_presence(&mut self, app: &str, sightings: impl IntoIterator<Item = (PublicKey, Sighting)>) {
        let book = self.presence.entry(app.to_string()).or_default();
        let mut roster = self.rosters.get_mut(app);
        for (peer, s) in sightings {
            book.restore(peer, s);
            if let Some(r) = roster.as_mut() {
                r.book_mut().restore(peer, s);
            }
        }
    }

    /// Sightings that are new since the last call: persist them, so a restart keeps
    /// every member's standing.
    pub fn take_presence_changes(&mut self) -> Vec<(String, PublicKey, Sighting)> {
        std::mem::take(&mut self.presence_changes)
    }

    /// Our own apps and cluster keys.
    pub fn local_apps(&self) -> impl Iterator<Item = (&str, ClusterKey)> {
        self.local.iter().map(|(a, l)| (a.as_str(), l.cluster_key))
    }

    pub fn local_fingerprint(&self, app: &str) -> Option<&Fingerprint> {
        self.local.get(app).map(|l| &l.fingerprint)
    }

    /// The newest signed announcement of our fingerprint for `app` (what we answer a
    /// fetch with).
    pub fn local_announcement(&self, app: &str) -> Option<&[u8]> {
        self.local.get(app).and_then(|l| l.envelope.as_deref())
    }

    /// Signs a fresh announcement for `app` now and returns the publish action, outside
    /// the regular schedule.
    pub fn announce_now(&mut self, app: &str, now: UnixMillis) -> Option<Action> {
        let interval = self.config.announce_interval;
        let local = self.local.get_mut(app)?;
        let bytes = signed(&self.keypair, &local.fingerprint, now).ok()?;
        local.envelope = Some(bytes.clone());
        local.next_announce = now.saturating_add(interval);
        Some(Action::Publish { app: app.to_string(), bytes })
    }

    /// Timers: re-announcements, provider lookups, expiry of silent members.
    pub fn tick(&mut self, now: UnixMillis) -> Vec<Action> {
        let mut actions = Vec::new();
        let apps: Vec<String> = self.local.keys().cloned().collect();
        for app in apps {
            if self.local[&app].next_announce <= now {
                let announced = self.announce_now(&app, now);
                if self.config.gossip_announcements {
                    actions.extend(announced);
                } else if let Some(Action::Publish { app, bytes }) = announced {
                    actions.push(Action::Resigned { app, bytes });
                }
            }
            let max = self.config.lookup_interval;
            let local = self.local.get_mut(&app).expect("listed above");
            if local.next_lookup <= now {
                actions.push(Action::FindProviders { app: app.clone(), key: local.cluster_key });
                local.next_lookup = now.saturating_add(local.lookup_delay);
                local.lookup_delay = (local.lookup_delay * 2).min(max);
            }
            if local.next_provide <= now {
                actions.push(Action::StartProviding { key: local.cluster_key });
                local.next_provide = now.saturating_add(local.provide_delay);
                local.provide_delay = (local.provide_delay * 2).min(self.config.provide_interval);
            }
        }
        let ttl = self.config.member_ttl;
        for (app, records) in self.peers.iter_mut() {
            let expired: Vec<(PublicKey, ClusterKey)> = records
                .iter()
                .filter(|(_, r)| now.since(r.issued_at) > ttl)
                .map(|(k, r)| (*k, r.cluster_key))
                .collect();
            if expired.is_empty() {
                continue;
            }
            let index = self.by_cluster.entry(app.clone()).or_default();
            for (peer, cluster) in &expired {
                records.remove(peer);
                unindex(index, peer, cluster);
            }
        }
        self.peers.retain(|_, r| !r.is_empty());
        self.by_cluster.retain(|_, c| !c.is_empty());
        let backoff = self.config.fetch_backoff;
        self.last_fetch.retain(|_, t| now.since(*t) <= backoff);
        for (app, roster) in self.rosters.iter_mut() {
            for action in roster.poll(now) {
                // Heartbeats and summaries are a few hundred bytes: they always encode.
                let action = match action {
                    RosterAction::Heartbeat(hb) => signed(&self.keypair, &hb, now)
                        .map(|bytes| Action::PublishHeartbeat { app: app.clone(), cluster: hb.cluster_key, bytes }),
                    RosterAction::Summary(s) => {
                        signed(&self.keypair, &s, now).map(|bytes| Action::PublishSummary { app: app.clone(), bytes })
                    }
                    RosterAction::CatchUp(request) => Ok(Action::CatchUp { app: app.clone(), request }),
                };
                actions.extend(action.ok());
            }
        }
        if self.next_presence_expiry <= now {
            self.next_presence_expiry = now.saturating_add(Duration::from_secs(3600));
            for book in self.presence.values_mut() {
                book.expire(now, PRESENCE_KEEP);
            }
        }
        actions
    }

    /// When [`Membership::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        let rosters = self.rosters.values().filter_map(Roster::next_deadline);
        self.local.values().flat_map(|l| [l.next_announce, l.next_lookup, l.next_provide]).chain(rosters).min()
    }

    /// A heartbeat of ours for `app` found no peer on the cluster's topic.
    pub fn on_heartbeat_unsent(&mut self, app: &str, now: UnixMillis) {
        if let Some(r) = self.rosters.get_mut(app) {
            r.heartbeat_not_sent(now);
        }
    }

    /// Our roster for `app`: our cluster's live members, sizes of the others.
    pub fn roster(&self, app: &str) -> Option<&Roster> {
        self.rosters.get(app)
    }

    /// A message off our cluster's topic for `app`. Dropped (and counted by the
    /// roster) unless it is a fresh heartbeat of a member of our cluster.
    pub fn on_heartbeat(&mut self, app: &str, bytes: &[u8], now: UnixMillis) -> Result<Observed, RosterDrop> {
        let roster = self.rosters.get_mut(app).ok_or(RosterDrop::OtherApp)?;
        let Ok(env) = decode_envelope(bytes) else { return roster.count(RosterDrop::Invalid) };
        let observed = roster.on_heartbeat(&env, now)?;
        if observed == Observed::New {
            self.persist_sighting(app, &env.signer);
        }
        Ok(observed)
    }

    /// Queues a member's first sighting by the roster for persisting: staging elects
    /// from the roster, so a restart must keep these standings.
    fn persist_sighting(&mut self, app: &str, peer: &PublicKey) {
        let Some(s) = self.rosters.get(app).and_then(|r| r.sighting(peer)) else { return };
        self.presence.entry(app.to_string()).or_default().restore(*peer, s);
        self.presence_changes.push((app.to_string(), *peer, s));
    }

    /// A cluster summary off the app's topic.
    pub fn on_summary(&mut self, app: &str, env: &Envelope, now: UnixMillis) -> Result<(), RosterDrop> {
        let roster = self.rosters.get_mut(app).ok_or(RosterDrop::OtherApp)?;
        match env.verify::<ClusterSummary>() {
            Ok(s) => roster.on_summary(&s, now),
            Err(_) => roster.count(RosterDrop::Invalid),
        }
    }

    /// What we answer a cluster-mate's catch-up request with.
    pub fn serve_catch_up(&self, request: &CatchUpRequest, now: UnixMillis) -> Option<CatchUp> {
        self.rosters.get(&request.app)?.serve_catch_up(request, now)
    }

    /// A cluster-mate's answer to our [`Action::CatchUp`].
    pub fn on_catch_up(&mut self, answer: &CatchUp, now: UnixMillis) -> Option<CaughtUp> {
        let got = self.rosters.get_mut(&answer.app)?.on_catch_up(answer, now);
        if got.new > 0 {
            // Members first seen in the answer count from now: persist those (a bounded
            // answer, so a bounded pass).
            let fresh: Vec<PublicKey> = answer
                .heartbeats
                .iter()
                .take(crate::roster::MAX_CATCH_UP)
                .map(|e| e.signer)
                .filter(|p| self.rosters[&answer.app].sighting(p).is_some_and(|s| s.since == now))
                .collect();
            for p in fresh {
                self.persist_sighting(&answer.app, &p);
            }
        }
        Some(got)
    }

    /// A publish of `app`'s announcement failed (typically: no peers yet). Retries soon.
    pub fn on_publish_result(&mut self, app: &str, ok: bool, now: UnixMillis) {
        if !ok {
            let retry = self.config.publish_retry;
            if let Some(l) = self.local.get_mut(app) {
                l.next_announce = l.next_announce.min(now.saturating_add(retry));
            }
        }
    }

    /// An announcement for `app` arrived, from gossip (`expected_signer` = the message's
    /// author, if known) or as a fetch reply (`expected_signer` = the peer asked).
    pub fn on_announcement(
        &mut self,
        bytes: &[u8],
        app: &str,
        expected_signer: Option<&PublicKey>,
        now: UnixMillis,
    ) -> Verdict {
        let (_, verified) = match check_announcement(bytes, app, expected_signer, now, &self.config) {
            Ok(v) => v,
            Err(reason) => {
                *self.drops.entry(reason).or_default() += 1;
                return Verdict::Rejected(reason);
            }
        };
        let signer = *verified.signer();
        if signer == self.keypair.public() {
            return Verdict::Ignored;
        }
        let key = verified.payload().cluster_key();
        let issued_at = verified.issued_at();
        let records = self.peers.entry(app.to_string()).or_default();
        let previous = records.get(&signer).cloned();
        if let Some(p) = &previous {
            if p.issued_at >= issued_at {
                return Verdict::Ignored;
            }
        }
        records.insert(signer, PeerRecord { cluster_key: key, issued_at, received_at: now });
        self.sight(app, signer, key, now);
        if previous.as_ref().is_none_or(|p| p.cluster_key != key) {
            let index = self.by_cluster.entry(app.to_string()).or_default();
            if let Some(p) = &previous {
                unindex(index, &signer, &p.cluster_key);
            }
            index.entry(key).or_default().insert(signer);
        }
        let ours = self.local.get(app).map(|l| l.cluster_key);
        let was_member = previous.is_some_and(|p| Some(p.cluster_key) == ours);
        let is_member = Some(key) == ours;
        Verdict::Accepted { member_changed: was_member != is_member }
    }

    /// A new member announced itself on gossip. It may not know us yet (our last
    /// announcement may predate its arrival, and provider records it finds may not list
    /// us), so swap fingerprints with it directly: a fetch that carries our own.
    /// Rate-limited per peer like other fetches; announcements that arrived by fetch do
    /// not trigger one, so exchanges never loop.
    pub fn exchange_with(&mut self, peer: &PublicKey, app: &str, now: UnixMillis) -> Option<Action> {
        let ours = self.local.get(app)?.cluster_key;
        if *peer == self.keypair.public() || self.peer_record(app, peer).is_none_or(|r| r.cluster_key != ours) {
            return None;
        }
        let slot = (*peer, app.to_string());
        if self.last_fetch.get(&slot).is_some_and(|t| now.since(*t) < self.config.fetch_backoff) {
            return None;
        }
        self.last_fetch.insert(slot, now);
        Some(Action::Fetch { peer: *peer, app: app.to_string() })
    }

    /// Cluster-mates to connect to, when `connected` (how many peers on our cluster's
    /// topic we hold connections to) is under [`WANTED_CLUSTER_PEERS`]. Gossipsub
    /// builds its mesh only among connected peers, and the DHT's provider records are
    /// few and slow to spread while a fleet is young: measured with `mirage bench
    /// overlay-cost`, nodes of a 500-node fleet heard 12 of their 20 cluster-mates'
    /// heartbeats through one or two connected ones, yet had a mesh of one peer. The
    /// roster names live members; fetching a fingerprint dials its signer, and the
    /// connection joins our mesh. Rate-limited per peer like every fetch. A node with
    /// no such peer at all (its roster hears nothing) looks the cluster up in the DHT
    /// again within [`MembershipConfig::alone_lookup_interval`], however far its
    /// lookups had backed off.
    pub fn meet_cluster_peers(
        &mut self,
        app: &str,
        connected: usize,
        is_connected: impl Fn(&PublicKey) -> bool,
        now: UnixMillis,
    ) -> Vec<Action> {
        if connected == 0 {
            if let Some(local) = self.local.get_mut(app) {
                local.next_lookup = local.next_lookup.min(now.saturating_add(self.config.alone_lookup_interval));
            }
        }
        let Some(roster) = self.rosters.get(app) else { return Vec::new() };
        let candidates = roster.live_peers(now);
        fetch_some(&mut self.last_fetch, self.config.fetch_backoff, app, candidates, connected, is_connected, now)
    }

    /// The cluster-mates to name to `requester`, which fetched our fingerprint: only
    /// to a member of our cluster, at most [`MAX_INTRODUCTIONS`] live members other
    /// than it, of those `reachable` says the shell can give addresses for.
    pub fn introductions(
        &self,
        app: &str,
        requester: &PublicKey,
        reachable: impl Fn(&PublicKey) -> bool,
        now: UnixMillis,
    ) -> Vec<PublicKey> {
        if !self.is_member(app, requester) || *requester == self.keypair.public() {
            return Vec::new();
        }
        let Some(roster) = self.rosters.get(app) else { return Vec::new() };
        roster.live_peers(now).filter(|p| p != requester && reachable(p)).take(MAX_INTRODUCTIONS).collect()
    }

    /// `from` named these cluster-mates in its answer to our fetch. Taken only from a
    /// member of our cluster (its fingerprint, just checked, says so), at most
    /// [`MAX_INTRODUCTIONS`] of them, and fetched from, as [`Membership::meet_cluster_peers`]
    /// does, while fewer than [`WANTED_CLUSTER_PEERS`] are connected. Whether a named
    /// peer really is a cluster-mate, its own signed fingerprint will tell.
    pub fn on_introductions(
        &mut self,
        app: &str,
        from: &PublicKey,
        named: &[PublicKey],
        connected: usize,
        is_connected: impl Fn(&PublicKey) -> bool,
        now: UnixMillis,
    ) -> Vec<Action> {
        if !self.is_member(app, from) || *from == self.keypair.public() {
            return Vec::new();
        }
        let me = self.keypair.public();
        let named = named.iter().take(MAX_INTRODUCTIONS).filter(|p| **p != me).copied();
        fetch_some(&mut self.last_fetch, self.config.fetch_backoff, app, named, connected, is_connected, now)
    }

    /// Providers of `key` found in the DHT. Returns fetches for those whose current
    /// fingerprint we lack (and have not asked recently).
    pub fn on_providers(
        &mut self,
        app: &str,
        key: ClusterKey,
        providers: &[PublicKey],
        now: UnixMillis,
    ) -> Vec<Action> {
        let me = self.keypair.public();
        let known = self.peers.get(app);
        let mut actions = Vec::new();
        for p in providers {
            if *p == me || known.and_then(|k| k.get(p)).is_some_and(|r| r.cluster_key == key) {
                continue;
            }
            let slot = (*p, app.to_string());
            if self.last_fetch.get(&slot).is_some_and(|t| now.since(*t) < self.config.fetch_backoff) {
                continue;
            }
            self.last_fetch.insert(slot, now);
            actions.push(Action::Fetch { peer: *p, app: app.to_string() });
        }
        actions
    }

    /// The members of our cluster for `app`, ourselves included, sorted.
    pub fn members(&self, app: &str) -> Vec<PublicKey> {
        let Some(local) = self.local.get(app) else {
            return Vec::new();
        };
        let mut out: BTreeSet<PublicKey> = self.cluster_index(app, &local.cluster_key).cloned().unwrap_or_default();
        out.insert(self.keypair.public());
        out.into_iter().collect()
    }

    /// Whether `peer` is in our cluster for `app` (we are): no scan of the membership.
    pub fn is_member(&self, app: &str, peer: &PublicKey) -> bool {
        let Some(local) = self.local.get(app) else { return false };
        *peer == self.keypair.public() || self.cluster_index(app, &local.cluster_key).is_some_and(|m| m.contains(peer))
    }

    /// How many members our cluster for `app` has, ourselves included.
    pub fn member_count(&self, app: &str) -> usize {
        let Some(local) = self.local.get(app) else { return 0 };
        let me = self.keypair.public();
        let others = self.cluster_index(app, &local.cluster_key).map_or(0, |m| m.len() - usize::from(m.contains(&me)));
        others + 1
    }

    fn cluster_index(&self, app: &str, cluster: &ClusterKey) -> Option<&BTreeSet<PublicKey>> {
        self.by_cluster.get(app)?.get(cluster)
    }

    /// Every cluster we know of for `app` with the peers in it (ourselves included in
    /// ours) and since when each has been there: what staging plans stages and elects
    /// representatives from.
    pub fn clusters(&self, app: &str) -> BTreeMap<ClusterKey, Vec<Presence>> {
        self.cluster_keys(app).into_iter().map(|k| (k, self.cluster_members(app, &k))).collect()
    }

    /// The clusters we know of for `app`, ours included.
    pub fn cluster_keys(&self, app: &str) -> BTreeSet<ClusterKey> {
        let mut keys: BTreeSet<ClusterKey> =
            self.by_cluster.get(app).map(|c| c.keys().copied().collect()).unwrap_or_default();
        keys.extend(self.local.get(app).map(|l| l.cluster_key));
        keys
    }

    /// Everything we hold about `signer` for `app`.
    pub fn peer_record(&self, app: &str, signer: &PublicKey) -> Option<&PeerRecord> {
        self.peers.get(app)?.get(signer)
    }

    /// How many peers (in any cluster) we hold a fingerprint from for `app`.
    pub fn known_peers(&self, app: &str) -> usize {
        self.peers.get(app).map_or(0, |r| r.len())
    }

    /// Dropped announcements by reason.
    pub fn drops(&self) -> &BTreeMap<DropReason, u64> {
        &self.drops
    }

    /// Counts a drop that was decided outside [`Membership::on_announcement`].
    pub fn count_drop(&mut self, reason: DropReason) {
        *self.drops.entry(reason).or_default() += 1;
    }
}

/// Takes `peer` out of `cluster` in an app's index, dropping the cluster once empty.
fn unindex(index: &mut BTreeMap<ClusterKey, BTreeSet<PublicKey>>, peer: &PublicKey, cluster: &ClusterKey) {
    if let Some(m) = index.get_mut(cluster) {
        m.remove(peer);
        if m.is_empty() {
            index.remove(cluster);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::{Item, ItemValue, ResourceClass};
    use crate::Digest;

    fn kp(seed: u8) -> Keypair {
        Keypair::from_secret_bytes(&[seed; 32])
    }

    fn fp(app: &str, env: u8) -> Fingerprint {
        let item = Item {
            class: ResourceClass::Executable,
            path: "/usr/bin/x".into(),
            key: String::new(),
            value: ItemValue::Digest(Digest([env; 32])),
        };
        Fingerprint::new(app.into(), Digest([7; 32]), vec![item])
    }

    fn announce(seed: u8, app: &str, env: u8, at: u64) -> Vec<u8> {
        Envelope::sign(&kp(seed), &fp(app, env), UnixMillis(at)).unwrap().to_bytes().unwrap()
    }

    const T0: u64 = 1_000_000_000;

    /// The all-to-all design these tests exercise: fingerprints gossiped to the app.
    fn gossiping() -> MembershipConfig {
        MembershipConfig { gossip_announcements: true, ..MembershipConfig::default() }
    }

    #[test]
    fn by_default_a_node_re_signs_its_fingerprint_for_fetches_and_never_gossips_it() {
        let mut m = Membership::new(kp(1), MembershipConfig::default());
        let mut actions = m.set_local(fp("web", 1), UnixMillis(T0));
        let interval = m.config().announce_interval.as_millis() as u64;
        actions.extend(m.tick(UnixMillis(T0 + interval)));
        assert!(!actions.iter().any(|a| matches!(a, Action::Publish { .. })), "{actions:?}");
        let resigned = actions.iter().filter(|a| matches!(a, Action::Resigned { app, .. } if app == "web")).count();
        assert_eq!(resigned, 2, "at once and after an interval");
        let served = m.local_announcement("web").unwrap();
        let (_, v) = check_announcement(served, "web", Some(&kp(1).public()), UnixMillis(T0 + interval), m.config())
            .expect("a fresh, valid announcement to answer fetches with");
        assert_eq!(v.issued_at(), UnixMillis(T0 + interval));
        // The operator may still announce by hand (`mirage announce`).
        assert!(matches!(m.announce_now("web", UnixMillis(T0 + interval + 1)), Some(Action::Publish { .. })));
    }

    fn node() -> Membership {
        let mut m = Membership::new(kp(1), gossiping());
        let actions = m.set_local(fp("web", 1), UnixMillis(T0));
        assert!(actions.iter().any(|a| matches!(a, Action::Publish { app, .. } if app == "web")));
        assert!(actions.contains(&Action::StartProviding { key: fp("web", 1).cluster_key() }));
        assert!(actions.iter().any(|a| matches!(a, Action::FindProviders { .. })));
        m
    }

    #[test]
    fn members_are_exactly_same_environment_peers() {
        let mut m = node();
        let now = UnixMillis(T0 + 10);
        assert_eq!(
            m.on_announcement(&announce(2, "web", 1, T0), "web", None, now),
            Verdict::Accepted { member_changed: true }
        );
        assert_eq!(
            m.on_announcement(&announce(3, "web", 2, T0), "web", None, now),
            Verdict::Accepted { member_changed: false }
        );
        let mut expected = vec![kp(1).public(), kp(2).public()];
        expected.sort();
        assert_eq!(m.members("web"), expected);
        assert_eq!(m.known_peers("web"), 2);
        assert!(m.members("db").is_empty());
        // A duplicate is ignored, an older one too.
        assert_eq!(m.on_announcement(&announce(2, "web", 1, T0), "web", None, now), Verdict::Ignored);
        assert_eq!(m.on_announcement(&announce(2, "web", 2, T0 - 5), "web", None, now), Verdict::Ignored);
        // A newer one moving the peer to another cluster removes it.
        assert_eq!(
            m.on_announcement(&announce(2, "web", 2, T0 + 5), "web", None, now),
            Verdict::Accepted { member_changed: true }
        );
        assert_eq!(m.members("web"), vec![kp(1).public()]);
        // Our own announcements echoing back change nothing.
        assert_eq!(m.on_announcement(&announce(1, "web", 1, T0 + 6), "web", None, now), Verdict::Ignored);
    }

    #[test]
    fn bad_announcements_are_rejected_and_counted() {
        let mut m = node();
        let now = UnixMillis(T0);
        let reject = |m: &mut Membership, bytes: &[u8], signer: Option<&PublicKey>| match m
            .on_announcement(bytes, "web", signer, now)
        {
            Verdict::Rejected(r) => r,
            v => panic!("accepted a bad announcement: {v:?}"),
        };
        assert_eq!(reject(&mut m, &vec![1u8; MAX_MESSAGE_BYTES + 1], None), DropReason::TooLarge);
        assert_eq!(reject(&mut m, b"garbage", None), DropReason::Decode);
        assert_eq!(reject(&mut m, &[], None), DropReason::Decode);
        let mut env = Envelope::sign(&kp(2), &fp("web", 1), now).unwrap();
        env.signature = crate::identity::Signature([0; 64]);
        assert_eq!(reject(&mut m, &env.to_bytes().unwrap(), None), DropReason::Signature);
        let mut env = Envelope::sign(&kp(2), &fp("web", 1), now).unwrap();
        env.signer = kp(3).public();
        assert_eq!(reject(&mut m, &env.to_bytes().unwrap(), None), DropReason::Signature);
        assert_eq!(reject(&mut m, &announce(2, "web", 1, T0 - 3_600_000), None), DropReason::Stale);
        assert_eq!(reject(&mut m, &announce(2, "web", 1, T0 + 3_600_000), None), DropReason::Stale);
        assert_eq!(reject(&mut m, &announce(2, "db", 1, T0), None), DropReason::WrongApp);
        assert_eq!(reject(&mut m, &announce(2, "web", 1, T0), Some(&kp(3).public())), DropReason::WrongSender);
        // A signed manifest-kind envelope is not a fingerprint.
        let report = crate::report::TestReport {
            manifest_id: Digest([1; 32]),
            app: "web".into(),
            version: "1.0.0".parse().unwrap(),
            cluster_key: ClusterKey(Digest([2; 32])),
            outcome: crate::report::Outcome::Pass,
            summary: String::new(),
            logs_digest: Digest([3; 32]),
            tests_run: 1,
            duration_ms: 1,
        };
        let env = Envelope::sign(&kp(2), &report, now).unwrap();
        assert_eq!(reject(&mut m, &env.to_bytes().unwrap(), None), DropReason::Decode);
        let drops = m.drops();
        assert_eq!(drops[&DropReason::TooLarge], 1);
        assert_eq!(drops[&DropReason::Decode], 3);
        assert_eq!(drops[&DropReason::Signature], 2);
        assert_eq!(drops[&DropReason::Stale], 2);
        assert_eq!(drops[&DropReason::WrongApp], 1);
        assert_eq!(drops[&DropReason::WrongSender], 1);
        assert_eq!(m.members("web"), vec![kp(1).public()]);
    }

    #[test]
    fn silent_members_expire() {
        let mut m = node();
        m.on_announcement(&announce(2, "web", 1, T0), "web", None, UnixMillis(T0));
        assert_eq!(m.members("web").len(), 2);
        let ttl = m.config().member_ttl;
        m.tick(UnixMillis(T0).saturating_add(ttl));
        assert_eq!(m.members("web").len(), 2);
        m.tick(UnixMillis(T0).saturating_add(ttl + Duration::from_millis(1)));
        assert_eq!(m.members("web"), vec![kp(1).public()]);
    }

    #[test]
    fn providers_without_fingerprints_are_fetched_once_per_backoff() {
        let mut m = node();
        let key = fp("web", 1).cluster_key();
        let now = UnixMillis(T0);
        m.on_announcement(&announce(2, "web", 1, T0), "web", None, now);
        let providers = [kp(1).public(), kp(2).public(), kp(3).public()];
        // We ourselves and peer 2 (known) are skipped; peer 3 is asked.
        assert_eq!(
            m.on_providers("web", key, &providers, now),
            vec![Action::Fetch { peer: kp(3).public(), app: "web".into() }]
        );
        assert!(m.on_providers("web", key, &providers, UnixMillis(T0 + 1)).is_empty());
        let later = now.saturating_add(m.config().fetch_backoff);
        assert_eq!(m.on_providers("web", key, &providers, later).len(), 1);
        // A provider claim is not membership: peer 3 is not a member until it answers.
        assert_eq!(m.members("web").len(), 2);
        let reply = announce(3, "web", 1, T0 + 2);
        assert_eq!(
            m.on_announcement(&reply, "web", Some(&kp(3).public()), later),
            Verdict::Accepted { member_changed: true }
        );
        assert_eq!(m.members("web").len(), 3);
    }

    #[test]
    fn new_members_get_an_exchange_once_per_backoff() {
        let mut m = node();
        let now = UnixMillis(T0);
        // Unknown peers and peers of other clusters get none.
        assert_eq!(m.exchange_with(&kp(2).public(), "web", now), None);
        m.on_announcement(&announce(3, "web", 2, T0), "web", None, now);
        assert_eq!(m.exchange_with(&kp(3).public(), "web", now), None);
        m.on_announcement(&announce(2, "web", 1, T0), "web", None, now);
        assert_eq!(
            m.exchange_with(&kp(2).public(), "web", now),
            Some(Action::Fetch { peer: kp(2).public(), app: "web".into() })
        );
        assert_eq!(m.exchange_with(&kp(2).public(), "web", UnixMillis(T0 + 1)), None);
        assert_eq!(m.exchange_with(&kp(1).public(), "web", now), None, "never with ourselves");
        assert_eq!(m.exchange_with(&kp(2).public(), "db", now), None, "not an app of ours");
    }

    #[test]
    fn reannounces_on_schedule_and_retries_failed_publishes() {
        let mut m = node();
        let cfg = m.config().clone();
        assert!(m.local_announcement("web").is_some());
        assert!(!m.tick(UnixMillis(T0 + 1)).iter().any(|a| matches!(a, Action::Publish { .. })));
        m.on_publish_result("web", false, UnixMillis(T0 + 1));
        let retry = UnixMillis(T0 + 1).saturating_add(cfg.publish_retry);
        assert!(m.next_deadline().unwrap() <= retry);
        assert!(m.tick(retry).iter().any(|a| matches!(a, Action::Publish { .. })));
        let later = retry.saturating_add(cfg.announce_interval);
        let actions = m.tick(later);
        let Some(Action::Publish { bytes, .. }) = actions.iter().find(|a| matches!(a, Action::Publish { .. })) else {
            panic!("no re-announcement in {actions:?}");
        };
        let (_, v) = check_announcement(bytes, "web", Some(&kp(1).public()), later, &cfg).unwrap();
        assert_eq!(v.issued_at(), later);
        assert_eq!(m.local_announcement("web"), Some(bytes.as_slice()));
    }

    #[test]
    fn lookups_back_off_to_the_steady_interval() {
        let mut m = node();
        let cfg = m.config().clone();
        let mut now = UnixMillis(T0);
        let mut gaps = Vec::new();
        let mut last = now;
        while now.since(UnixMillis(T0)) < cfg.lookup_interval * 4 {
            now = UnixMillis(now.0 + 100);
            if m.tick(now).iter().any(|a| matches!(a, Action::FindProviders { .. })) {
                gaps.push(now.since(last));
                last = now;
            }
        }
        assert_eq!(gaps[0], cfg.first_lookup_delay);
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*gaps.last().unwrap(), cfg.lookup_interval);
    }

    #[test]
    fn a_node_cut_off_from_its_cluster_looks_it_up_again_soon_however_far_lookups_backed_off() {
        let mut m = node();
        let cfg = m.config().clone();
        let mut now = UnixMillis(T0);
        while now.since(UnixMillis(T0)) < cfg.lookup_interval * 4 {
            now = UnixMillis(now.0 + 1000);
            m.tick(now);
        }
        let lookup_within = |m: &mut Membership, from: UnixMillis, limit: Duration| {
            let mut t = from;
            while t.since(from) <= limit {
                t = UnixMillis(t.0 + 1000);
                if m.tick(t).iter().any(|a| matches!(a, Action::FindProviders { .. })) {
                    return Some(t.since(from));
                }
            }
            None
        };
        // Lookups have backed off to minutes apart. Alone, the next comes within the
        // alone interval.
        m.meet_cluster_peers("web", 0, |_| false, now);
        let waited = lookup_within(&mut m, now, cfg.alone_lookup_interval).expect("a lookup soon");
        let looked = UnixMillis(now.0 + waited.as_millis() as u64);
        // With some cluster-mates connected, nothing is brought forward.
        m.meet_cluster_peers("web", 3, |_| true, looked);
        assert_eq!(lookup_within(&mut m, looked, cfg.alone_lookup_interval), None, "backed off as before");
    }

    #[test]
    fn provider_records_are_refreshed_fast_then_steadily() {
        let mut m = node();
        let cfg = m.config().clone();
        let mut now = UnixMillis(T0);
        let mut times = Vec::new();
        while now.since(UnixMillis(T0)) < cfg.provide_interval * 3 {
            now = UnixMillis(now.0 + 500);
            if m.tick(now).iter().any(|a| matches!(a, Action::StartProviding { .. })) {
                times.push(now.since(UnixMillis(T0)));
            }
        }
        assert_eq!(times[0], cfg.first_lookup_delay * 2);
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
        assert_eq!(*gaps.last().unwrap(), cfg.provide_interval);
        assert!(gaps.len() >= 6, "re-registers several times while the fleet is young: {gaps:?}");
    }

    #[test]
    fn environment_change_moves_provider_record() {
        let mut m = node();
        let actions = m.set_local(fp("web", 2), UnixMillis(T0 + 1));
        assert!(actions.contains(&Action::StopProviding { key: fp("web", 1).cluster_key() }));
        assert!(actions.contains(&Action::StartProviding { key: fp("web", 2).cluster_key() }));
        assert!(m.set_local(fp("web", 2), UnixMillis(T0 + 2)).is_empty());
    }

    /// What the cluster index must always equal: the clusters recomputed from every
    /// peer record, the way `clusters` used to, by scanning.
    fn scanned(m: &Membership, app: &str) -> BTreeMap<ClusterKey, Vec<PublicKey>> {
        let mut out: BTreeMap<ClusterKey, BTreeSet<PublicKey>> = BTreeMap::new();
        for (peer, r) in m.peers.get(app).into_iter().flatten() {
            out.entry(r.cluster_key).or_default().insert(*peer);
        }
        if let Some(l) = m.local.get(app) {
            out.entry(l.cluster_key).or_default().insert(m.keypair.public());
        }
        out.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever announcements arrive and expire, the cluster index agrees with a
        /// scan of every peer, and membership answers need no scan.
        #[test]
        fn the_cluster_index_stays_in_step_with_the_peers(
            steps in proptest::collection::vec((2u8..12, 0u8..3, 0u64..400, proptest::bool::ANY), 1..60),
        ) {
            let mut m = node();
            let mut now = T0;
            for (peer, env, dt, tick) in steps {
                now += dt * 1000;
                m.on_announcement(&announce(peer, "web", env, now), "web", None, UnixMillis(now));
                if tick {
                    m.tick(UnixMillis(now + 200_000));
                }
                let clusters: BTreeMap<ClusterKey, Vec<PublicKey>> = m
                    .clusters("web")
                    .into_iter()
                    .map(|(k, v)| (k, v.into_iter().map(|p| p.peer).collect()))
                    .collect();
                proptest::prop_assert_eq!(&clusters, &scanned(&m, "web"));
                let ours = fp("web", 1).cluster_key();
                let members = clusters.get(&ours).cloned().unwrap_or_default();
                proptest::prop_assert_eq!(&m.members("web"), &members);
                proptest::prop_assert_eq!(m.member_count("web"), members.len());
                for p in 1u8..12 {
                    let k = kp(p).public();
                    proptest::prop_assert_eq!(m.is_member("web", &k), members.contains(&k));
                }
            }
        }
    }

    #[test]
    fn members_heartbeat_on_their_clusters_topic_and_count_each_other() {
        let mut a = Membership::new(kp(1), gossiping());
        let mut b = Membership::new(kp(2), gossiping());
        let key = fp("web", 1).cluster_key();
        let now = UnixMillis(T0);
        let heartbeats = |actions: &[Action]| -> Vec<Vec<u8>> {
            actions
                .iter()
                .filter_map(|x| match x {
                    Action::PublishHeartbeat { cluster, bytes, .. } if *cluster == key => Some(bytes.clone()),
                    _ => None,
                })
                .collect()
        };
        let from_a = a.set_local(fp("web", 1), now);
        let from_b = b.set_local(fp("web", 1), now);
        assert!(from_a.contains(&Action::JoinCluster { app: "web".into(), cluster: key }));
        let (hb_a, hb_b) = (heartbeats(&from_a), heartbeats(&from_b));
        assert_eq!((hb_a.len(), hb_b.len()), (1, 1), "a member heartbeats as it joins");
        let later = UnixMillis(T0 + 500);
        assert_eq!(a.on_heartbeat("web", &hb_b[0], later), Ok(Observed::New));
        assert_eq!(b.on_heartbeat("web", &hb_a[0], later), Ok(Observed::New));
        assert_eq!(a.roster("web").unwrap().live_count(later), 2);
        // Garbage and another cluster's heartbeats are dropped and counted.
        assert_eq!(a.on_heartbeat("web", b"junk", later), Err(RosterDrop::Invalid));
        let mut other = Membership::new(kp(3), gossiping());
        let foreign: Vec<Vec<u8>> = other
            .set_local(fp("web", 2), now)
            .into_iter()
            .filter_map(|x| match x {
                Action::PublishHeartbeat { bytes, .. } => Some(bytes),
                _ => None,
            })
            .collect();
        assert_eq!(a.on_heartbeat("web", &foreign[0], later), Err(RosterDrop::OtherCluster));
        let drops = a.roster("web").unwrap().drops();
        assert_eq!((drops[&RosterDrop::Invalid], drops[&RosterDrop::OtherCluster]), (1, 1));
        // The next heartbeat comes a period later, not with every tick.
        assert!(heartbeats(&a.tick(UnixMillis(T0 + 30_000))).is_empty());
        assert_eq!(heartbeats(&a.tick(UnixMillis(T0 + 60_000))).len(), 1);
    }
    /// Node 1 of cluster "web"/1, which heard the joining heartbeats of nodes 2-13 at
    /// `at`; and those nodes' keys.
    fn hearing_twelve_cluster_mates(at: UnixMillis) -> (Membership, Vec<PublicKey>) {
        let key = fp("web", 1).cluster_key();
        let mut a = Membership::new(kp(1), MembershipConfig::default());
        a.set_local(fp("web", 1), UnixMillis(T0));
        let members = (2..14u8)
            .map(|seed| {
                let mut b = Membership::new(kp(seed), MembershipConfig::default());
                let hb = b
                    .set_local(fp("web", 1), UnixMillis(T0))
                    .into_iter()
                    .find_map(|x| match x {
                        Action::PublishHeartbeat { cluster, bytes, .. } if cluster == key => Some(bytes),
                        _ => None,
                    })
                    .expect("a member heartbeats as it joins");
                assert_eq!(a.on_heartbeat("web", &hb, at), Ok(Observed::New));
                kp(seed).public()
            })
            .collect();
        (a, members)
    }

    #[test]
    fn a_node_with_too_few_cluster_peers_connected_dials_live_members_its_roster_heard_of() {
        let later = UnixMillis(T0 + 500);
        let (mut a, members) = hearing_twelve_cluster_mates(later);
        let fetched = |actions: &[Action]| -> Vec<PublicKey> {
            actions
                .iter()
                .map(|x| match x {
                    Action::Fetch { peer, app } if app == "web" => *peer,
                    other => panic!("only fetches, got {other:?}"),
                })
                .collect()
        };
        // Two connected already (one of them a member): six more are asked for, none of
        // them the connected member.
        let connected = members[0];
        let first = fetched(&a.meet_cluster_peers("web", 2, |p| *p == connected, later));
        assert_eq!(first.len(), WANTED_CLUSTER_PEERS - 2);
        assert!(first.iter().all(|p| members.contains(p) && *p != connected));
        // At once again: those are still being fetched, so the rest are asked for.
        let second = fetched(&a.meet_cluster_peers("web", 2, |p| *p == connected, later));
        assert_eq!(second.len(), members.len() - 1 - first.len());
        assert!(second.iter().all(|p| !first.contains(p)));
        // Enough peers connected: nobody is dialed.
        assert!(a.meet_cluster_peers("web", WANTED_CLUSTER_PEERS, |_| false, UnixMillis(T0 + 60_000)).is_empty());
        // An app we are not in asks for nothing.
        assert!(a.meet_cluster_peers("db", 0, |_| false, later).is_empty());
    }
    #[test]
    fn cluster_mates_are_introduced_only_to_and_by_cluster_mates_and_at_most_eight() {
        let later = UnixMillis(T0 + 500);
        let (mut a, _) = hearing_twelve_cluster_mates(later);
        // Peer 2 is a cluster-mate (its fingerprint came with its fetch); 20 is not.
        a.on_announcement(&announce(2, "web", 1, T0), "web", None, later);
        a.on_announcement(&announce(20, "web", 9, T0), "web", None, later);
        let (mate, stranger) = (kp(2).public(), kp(20).public());
        let named = a.introductions("web", &mate, |p| *p != kp(3).public(), later);
        assert_eq!(named.len(), MAX_INTRODUCTIONS);
        assert!(!named.contains(&mate) && !named.contains(&kp(3).public()), "not itself, not an unreachable one");
        assert!(a.introductions("web", &stranger, |_| true, later).is_empty(), "nobody to another cluster's node");

        // Taking introductions: from a stranger, none; from a mate, up to the wanted.
        let names: Vec<PublicKey> = (30..50u8).map(|s| kp(s).public()).collect();
        assert!(a.on_introductions("web", &stranger, &names, 0, |_| false, later).is_empty());
        let fetches = a.on_introductions("web", &mate, &names, 3, |_| false, later);
        assert_eq!(fetches.len(), WANTED_CLUSTER_PEERS - 3);
        let asked: Vec<PublicKey> = fetches
            .iter()
            .map(|x| match x {
                Action::Fetch { peer, .. } => *peer,
                other => panic!("only fetches, got {other:?}"),
            })
            .collect();
        assert!(asked.iter().all(|p| names[..MAX_INTRODUCTIONS].contains(p)), "only the first eight named count");
        let me = [kp(1).public()];
        assert!(a.on_introductions("web", &mate, &me, 0, |_| false, later).is_empty(), "never ourselves");
    }
}
