//! The overlay seen by sampled observer nodes: what membership costs one node, and
//! whether nodes that each see only their own cluster and a summary of the rest agree.
//!
//! The fleet model stays whole (every machine, its cluster, its key); a few hundred
//! *observers*, drawn in proportion to cluster size, each run a real
//! [`Roster`](mirage_protocol::roster::Roster), fed what its cluster's topic and the
//! app's topic would deliver to it:
//!
//! - heartbeats of its cluster-mates, each at the slot [`heartbeat_offset`] gives its key
//!   within [`heartbeat_period`] of the cluster's size, while that member is up;
//! - size summaries of every cluster, signed by the members [`summary_duty`] puts on duty
//!   each epoch;
//!
//! each delivery with its own delay and loss. Machines churn: at `churn_per_min` a
//! machine restarts (down for an exponential time, its state kept: it keeps its
//! heartbeat phase) or, for `replace_share` of churn events, leaves for good and a new
//! identity joins its cluster (and heartbeats at once). Observers churn alike.
//!
//! At the release, every observer that is up and whose view has settled elects its
//! cluster's representatives with the real staging core (`ClusterGate`: eligible
//! members by first sighting, rendezvous ranking) and plans the stages from its size
//! table (`StagePlan`). Agreement is the share of observers that agree with their
//! cluster's majority (representatives) or with each cluster's majority stage (stages).
//!
//! Bytes are counted from real encoded envelopes plus gossipsub's framing, mesh
//! duplicates and IHAVE gossip at the overlay's constants ([`GossipModel`]); they are a
//! model until calibrated against real libp2p.

use super::scenario::World;
use mirage_protocol::fingerprint::ClusterKey;
use mirage_protocol::manifest::{PolicyKind, StagingPolicy, UpgradeManifest};
use mirage_protocol::presence::Presence;
use mirage_protocol::roster::{
    epoch_length, heartbeat_offset, heartbeat_period, heartbeat_slot, round_size, summary_duty, ClusterSummary,
    Heartbeat, Roster, RosterTiming, CATCH_UP_WINDOW, EXPIRY_PERIODS, HEARTBEAT_MAX_AGE,
};
use mirage_protocol::staging::{ClusterGate, StagePlan};
use mirage_protocol::{Envelope, Keypair, PublicKey, UnixMillis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The app name observers use (it only sizes topic names and payloads).
const APP: &str = "mysql";

/// What the overlay run adds to a scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct OverlayScenario {
    pub observers: u32,
    /// Share of machines that restart or leave per minute.
    pub churn_per_min: f64,
    /// Share of churn events that are a machine leaving for good (a new identity joins).
    pub replace_share: f64,
    pub downtime_mean_min: f64,
    /// Per-delivery loss after gossip's own repair.
    pub loss: f64,
    pub delay_base_ms: u64,
    pub delay_mean_ms: u64,
    /// Clusters whose stage every observer reports, besides its own.
    pub stage_sample: usize,
}

impl OverlayScenario {
    /// The share of the time a machine is down between restarts.
    fn down_share(&self) -> f64 {
        (self.churn_per_min * self.downtime_mean_min).clamp(0.0, 0.99)
    }
}

impl Default for OverlayScenario {
    fn default() -> Self {
        OverlayScenario {
            observers: 500,
            churn_per_min: 0.01,
            replace_share: 0.01,
            downtime_mean_min: 5.0,
            loss: 0.001,
            delay_base_ms: 50,
            delay_mean_ms: 300,
            stage_sample: 64,
        }
    }
}

