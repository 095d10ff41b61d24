//! Carries out the roster's actions (the core's [`mirage_protocol::roster`], held by
//! [`Membership`](mirage_protocol::membership::Membership)): our cluster's topic,
//! heartbeats and summaries on gossip, and catch-ups over `/mirage/roster/1.0.0`.
//!
//! Staging reads its view from the roster (`daemon/staging`): our cluster's live
//! members and every cluster's size, at a cost that does not grow with the fleet.

use super::Node;
use libp2p::{gossipsub, request_response, PeerId};
use mirage_bootstrap::overlay;
use mirage_protocol::fingerprint::ClusterKey;
use mirage_protocol::roster::{CatchUp, CatchUpRequest, RosterDrop};
use mirage_protocol::Envelope;
use tracing::{debug, info, warn};

impl Node {
    /// What `mirage status` shows of an app's roster.
    pub(super) fn roster_status(&self, r: &mirage_protocol::roster::Roster) -> serde_json::Value {
        let now = overlay::now();
        let drops: serde_json::Map<String, serde_json::Value> =
            r.drops().iter().map(|(why, n)| (why.name().to_string(), (*n).into())).collect();
        serde_json::json!({
            "live_members": r.live_count(now),
            "size": r.own_size(),
            "heartbeat_period_s": r.period().as_secs(),
            "settled": r.is_settled(now),
            "ready": r.is_ready(now),
            "known_cluster_sizes": r.cluster_count().saturating_sub(1),
            "state_bytes": r.state_bytes(),
            "dropped": drops,
        })
    }

    pub(super) fn join_cluster(&mut self, app: &str, cluster: &ClusterKey) {
        let topic = overlay::cluster_topic(app, cluster);
        if let Err(e) = overlay::subscribe_app(&mut self.swarm.behaviour_mut().overlay.gossipsub, topic) {
            warn!(app, %cluster, error = %e, "cannot join the cluster's topic");
        }
    }

    pub(super) fn leave_cluster(&mut self, app: &str, cluster: &ClusterKey) {
        let topic = overlay::cluster_topic(app, cluster);
        self.swarm.behaviour_mut().overlay.gossipsub.unsubscribe(&topic);
    }

    /// Publishes a heartbeat or summary; whether it went out.
    fn publish_roster(&mut self, topic: gossipsub::IdentTopic, bytes: Vec<u8>) -> bool {
        match self.swarm.behaviour_mut().overlay.gossipsub.publish(topic, bytes) {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => true,
            Err(e) => {
                debug!(error = %e, "roster message not published");
                false
            }
        }
    }

    /// A heartbeat that found no cluster-mate is tried again soon (the roster decides
    /// when); one that went out waits for its slot.
    pub(super) fn publish_heartbeat(&mut self, app: &str, cluster: &ClusterKey, bytes: Vec<u8>) {
        if !self.publish_roster(overlay::cluster_topic(app, cluster), bytes) {
            self.membership.on_heartbeat_unsent(app, overlay::now());
        }
    }

    /// A summary that finds no peer is not retried: another member is on duty too,
    /// and the next epoch brings the next.
    pub(super) fn publish_summary(&mut self, app: &str, bytes: Vec<u8>) {
        self.publish_roster(overlay::app_topic(app), bytes);
    }

    /// Asks one connected member of our cluster for what we missed.
    pub(super) fn ask_catch_up(&mut self, app: &str, request: CatchUpRequest) {
        let mates = self.membership.roster(app).map(|r| r.members(overlay::now())).unwrap_or_default();
        let me = self.membership.local_key();
        let peer = mates
            .iter()
            .filter(|m| m.peer != me)
            .map(|m| overlay::peer_id_of(&m.peer))
            .find(|p| self.swarm.is_connected(p));
        let Some(peer) = peer else {
            debug!(app, "no cluster-mate connected to catch up from; the view settles by listening");
            return;
        };
        self.swarm.behaviour_mut().roster.send_request(&peer, request);
    }

    /// A message on a cluster topic: only our own cluster's heartbeats are accepted.
    pub(super) fn on_cluster_message(&mut self, app: &str, data: &[u8]) -> gossipsub::MessageAcceptance {
        match self.membership.on_heartbeat(app, data, overlay::now()) {
            Ok(_) => gossipsub::MessageAcceptance::Accept,
            // Late or our own echoed back: gossip does that, it is not an attack.
            Err(RosterDrop::Stale | RosterDrop::Own) => gossipsub::MessageAcceptance::Ignore,
            Err(why) => {
                debug!(app, reason = why.name(), "dropped heartbeat");
                gossipsub::MessageAcceptance::Reject
            }
        }
    }

    /// A summary on the app's topic.
    pub(super) fn on_summary(&mut self, app: &str, env: &Envelope) -> gossipsub::MessageAcceptance {
        match self.membership.on_summary(app, env, overlay::now()) {
            Ok(()) => gossipsub::MessageAcceptance::Accept,
            Err(RosterDrop::Stale | RosterDrop::Older) => gossipsub::MessageAcceptance::Ignore,
            Err(why) => {
                debug!(app, reason = why.name(), "dropped cluster summary");
                gossipsub::MessageAcceptance::Reject
            }
        }
    }

    pub(super) fn on_roster(&mut self, event: request_response::Event<CatchUpRequest, Option<CatchUp>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let answer = self.membership.serve_catch_up(&request, overlay::now());
                    debug!(%peer, app = request.app, heartbeats = answer.as_ref().map_or(0, |a| a.heartbeats.len()), "catch-up asked");
                    let _ = self.swarm.behaviour_mut().roster.send_response(channel, answer);
                }
                request_response::Message::Response { response, .. } => self.on_catch_up(peer, response),
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "catch-up failed; the view settles by listening");
            }
            _ => {}
        }
    }

    fn on_catch_up(&mut self, peer: PeerId, answer: Option<CatchUp>) {
        let Some(answer) = answer else { return };
        let Some(got) = self.membership.on_catch_up(&answer, overlay::now()) else { return };
        info!(%peer, app = answer.app, refreshed = got.refreshed, new = got.new, dropped = got.dropped, covered = got.covered, "caught up on heartbeats");
    }
}
