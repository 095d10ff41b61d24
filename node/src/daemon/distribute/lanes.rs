//! The node's side of content lanes ([`crate::lane`]): serving what peers ask over them
//! and taking their answers, with the same decisions as for the libp2p content protocol.

use super::*;

impl Node {
    pub(in crate::daemon) fn on_lane_event(&mut self, event: LaneEvent) {
        match event {
            LaneEvent::Request { peer, content, index, reply } => {
                self.exchanged(Some(peer));
                debug!(%peer, %content, index, "chunk asked over a lane");
                let response = self.serve(ContentRequest::Chunk { content, index });
                self.answer(true, ReplyTo::Lane(reply), response);
            }
            LaneEvent::Answer { peer, content, index, sent, chunk } => {
                self.exchanged(Some(peer));
                if chunk.is_some() {
                    self.dist.received_via_lane += 1;
                }
                self.on_chunk_answer(peer, content, index as usize, sent, chunk);
            }
            LaneEvent::Closed { peer, error, lost } => {
                match &error {
                    Some(e) => info!(%peer, error = %e, lost = lost.len(), "content lane broke; libp2p from now on"),
                    None => debug!(%peer, "content lane closed"),
                }
                self.dist.lanes.on_closed(peer, error.as_ref());
                let mut touched = BTreeSet::new();
                for (content, index) in lost {
                    if let Some(d) = self.dist.downloads.get_mut(&content) {
                        d.download.on_failure(&peer, index as usize);
                        touched.insert(content);
                    }
                }
                for content in touched {
                    self.pump(content);
                }
            }
        }
    }

    /// Sends the answer to a request, now or (for a slow peer's chunks) later.
    pub(super) fn answer(&mut self, chunk: bool, reply: ReplyTo, response: ContentResponse) {
        if chunk && self.dist.misbehaviour == Misbehaviour::Slow {
            self.dist.delayed.push((Instant::now() + SLOW_SERVE_DELAY, reply, response));
        } else {
            self.reply(reply, response);
        }
    }

    pub(super) fn reply(&mut self, reply: ReplyTo, response: ContentResponse) {
        match reply {
            ReplyTo::Stream(channel) => {
                let _ = self.swarm.behaviour_mut().content.send_response(channel, response);
            }
            ReplyTo::Lane(reply) => {
                // The lane may have closed meanwhile: then nobody waits for this.
                let _ = reply.send(response.into_chunk());
            }
        }
    }
}