/// Gossipsub's constants as the overlay sets them (`mirage_bootstrap::overlay`:
/// libp2p 0.57's defaults and a 700 ms heartbeat) and the wire framing around a
/// published message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GossipModel {
    /// Mesh degree: each message arrives from up to this many mesh peers.
    pub mesh_n: u32,
    /// Peers outside the mesh that get IHAVE gossip each heartbeat, at least.
    pub gossip_lazy: u32,
    /// Share of the topic's peers outside the mesh that get IHAVE gossip each
    /// heartbeat, when that is more than `gossip_lazy`.
    pub gossip_factor: f64,
    /// Heartbeats a message id stays in IHAVE gossip.
    pub history_gossip: u32,
    /// Peers a node is connected to per topic at most (mesh_n_high).
    pub topic_peers: u32,
    /// Bytes around a published message's data besides the topic string: protobuf
    /// fields (from, seqno, signature), RPC and stream framing, yamux and noise.
    pub message_overhead: u32,
    /// Bytes a message id adds to an IHAVE: the 20-byte id and its tag.
    pub ihave_id_bytes: u32,
    /// Bytes of one IHAVE besides its topic string and ids: the control message's
    /// framing, the RPC, yamux and noise. A node sends one per topic to each lazy peer
    /// at a heartbeat, naming every id of the last `history_gossip` heartbeats.
    pub ihave_framing: u32,
    /// Gossipsub's heartbeat (`GossipTuning`: 700 ms).
    pub heartbeat_ms: u32,
    /// Bytes of a request-response exchange besides its payload: the request (app,
    /// cluster key, time), a stream's multistream-select, yamux and noise framing.
    pub request_overhead: u32,
    /// Bytes per minute each way that keep one connection alive: ping every 15 s from
    /// both ends and identify every 2 minutes. Measured, not derived: 74 KB/min in
    /// over 50 connections with no app traffic (`mirage bench overlay-cost --idle`).
    pub keepalive_per_connection: u32,
    /// Connections a node of a big fleet holds: its two meshes and their spares, and
    /// the DHT queries of the last grace period, within the connection budget
    /// (`mirage_protocol::connections::Budget::NODE`: trimmed from 40 to 24).
    pub connections: u32,
    /// Bytes each way per DHT query a node makes (a provider lookup, a provider record,
    /// a routing-table refresh), with the connections it opens (noise, identify,
    /// gossipsub's hello) and the requests and answers; a node answers as many queries
    /// as it makes, on average. Fitted with `mirage bench overlay-cost`: the bytes a
    /// 200-node fleet's counted queries account for once every other term is taken
    /// out, 85-147 KB over four runs (the fit absorbs every other term's error too).
    pub dht_query_bytes: u32,
    /// Kademlia routing-table refreshes per hour (`KadTuning::bootstrap_interval`:
    /// every 30 minutes), besides the membership's own lookups and provider records.
    pub routing_refreshes_per_hour: u32,
}

impl Default for GossipModel {
    fn default() -> Self {
        GossipModel {
            mesh_n: 6,
            gossip_lazy: 6,
            gossip_factor: 0.25,
            history_gossip: 3,
            topic_peers: 12,
            // Anonymous messages (no author, sequence number or signature: the envelope
            // is signed): data/topic tags 4, RPC 3, length prefix 2, yamux 12, noise 18.
            message_overhead: 39,
            ihave_id_bytes: 22,
            ihave_framing: 8 + 35,
            heartbeat_ms: 700,
            // request 60, protocol negotiation 2 × 30, yamux 4 × 12, noise 2 × 18.
            request_overhead: 60 + 60 + 48 + 36,
            keepalive_per_connection: 1_480,
            connections: 24,
            dht_query_bytes: 110_000,
            routing_refreshes_per_hour: 2,
        }
    }
}

impl GossipModel {
    /// (bytes in, bytes out) at one subscriber of a topic with `subscribers` nodes, per
    /// message it did not publish, for a message of `wire` bytes on `topic`.
    pub fn per_message(&self, subscribers: u64, wire: u64, topic: u64) -> (f64, f64) {
        self.per_message_among(self.peers(subscribers), wire, topic)
    }

    /// As [`GossipModel::per_message`], for a node connected to `peers` of the topic's
    /// subscribers.
    pub fn per_message_among(&self, peers: f64, wire: u64, topic: u64) -> (f64, f64) {
        let mesh = peers.min(self.mesh_n as f64);
        // Every mesh peer sends it (the first copy and duplicates); it goes on to every
        // mesh peer but the first sender.
        let copies_in = mesh;
        let copies_out = (mesh - 1.0).max(0.0);
        let ihave = self.lazy(peers) * self.history_gossip as f64 * self.ihave_id_bytes as f64;
        let copy = self.copy_bytes(wire, topic);
        (copies_in * copy + ihave, copies_out * copy + ihave)
    }

    /// Bytes per minute each way of the IHAVEs themselves (framing and topic string,
    /// the ids being counted per message) on a topic carrying `messages_per_min`, for
    /// a node connected to `peers` of its subscribers: one IHAVE per lazy peer at each
    /// heartbeat that has ids from the last `history_gossip` heartbeats to name.
    pub fn ihave_framing_per_min(&self, peers: f64, messages_per_min: f64, topic: u64) -> f64 {
        let heartbeats = 60_000.0 / self.heartbeat_ms.max(1) as f64;
        let per_window = messages_per_min / heartbeats;
        let some = 1.0 - (-per_window * self.history_gossip as f64).exp();
        heartbeats * some * self.lazy(peers) * (self.ihave_framing as u64 + topic) as f64
    }

    /// Peers outside the mesh that get IHAVE gossip at a heartbeat.
    fn lazy(&self, peers: f64) -> f64 {
        let outside = (peers - peers.min(self.mesh_n as f64)).max(0.0);
        outside.min((self.gossip_lazy as f64).max(self.gossip_factor * outside))
    }

    /// Bytes out for a message a node publishes on a topic with `subscribers` nodes:
    /// gossipsub floods its own messages to every topic peer, not only to the mesh.
    pub fn per_publish(&self, subscribers: u64, wire: u64, topic: u64) -> f64 {
        self.per_publish_among(self.peers(subscribers), wire, topic)
    }

    /// As [`GossipModel::per_publish`], for a node connected to `peers` of the topic's
    /// subscribers.
    pub fn per_publish_among(&self, peers: f64, wire: u64, topic: u64) -> f64 {
        peers * self.copy_bytes(wire, topic)
    }

    /// Bytes each way per minute that `queries_per_min` DHT queries cost a node.
    pub fn dht_per_min(&self, queries_per_min: f64) -> f64 {
        queries_per_min * self.dht_query_bytes as f64
    }

    /// Peers a subscriber of a topic with `subscribers` nodes is connected to on it.
    fn peers(&self, subscribers: u64) -> f64 {
        subscribers.saturating_sub(1).min(self.topic_peers as u64) as f64
    }

    /// One copy of a message on the wire: the signed envelope, the topic string, and
    /// the framing around them.
    fn copy_bytes(&self, wire: u64, topic: u64) -> f64 {
        (wire + self.message_overhead as u64 + topic) as f64
    }
}

/// What the overlay run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct OverlayOutcome {
    pub observers: u32,
    /// Observers up and settled at the release (the others wait and are not judged).
    pub judged: u32,
    pub bytes_in_per_node_per_min: f64,
    pub bytes_out_per_node_per_min: f64,
    pub bytes_in_per_node_per_min_max: f64,
    pub messages_in_per_node_per_min: f64,
    pub state_bytes_per_node: f64,
    pub state_bytes_per_node_max: u64,
    pub representative_agreement: f64,
    pub stage_agreement: f64,
    /// Median and worst time, over observers that joined their cluster fresh, until
    /// their view settled and counted their cluster's size within 10%.
    pub settle_s_median: f64,
    pub settle_s_max: f64,
    /// What keeping [`GossipModel::connections`] libp2p connections alive costs each
    /// way (ping, identify), beside the membership traffic above.
    pub keepalive_bytes_per_node_per_min: f64,
    /// What the node's DHT queries cost each way (provider lookups and records,
    /// routing-table refreshes, and answering as many), beside the membership traffic.
    pub dht_bytes_per_node_per_min: f64,
    /// Today's design for the same fleet: every node hears every signed fingerprint.
    pub announce_bytes_in_per_node_per_min: f64,
    pub announce_state_bytes_per_node: f64,
    pub heartbeat_bytes: u64,
    pub summary_bytes: u64,
}

/// An observer's up/down timeline over the run: the (from, to) intervals when up.
#[derive(Clone, Debug)]
struct Life {
    up: Vec<(u64, u64)>,
}

impl Life {
    fn is_up(&self, t: u64) -> bool {
        let i = self.up.partition_point(|(_, to)| *to <= t);
        self.up.get(i).is_some_and(|(from, _)| *from <= t)
    }
}

fn exp_ms(rng: &mut ChaCha8Rng, mean_ms: f64) -> u64 {
    let u: f64 = rng.gen();
    (-mean_ms * (1.0 - u).ln()) as u64
}

fn life(rng: &mut ChaCha8Rng, o: &OverlayScenario, from: u64, to: u64) -> Life {
    let rate_per_ms = o.churn_per_min / 60_000.0;
    let mut up = Vec::new();
    let mut start = from;
    if rate_per_ms <= 0.0 {
        return Life { up: vec![(from, to)] };
    }
    loop {
        let event = start + exp_ms(rng, 1.0 / rate_per_ms);
        if event >= to {
            up.push((start, to));
            return Life { up };
        }
        up.push((start, event));
        // An observer that would leave for good is modelled as restarting: the run
        // follows observers that are there at the release.
        start = event + exp_ms(rng, o.downtime_mean_min * 60_000.0).max(1);
        if start >= to {
            return Life { up };
        }
    }
}

fn derived_key(seed: u64, what: &[u8], a: u64, b: u64) -> PublicKey {
    let mut h = blake3::Hasher::new();
    h.update(b"mirage/sim/overlay");
    h.update(&seed.to_be_bytes());
    h.update(what);
    h.update(&a.to_be_bytes());
    h.update(&b.to_be_bytes());
    PublicKey(*h.finalize().as_bytes())
}

/// One heartbeat on a cluster's topic.
#[derive(Clone, Copy)]
struct Beat {
    at: u64,
    /// Index into the cluster run's `keys`: a beat stays 16 bytes, and telling an
    /// observer's own beats apart costs no key comparison.
    from: u32,
}

/// The run's clock: the release comes at `RELEASE`, far enough from zero for the
/// longest warm-up.
const RELEASE: u64 = 400 * 24 * 3600 * 1000;
const MIN: u64 = 60_000;

/// Runs the overlay model over `world` for a release under `policy`.
pub fn simulate(world: &World, o: &OverlayScenario, gossip: &GossipModel, policy: &StagingPolicy) -> OverlayOutcome {
    let seed = world.scenario.seed;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x006f_7665_726c_6179);
    let epoch = epoch_length(world.members.len() as u64).as_millis() as u64;
    let machines = world.cluster_of.len() as u64;
    let clusters = world.members.len() as u64;

    // Observers: machines drawn uniformly, so clusters are observed in proportion to size.
    let mut observers: Vec<u32> = (0..o.observers).map(|_| rng.gen_range(0..machines as u32)).collect();
    observers.sort_unstable();
    observers.dedup();
    let mut by_cluster: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for m in &observers {
        by_cluster.entry(world.cluster_of[*m as usize]).or_default().push(*m);
    }

    let wires = Wires::new(world);
    let sizes_of = |c: u32| round_size(world.members[c as usize].len() as u64);
    let manifest = release_manifest(policy);

    // Each observed cluster on its own: its members' lives, heartbeats, and observers.
    let seeds: Vec<(u32, Vec<u32>, u64)> = by_cluster.into_iter().map(|(c, obs)| (c, obs, rng.gen())).collect();
    let per_cluster: Vec<ClusterRun> =
        seeds.into_par_iter().map(|(c, obs, s)| run_cluster(epoch, world, o, c, &obs, s, &manifest)).collect();

    // Summaries: who is on duty in the last three epochs, once for all observers.
    let first_epoch = (RELEASE / epoch).saturating_sub(3);
    let last_epoch = RELEASE / epoch;
    let duty = RosterTiming::default().duty(clusters);
    let summaries: Vec<Vec<(u64, u64)>> = (0..clusters as u32)
        .into_par_iter()
        .map(|c| {
            let key = world.cluster_keys[c as usize];
            let size = sizes_of(c);
            let mut out = Vec::new();
            for e in first_epoch..=last_epoch {
                for m in &world.members[c as usize] {
                    let peer = world.public_keys[*m as usize];
                    if summary_duty(e, &key, &peer, size, duty) {
                        let at = e * epoch + heartbeat_offset(&peer, Duration::from_millis(epoch)).as_millis() as u64;
                        if at < RELEASE {
                            out.push((e, at));
                        }
                    }
                }
            }
            out.sort_unstable_by(|a, b| b.cmp(a));
            out
        })
        .collect();
    let summaries_last_hour: u64 =
        summaries.iter().map(|s| s.iter().filter(|(_, at)| *at + 60 * MIN >= RELEASE).count() as u64).sum();

    // Each observer's size table: the newest summary of each cluster it received.
    let mut per_cluster = per_cluster;
    let observer_count = per_cluster.iter().map(|r| r.observers.len()).sum::<usize>() as u32;
    let mut judged = Vec::new();
    for run in &mut per_cluster {
        for ob in run.observers.iter_mut().filter(|o| o.judged) {
            judged.push((run.cluster, ob));
        }
    }
    let judged_count = judged.len() as u32;
    let down_share = o.down_share();
    let sample: Vec<u32> = {
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5354_4147);
        (0..o.stage_sample).map(|_| r.gen_range(0..clusters as u32)).collect()
    };
    let plans: Vec<Vec<(u32, usize)>> = judged
        .into_par_iter()
        .enumerate()
        .map(|(i, (c, ob))| {
            // The observer's own roster takes the summaries: the size table is what a
            // node plans from, and cloning a big cluster's book per observer cost more
            // than the planning.
            // The observer's size table: its own cluster's count, and the summaries that
            // reach it. (Its book was dropped after the election: the books of a few
            // hundred observers of the biggest clusters would take gigabytes here.)
            let key = world.cluster_keys[c as usize];
            let mut roster = Roster::new(APP, PublicKey([0; 32]), UnixMillis(RELEASE));
            roster.set_cluster(key, UnixMillis(RELEASE));
            let mut r = ChaCha8Rng::seed_from_u64(seed ^ (i as u64) << 20 ^ 0x5355_4d4d);
            for (k, list) in summaries.iter().enumerate() {
                if k as u32 == c {
                    continue;
                }
                // The newest summary that reached this observer (up, not lost).
                for (e, at) in list {
                    if r.gen_bool(o.loss.clamp(0.0, 1.0)) || r.gen_bool(down_share) {
                        continue;
                    }
                    let _ = roster.summary_heard(world.cluster_keys[k], sizes_of(k as u32), *e, UnixMillis(*at));
                    break;
                }
            }
            let policy = StagingPolicy { kind: PolicyKind::Balanced, ..policy.clone() };
            let mut sizes = roster.sizes();
            sizes.insert(key, ob.own_size);
            let plan = StagePlan::new(&policy, &sizes);
            sample
                .iter()
                .chain(std::iter::once(&c))
                .map(|k| (*k, plan.stage_of(&world.cluster_keys[*k as usize])))
                .collect()
        })
        .collect();
    // The sizes tables, for state: observers' state was taken before the summaries.
    let summary_state: u64 =
        (clusters.min(mirage_protocol::roster::MAX_CLUSTERS as u64)) * mirage_protocol::roster::SIZE_RECORD_BYTES;

    // Agreement on representatives: per cluster, the share agreeing with the majority.
    let mut agree = 0u64;
    let mut total = 0u64;
    for run in &per_cluster {
        let mut votes: HashMap<&Vec<PublicKey>, u64> = HashMap::new();
        for ob in run.observers.iter().filter(|o| o.judged) {
            *votes.entry(&ob.seats).or_default() += 1;
        }
        let n: u64 = votes.values().sum();
        agree += votes.values().max().copied().unwrap_or(0);
        total += n;
    }
    let representative_agreement = if total == 0 { 1.0 } else { agree as f64 / total as f64 };

    // Agreement on stages: per sampled cluster, the share agreeing with the majority.
    let mut stage_votes: HashMap<u32, HashMap<usize, u64>> = HashMap::new();
    for plan in &plans {
        for (c, s) in plan {
            *stage_votes.entry(*c).or_default().entry(*s).or_default() += 1;
        }
    }
    let (sa, st) = stage_votes
        .values()
        .fold((0u64, 0u64), |(a, t), v| (a + v.values().max().copied().unwrap_or(0), t + v.values().sum::<u64>()));
    let stage_agreement = if st == 0 { 1.0 } else { sa as f64 / st as f64 };

    // Costs over the last hour before the release.
    let app_topic = topic_len(None);
    // Every node is on the app's topic: all of a node's connections are its peers there.
    let app_peers = (machines.saturating_sub(1) as f64).min(gossip.connections as f64);
    let (sum_in, sum_out) = gossip.per_message_among(app_peers, wires.summary, app_topic);
    let summaries_per_min = summaries_last_hour as f64 / 60.0;
    // A node's own share of the summaries, which it floods to its app-topic peers.
    let own_summaries = 1.0 / machines.max(1) as f64;
    let sum_publish = gossip.per_publish_among(app_peers, wires.summary, app_topic);
    let sum_ihaves = gossip.ihave_framing_per_min(app_peers, summaries_per_min, app_topic);
    let mut ins = Vec::new();
    let mut outs = Vec::new();
    let mut msgs = Vec::new();
    let mut states = Vec::new();
    for run in &per_cluster {
        let topic = topic_len(Some(&world.cluster_keys[run.cluster as usize]));
        let (hb_in, hb_out) = gossip.per_message(run.size, wires.heartbeat, topic);
        let publish = gossip.per_publish(run.size, wires.heartbeat, topic);
        let cluster_peers = (run.size.saturating_sub(1) as f64).min(gossip.topic_peers as f64);
        for ob in &run.observers {
            let received = ob.heard_last_hour as f64 / 60.0;
            let own = ob.sent_last_hour as f64 / 60.0;
            // A catch-up: the request, and the answer's heartbeats as kept. A node
            // serves as many as it asks for, on average, so the same goes out.
            let catch_up = (ob.catch_up_asks_last_hour * gossip.request_overhead as u64
                + ob.catch_up_last_hour * wires.heartbeat) as f64
                / 60.0;
            let ihaves = gossip.ihave_framing_per_min(cluster_peers, received + own, topic) + sum_ihaves;
            ins.push(received * hb_in + summaries_per_min * sum_in + ihaves + catch_up);
            outs.push(
                received * hb_out
                    + own * publish
                    + summaries_per_min * (sum_out + own_summaries * sum_publish)
                    + ihaves
                    + catch_up,
            );
            msgs.push(received + summaries_per_min);
            states.push(ob.state_bytes + summary_state);
        }
    }
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    let mut settle: Vec<f64> =
        per_cluster.iter().flat_map(|r| r.settle_ms.iter().map(|t| *t as f64 / 1000.0)).collect();
    settle.sort_by(f64::total_cmp);

    // Today's design: every node hears every node's signed fingerprint once a minute.
    let (old_in, _) = gossip.per_message(machines, wires.announcement, app_topic);
    OverlayOutcome {
        observers: observer_count,
        judged: judged_count,
        bytes_in_per_node_per_min: mean(&ins),
        bytes_out_per_node_per_min: mean(&outs),
        bytes_in_per_node_per_min_max: ins.iter().copied().fold(0.0, f64::max),
        messages_in_per_node_per_min: mean(&msgs),
        state_bytes_per_node: mean(&states.iter().map(|s| *s as f64).collect::<Vec<_>>()),
        state_bytes_per_node_max: states.iter().copied().max().unwrap_or(0),
        representative_agreement,
        stage_agreement,
        settle_s_median: settle.get(settle.len() / 2).copied().unwrap_or(0.0),
        settle_s_max: settle.last().copied().unwrap_or(0.0),
        keepalive_bytes_per_node_per_min: gossip.connections as f64 * gossip.keepalive_per_connection as f64,
        dht_bytes_per_node_per_min: gossip.dht_per_min(dht_queries_per_min(gossip)),
        announce_bytes_in_per_node_per_min: machines as f64 * old_in,
        // Per peer: its record (cluster key, two times), the index entry, the stored
        // envelope for cluster-mates; the scan-free index doubles the keys.
        announce_state_bytes_per_node: machines as f64 * (32 + 32 + 24 + 32 + 16) as f64,
        heartbeat_bytes: wires.heartbeat,
        summary_bytes: wires.summary,
    }
}

/// Topic string lengths as the overlay names them (`mirage/v1/app/<app>` and a cluster
/// topic under it).
fn topic_len(cluster: Option<&ClusterKey>) -> u64 {
    let app = format!("mirage/v1/app/{APP}");
    match cluster {
        None => app.len() as u64,
        // The first 128 bits of the key, in hex (`overlay::CLUSTER_TOPIC_KEY_HEX`).
        Some(c) => (app.len() + "/cluster/".len() + c.to_hex().len() / 2) as u64,
    }
}

/// Encoded sizes of real signed messages.
struct Wires {
    heartbeat: u64,
    summary: u64,
    announcement: u64,
}

impl Wires {
    fn new(world: &World) -> Self {
        let kp = Keypair::from_secret_bytes(&[7; 32]);
        let at = UnixMillis(RELEASE);
        let len = |bytes: Result<Vec<u8>, _>| bytes.map(|b: Vec<u8>| b.len() as u64).unwrap_or(0);
        let key = world.cluster_keys[0];
        let hb = Heartbeat { app: APP.into(), cluster_key: key };
        let sum = ClusterSummary { app: APP.into(), cluster_key: key, size: 12_345, epoch: 1 << 20 };
        Wires {
            heartbeat: len(Envelope::sign(&kp, &hb, at).and_then(|e| e.to_bytes())),
            summary: len(Envelope::sign(&kp, &sum, at).and_then(|e| e.to_bytes())),
            announcement: len(Envelope::sign(&kp, &world.fingerprint(0), at).and_then(|e| e.to_bytes())),
        }
    }
}

/// DHT queries a node of one app makes per minute in steady state: provider lookups
/// at the membership's longest interval, provider records at theirs, and Kademlia's
/// routing-table refreshes.
pub fn dht_queries_per_min(gossip: &GossipModel) -> f64 {
    let config = mirage_protocol::membership::MembershipConfig::default();
    let per_min = |d: std::time::Duration| 60.0 / d.as_secs_f64().max(1.0);
    per_min(config.lookup_interval) + per_min(config.provide_interval) + gossip.routing_refreshes_per_hour as f64 / 60.0
}

/// Encoded sizes of a signed heartbeat and a signed cluster summary, as the node sends
/// them (for cost models outside a simulated world, e.g. `mirage bench overlay-cost`).
pub fn wire_sizes() -> (u64, u64) {
    let kp = Keypair::from_secret_bytes(&[7; 32]);
    let at = UnixMillis(RELEASE);
    let key = ClusterKey(mirage_protocol::Digest([9; 32]));
    let len = |bytes: Result<Vec<u8>, _>| bytes.map(|b: Vec<u8>| b.len() as u64).unwrap_or(0);
    let hb = Heartbeat { app: APP.into(), cluster_key: key };
    let sum = ClusterSummary { app: APP.into(), cluster_key: key, size: 12_345, epoch: 1 << 20 };
    (
        len(Envelope::sign(&kp, &hb, at).and_then(|e| e.to_bytes())),
        len(Envelope::sign(&kp, &sum, at).and_then(|e| e.to_bytes())),
    )
}

fn release_manifest(policy: &StagingPolicy) -> UpgradeManifest {
    UpgradeManifest {
        app: APP.into(),
        version: semver::Version::new(2, 0, 0),
        artifact: mirage_protocol::manifest::ArtifactInfo::describe(
            b"overlay",
            mirage_protocol::manifest::MIN_CHUNK_SIZE,
        ),
        test_bundle: None,
        tests: Vec::new(),
        health_check: None,
        policy: StagingPolicy { kind: PolicyKind::FrontLoading, ..policy.clone() },
        expires_at: UnixMillis(u64::MAX),
        notes: String::new(),
    }
}

struct ObserverRun {
    /// Its count of its own cluster, rounded.
    own_size: u64,
    judged: bool,
    seats: Vec<PublicKey>,
    heard_last_hour: u64,
    sent_last_hour: u64,
    /// Heartbeats received in catch-ups after restarts, and catch-ups asked.
    catch_up_last_hour: u64,
    catch_up_asks_last_hour: u64,
    state_bytes: u64,
}

struct ClusterRun {
    cluster: u32,
    size: u64,
    observers: Vec<ObserverRun>,
    /// For observers that joined fresh: how long until settled with a size within 10%.
    settle_ms: Vec<u64>,
}

fn run_cluster(
    epoch_ms: u64,
    world: &World,
    o: &OverlayScenario,
    c: u32,
    observers: &[u32],
    seed: u64,
    manifest: &UpgradeManifest,
) -> ClusterRun {
    let manifest_id = manifest.id();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let members = &world.members[c as usize];
    let n = members.len() as u64;
    let key = world.cluster_keys[c as usize];
    let period = heartbeat_period(round_size(n));
    let p = period.as_millis() as u64;
    // As far back as a member stays live: every member an observer counts at the
    // release was heard in this run or, for the members the run starts with, just
    // before it (the observer's persisted book). Newcomers in the run's first periods
    // become eligible before the release, so whether observers that were down missed
    // them is part of what is measured.
    let start = RELEASE - (p * EXPIRY_PERIODS as u64).max(30 * MIN);
    let end = RELEASE + 10 * MIN;

    // Every member's heartbeats, and successors of those that leave. Between restarts a
    // member is down a stationary share of the time; whether it is up at each of its
    // heartbeat slots is drawn on its own, which costs a draw per slot rather than per
    // churn event. (Observers get exact up/down timelines below.)
    let down_share = o.down_share();
    let replace_per_ms = o.churn_per_min * o.replace_share / 60_000.0;
    let mut beats: Vec<Beat> = Vec::new();
    let mut keys: Vec<PublicKey> = members.iter().map(|m| world.public_keys[*m as usize]).collect();
    let mut gen = 0u64;
    for i in 0..members.len() {
        let mut idx = i as u32;
        let mut from = start;
        let mut fresh = false;
        loop {
            let leave = if replace_per_ms > 0.0 { from + exp_ms(&mut rng, 1.0 / replace_per_ms) } else { u64::MAX };
            let until = leave.min(end);
            if fresh {
                beats.push(Beat { at: from, from: idx });
            }
            let mut slot = heartbeat_slot(&keys[idx as usize], period, UnixMillis(from + 1)).0;
            while slot < until {
                if !rng.gen_bool(down_share) {
                    beats.push(Beat { at: slot, from: idx });
                }
                slot += p;
            }
            if leave >= end {
                break;
            }
            gen += 1;
            idx = keys.len() as u32;
            keys.push(derived_key(world.scenario.seed, b"successor", c as u64, gen));
            from = leave;
            fresh = true;
        }
    }
    let lives: HashMap<u32, Life> = observers.iter().map(|m| (*m, life(&mut rng, o, start, end))).collect();
    beats.sort_unstable_by_key(|b| b.at);

    let mut settle_ms = Vec::new();
    // Observers are independent given the cluster's heartbeats: one task each.
    let runs: Vec<ObserverRun> = observers
        .par_iter()
        .enumerate()
        .map(|(k, m)| {
            let me = world.public_keys[*m as usize];
            let my_idx = members.iter().position(|x| x == m).expect("an observer is a member") as u32;
            let mine = lives.get(m).cloned().unwrap_or(Life { up: vec![(start, end)] });
            let mut r = ChaCha8Rng::seed_from_u64(seed ^ ((k as u64 + 1) << 32));
            // The observer had been a member long before the run: its book holds everyone
            // then up, as its persisted state would.
            let mut roster = Roster::new(APP, me, UnixMillis(start - p));
            roster.set_cluster(key, UnixMillis(start - p));
            // Members hear their own cluster's summaries on the app topic like any other.
            let _ = roster.summary_heard(key, round_size(n), RELEASE / epoch_ms, UnixMillis(start - p));
            for other in members {
                if other != m {
                    let _ = roster.heard(world.public_keys[*other as usize], UnixMillis(start - p));
                }
            }
            let mut heard_last_hour = 0u64;
            // One draw per delivery: a uniform delay of the given mean, and loss. Delays
            // (under a second) are far below the spacing of one member's heartbeats, so
            // deliveries stay in the heartbeats' order.
            let lost_below = (o.loss.clamp(0.0, 1.0) * (1u64 << 24) as f64) as u64;
            let spread = (2 * o.delay_mean_ms).max(1);
            // Drawn as the loop goes: a vector of them per observer of a big cluster
            // cost more in page faults than the roster's work.
            let deliveries = beats.iter().filter(|b| b.from != my_idx).filter_map(|b| {
                let x: u64 = r.gen();
                let at = b.at + o.delay_base_ms + (x & 0xff_ffff) % spread;
                ((x >> 40) >= lost_below && mine.is_up(at)).then_some((at, keys[b.from as usize]))
            });
            let mut up_idx = 0usize;
            let mut was_down_since: Option<u64> = None;
            let mut catch_up_last_hour = 0u64;
            let mut catch_up_asks_last_hour = 0u64;
            let mut sent_last_hour = 0u64;
            let poll = |roster: &mut Roster, t: u64, sent: &mut u64| {
                while roster.next_deadline().is_some_and(|d| d.0 <= t) {
                    let d = roster.next_deadline().expect("checked").0;
                    let acts = roster.poll(UnixMillis(d));
                    if d + 60 * MIN >= RELEASE && d < RELEASE {
                        *sent += acts
                            .iter()
                            .filter(|a| matches!(a, mirage_protocol::roster::RosterAction::Heartbeat(_)))
                            .count() as u64;
                    }
                    if acts.is_empty() && roster.next_deadline().is_some_and(|n| n.0 <= d) {
                        break;
                    }
                }
            };
            for (at, from) in deliveries.filter(|d| d.0 < RELEASE) {
                // Restarts between deliveries: resume with the state kept.
                while up_idx < mine.up.len() && mine.up[up_idx].1 <= at {
                    was_down_since = Some(mine.up[up_idx].1);
                    up_idx += 1;
                }
                if let Some(down) = was_down_since.take() {
                    let back = mine.up[up_idx.min(mine.up.len() - 1)].0;
                    roster.resume(UnixMillis(down), UnixMillis(back));
                    // A cluster-mate that was up answers with the heartbeats it kept.
                    let window = CATCH_UP_WINDOW.as_millis() as u64;
                    let from =
                        down.saturating_sub(HEARTBEAT_MAX_AGE.as_millis() as u64).max(back.saturating_sub(window));
                    let lo = beats.partition_point(|b| b.at < from);
                    let hi = beats.partition_point(|b| b.at < back);
                    let kept = beats[lo..hi].iter().filter(|b| b.from != my_idx);
                    let _ = roster.caught_up(
                        kept.clone().map(|b| (keys[b.from as usize], UnixMillis(b.at))),
                        UnixMillis(back.saturating_sub(window)),
                        UnixMillis(back),
                    );
                    if back + 60 * MIN >= RELEASE && back < RELEASE {
                        catch_up_last_hour += kept.count() as u64;
                        catch_up_asks_last_hour += 1;
                    }
                }
                poll(&mut roster, at, &mut sent_last_hour);
                if roster.heard(from, UnixMillis(at)).is_ok() && at + 60 * MIN >= RELEASE {
                    heard_last_hour += 1;
                }
            }
            poll(&mut roster, RELEASE, &mut sent_last_hour);
            let up_now = mine.is_up(RELEASE);
            let judged = up_now && roster.is_settled(UnixMillis(RELEASE));
            let seats = if judged {
                let members: Vec<Presence> = roster.members(UnixMillis(RELEASE));
                let gate = ClusterGate::new(manifest, manifest_id, UnixMillis(RELEASE), key, &members);
                let k = manifest.policy.representatives as usize;
                let mut s: Vec<PublicKey> = gate.ranking().iter().take(k).copied().collect();
                s.sort_unstable();
                s
            } else {
                Vec::new()
            };
            ObserverRun {
                state_bytes: roster.state_bytes(),
                own_size: roster.own_size(),
                judged,
                seats,
                heard_last_hour,
                sent_last_hour,
                catch_up_last_hour,
                catch_up_asks_last_hour,
            }
        })
        .collect();

    // A fresh node joining this cluster: how long until it has heard 90% of the
    // members (its view settles no earlier than that).
    {
        let join = RELEASE - p.max(10 * MIN) - 2 * p;
        let window = p * EXPIRY_PERIODS as u64 + HEARTBEAT_MAX_AGE.as_millis() as u64;
        let mut heard: std::collections::HashSet<u32> = std::collections::HashSet::new();
        let live: std::collections::HashSet<u32> =
            beats.iter().filter(|b| b.at >= join && b.at < join + window).map(|b| b.from).collect();
        let need = (0.9 * live.len() as f64).ceil() as usize;
        let mut settled_at = (need == 0).then_some(0);
        for b in beats.iter().filter(|b| b.at >= join && b.at < join + window) {
            heard.insert(b.from);
            if settled_at.is_none() && heard.len() >= need {
                settled_at = Some(b.at + o.delay_base_ms - join);
                break;
            }
        }
        settle_ms.extend(settled_at);
    }
    ClusterRun { cluster: c, size: n, observers: runs, settle_ms }
}
