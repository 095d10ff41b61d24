//! Downloads: the protocol core's [`Download`] plans, this turns its plan into content
//! requests to DHT providers and writes accepted chunks to the chunk store.

use super::*;

impl Node {
    /// Starts (or resumes) downloading the admitted release of `app`: its artifact and
    /// test bundle. Returns the version, or why not.
    pub(in crate::daemon) fn fetch_release(&mut self, app: &str) -> Option<semver::Version> {
        self.try_fetch_release(app).ok().flatten()
    }

    /// Starts the release's downloads; `Ok(None)` when no release is admitted, `Err` when
    /// this node cannot hold it (its disk): a fault of its own, never a peer's.
    pub(in crate::daemon) fn try_fetch_release(
        &mut self,
        app: &str,
    ) -> Result<Option<semver::Version>, crate::chunk_store::StoreError> {
        let Some(a) = self.dist.releases.get(app) else { return Ok(None) };
        let m = a.manifest.payload().clone();
        let parts = std::iter::once(("artifact", &m.artifact)).chain(m.test_bundle.as_ref().map(|b| ("tests", b)));
        for (what, info) in parts {
            if let Err(e) = self.start_download(&m, what, info) {
                warn!(app, version = %m.version, error = %e, "cannot start download");
                *self.dist.local_faults.entry(store_fault_name(&e)).or_default() += 1;
                return Err(e);
            }
        }
        Ok(Some(m.version))
    }

    pub(super) fn start_download(
        &mut self,
        m: &UpgradeManifest,
        what: &'static str,
        info: &ArtifactInfo,
    ) -> Result<(), crate::chunk_store::StoreError> {
        let content = info.content_hash;
        if self.dist.downloads.contains_key(&content) {
            return Ok(());
        }
        if !self.dist.held.contains_key(&content) {
            // What is still missing must fit (sparse files take their room as chunks
            // come, so the room is checked, not reserved).
            let present = self.dist.chunks.bytes_present(info);
            self.dist.chunks.check_room(info.size.saturating_sub(present))?;
            let stored = self.dist.chunks.open_artifact(info)?;
            self.dist.held.insert(content, stored);
        }
        let stored = &self.dist.held[&content];
        let have = stored.have().to_vec();
        let complete = stored.is_complete();
        let download = Download::new(info.clone(), have, rand::random())
            .with_limits(PER_PEER_IN_FLIGHT, crate::net::CHUNK_REQUEST_TIMEOUT);
        let (got, total) = download.progress();
        self.dist.downloads.insert(
            content,
            ActiveDownload {
                app: m.app.clone(),
                version: m.version.clone(),
                what,
                download,
                started: Instant::now(),
                finished: complete.then_some(Duration::ZERO),
                last_have_poll: None,
                last_provider_poll: None,
                holders: BTreeSet::new(),
                heard: HashMap::new(),
                asked: HashMap::new(),
                bytes: 0,
                latency: RequestLatency::default(),
                first_chunk: None,
            },
        );
        // Providing from the start lets other receivers find our partial copy.
        let _ = self.swarm.behaviour_mut().overlay.kad.start_providing(overlay::content_record_key(&content));
        if complete {
            return Ok(());
        }
        if let Err(e) = self.store.set_wanted(&content.to_hex(), &m.app, true) {
            warn!(error = %e, "cannot record wanted artifact");
        }
        info!(app = m.app, version = %m.version, what, %content, chunks = total, resumed = got, "download started");
        // Start at once rather than at the next tick: search the DHT for providers, and
        // ask the peers we are connected to, which in a swarm often hold chunks already.
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in connected {
            self.ask_have(peer, content);
        }
        self.poll_download(content, Instant::now());
        Ok(())
    }

    /// Periodic work: provider searches, have polls, timeouts, new requests, publishing.
    pub(in crate::daemon) fn distribution_tick(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.dist.delayed).into_iter().partition(|d| d.0 <= now);
        self.dist.delayed = later;
        for (_, reply, response) in due {
            self.reply(reply, response);
        }
        let pending = std::mem::take(&mut self.dist.pending_publish);
        for (app, bytes) in pending {
            match self.swarm.behaviour_mut().overlay.gossipsub.publish(overlay::release_topic(&app), bytes.clone()) {
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => info!(app, "release published"),
                Err(e) => {
                    debug!(app, error = %e, "release not published yet; will retry");
                    self.dist.pending_publish.push((app, bytes));
                }
            }
        }
        let active: Vec<Digest> =
            self.dist.downloads.iter().filter(|(_, d)| d.finished.is_none()).map(|(k, _)| *k).collect();
        for content in active {
            self.poll_download(content, now);
        }
        if let Some(goal) = &mut self.dist.seed_goal {
            if goal.last_poll.is_none_or(|t| now - t >= Duration::from_secs(1)) {
                goal.last_poll = Some(now);
                let content = goal.content;
                let id = self.swarm.behaviour_mut().overlay.kad.get_providers(overlay::content_record_key(&content));
                self.dist.provider_lookups.insert(id, content);
            }
            // Ask the peers that have not shown they admitted the release what they hold:
            // the vendor learns who took it, and what the others hold instead.
            let app = goal.app.clone();
            let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
            let due = goal.due_asks(connected.into_iter(), now);
            for peer in due {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .content
                    .send_request(&peer, ContentRequest::Manifest { app: app.clone() });
                self.dist.manifest_requests.insert(id, app.clone());
            }
        }
    }

    /// One download's periodic work: provider searches, have polls, timeouts, requests.
    fn poll_download(&mut self, content: Digest, now: Instant) {
        let Some(d) = self.dist.downloads.get_mut(&content) else { return };
        let providers_due = d.last_provider_poll.is_none_or(|t| now - t >= PROVIDER_POLL);
        let have_due = d.last_have_poll.is_none_or(|t| now - t >= HAVE_POLL);
        if providers_due {
            d.last_provider_poll = Some(now);
        }
        if have_due {
            d.last_have_poll = Some(now);
        }
        d.download.on_tick(overlay::now());
        if providers_due {
            let id = self.swarm.behaviour_mut().overlay.kad.get_providers(overlay::content_record_key(&content));
            self.dist.provider_lookups.insert(id, content);
        }
        if have_due {
            let d = &self.dist.downloads[&content];
            let stale = |p: &PeerId| d.heard.get(p).is_none_or(|t| now - *t >= HAVE_POLL);
            let known: Vec<PeerId> =
                d.holders.iter().filter(|p| !d.download.is_banned(p) && stale(p)).copied().collect();
            for p in known {
                self.ask_have(p, content);
            }
        }
        self.pump(content);
    }

    pub(super) fn ask_have(&mut self, peer: PeerId, content: Digest) {
        if peer == self.local_peer {
            return;
        }
        // A provider search reports in many steps, each naming mostly the same peers:
        // ask each peer at most once per poll interval.
        if let Some(d) = self.dist.downloads.get_mut(&content) {
            let now = Instant::now();
            if d.asked.get(&peer).is_some_and(|t| now - *t < HAVE_POLL) {
                return;
            }
            d.asked.insert(peer, now);
        }
        let id = self.swarm.behaviour_mut().content.send_request(&peer, ContentRequest::Have { content });
        self.dist.have_requests.insert(id, content);
    }

    /// Providers of `content` found on the DHT: ask each which chunks it holds.
    pub(in crate::daemon) fn on_content_providers(
        &mut self,
        id: &kad::QueryId,
        providers: &std::collections::HashSet<PeerId>,
    ) -> bool {
        let Some(content) = self.dist.provider_lookups.get(id).copied() else { return false };
        let seeding = self.dist.seed_goal.as_ref().is_some_and(|g| g.content == content);
        for p in providers {
            let downloading = self.dist.downloads.get(&content).is_some_and(|d| d.finished.is_none());
            let replicated = self.dist.seed_goal.as_ref().is_some_and(|g| g.replicated.contains(p));
            if downloading || (seeding && !replicated) {
                self.ask_have(*p, content);
            }
        }
        true
    }

    pub(in crate::daemon) fn forget_lookup(&mut self, id: &kad::QueryId) {
        self.dist.provider_lookups.remove(id);
    }

    /// Sends the requests the download plan wants now.
    pub(super) fn pump(&mut self, content: Digest) {
        let Some(d) = self.dist.downloads.get_mut(&content) else { return };
        if d.finished.is_some() {
            return;
        }
        let requests = d.download.next_requests(overlay::now());
        for (peer, index) in requests {
            self.ask_lane(peer);
            if let Route::Libp2p = self.dist.lanes.route(peer, content, index as u32) {
                self.request_chunk(peer, content, index);
            }
        }
    }

    /// Asks for a chunk over libp2p's content protocol.
    pub(super) fn request_chunk(&mut self, peer: PeerId, content: Digest, index: usize) {
        let id = self
            .swarm
            .behaviour_mut()
            .content
            .send_request(&peer, ContentRequest::Chunk { content, index: index as u32 });
        self.dist.chunk_requests.insert(id, (content, index, Instant::now()));
    }

    /// Asks `peer` for a content lane, unless we have one or asked already.
    pub(super) fn ask_lane(&mut self, peer: PeerId) {
        if self.dist.lanes.should_ask(peer) {
            let id = self.swarm.behaviour_mut().content.send_request(&peer, ContentRequest::Lane);
            self.dist.lane_offers.insert(id, peer);
        }
    }

    /// Sends over libp2p the chunk requests that waited for a lane the peer refused.
    pub(super) fn lane_refused(&mut self, peer: PeerId) {
        for (content, index) in self.dist.lanes.on_refused(peer) {
            self.request_chunk(peer, content, index as usize);
        }
    }

    pub(in crate::daemon) fn on_peer_connected(&mut self, peer: PeerId) {
        self.staging_ask_verdicts_of(peer);
        for app in self.dist.trusted_apps() {
            let id =
                self.swarm.behaviour_mut().content.send_request(&peer, ContentRequest::Manifest { app: app.clone() });
            self.dist.manifest_requests.insert(id, app.clone());
            if self.dist.collect_reports {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .content
                    .send_request(&peer, ContentRequest::Reports { app: app.clone() });
                self.dist.report_requests.insert(id, app);
            }
        }
    }

    pub(in crate::daemon) fn on_peer_disconnected(&mut self, peer: &PeerId) {
        self.dist.lanes.peer_gone(peer);
        for d in self.dist.downloads.values_mut() {
            d.download.peer_gone(peer);
        }
    }

    pub(in crate::daemon) fn on_content(&mut self, event: request_response::Event<ContentRequest, ContentResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request: ContentRequest::Lane, channel, .. } => {
                    let response = ContentResponse::lane_offer(self.dist.lanes.issue_ticket(peer));
                    let _ = self.swarm.behaviour_mut().content.send_response(channel, response);
                }
                request_response::Message::Request { request, channel, .. } => {
                    let chunk = matches!(request, ContentRequest::Chunk { .. });
                    if let (ContentRequest::Have { content } | ContentRequest::Chunk { content, .. }, Some(goal)) =
                        (&request, self.dist.seed_goal.as_mut())
                    {
                        if goal.content == *content {
                            goal.on_admitted(peer);
                        }
                    }
                    let response = self.serve(request);
                    self.answer(chunk, ReplyTo::Stream(channel), response);
                }
                request_response::Message::Response { request_id, response } => {
                    self.on_content_response(peer, request_id, response)
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some((content, index, _)) = self.dist.chunk_requests.remove(&request_id) {
                    debug!(%peer, index, %error, "chunk request failed");
                    if let Some(d) = self.dist.downloads.get_mut(&content) {
                        d.download.on_failure(&peer, index);
                    }
                    self.pump(content);
                }
                if let Some(peer) = self.dist.lane_offers.remove(&request_id) {
                    self.lane_refused(peer);
                }
                self.dist.have_requests.remove(&request_id);
                self.dist.manifest_requests.remove(&request_id);
                self.dist.report_requests.remove(&request_id);
                self.dist.verdict_requests.remove(&request_id);
            }
            _ => {}
        }
    }

    pub(super) fn on_content_response(
        &mut self,
        peer: PeerId,
        id: request_response::OutboundRequestId,
        response: ContentResponse,
    ) {
        if let Some(app) = self.dist.manifest_requests.remove(&id) {
            if let Some(goal) = self.dist.seed_goal.as_mut().filter(|g| g.app == app) {
                // A seed never takes another manifest for its own app: it is there to
                // serve the one it publishes, and to learn who admitted it.
                let held = match &response {
                    ContentResponse::Manifest(bytes) => Envelope::from_bytes(bytes)
                        .ok()
                        .and_then(|e| e.verify::<UpgradeManifest>().ok())
                        .map(|m| (m.payload().id(), m.payload().version.clone())),
                    _ => None,
                };
                goal.on_answer(peer, held);
                return;
            }
            if let ContentResponse::Manifest(bytes) = response {
                let _span = info_span!("release", from = %peer, app).entered();
                if self.admit_manifest(&bytes, &app, false) == gossipsub::MessageAcceptance::Reject {
                    self.penalize(peer, "a bad manifest");
                }
            }
            return;
        }
        if let Some(app) = self.dist.verdict_requests.remove(&id) {
            if let ContentResponse::Reports(reports) = response {
                let now = overlay::now();
                for bytes in reports.iter().take(crate::daemon::staging::MAX_VERDICTS) {
                    match check_release_message(bytes, &app, now) {
                        Ok(ReleaseMessage::TestReport(r)) => {
                            self.on_test_report(&app, r, bytes);
                        }
                        _ => debug!(%peer, "peer answered a verdict request with something else"),
                    }
                }
            }
            return;
        }
        if let Some(app) = self.dist.report_requests.remove(&id) {
            if let ContentResponse::Reports(reports) = response {
                let now = overlay::now();
                for bytes in reports.iter().take(256) {
                    match check_release_message(bytes, &app, now) {
                        Ok(ReleaseMessage::ProblemReport(r)) => {
                            self.on_problem_report(&app, r, bytes);
                        }
                        _ => debug!(%peer, "peer sent something other than a problem report"),
                    }
                }
            }
            return;
        }
        if let Some(content) = self.dist.have_requests.remove(&id) {
            self.on_have(peer, content, response);
            return;
        }
        if let Some(peer) = self.dist.lane_offers.remove(&id) {
            match response {
                ContentResponse::Lane { port, ticket } => {
                    for (content, index) in self.dist.lanes.on_offer(peer, port, ticket) {
                        self.request_chunk(peer, content, index as usize);
                    }
                }
                _ => self.lane_refused(peer),
            }
            return;
        }
        let Some((content, index, sent)) = self.dist.chunk_requests.remove(&id) else { return };
        let answer = response.into_chunk();
        if answer.is_some() {
            self.dist.received_via_libp2p += 1;
        }
        self.on_chunk_answer(peer, content, index, sent, answer);
    }

    /// The answer to a chunk request, over libp2p or a lane: `None` if the peer had
    /// no chunk to give.
    pub(super) fn on_chunk_answer(
        &mut self,
        peer: PeerId,
        content: Digest,
        index: usize,
        sent: Instant,
        answer: Option<Served>,
    ) {
        let Some(d) = self.dist.downloads.get_mut(&content) else { return };
        d.latency.record(sent.elapsed());
        let data = match answer {
            Some(Served { data, have }) => {
                // What the sender holds now: no need to ask it separately.
                if let Some(held) = unpack_bitmap(&have, d.download.artifact().chunk_count()) {
                    let full = held.len() == d.download.artifact().chunk_count();
                    d.download.peer_has(peer, held);
                    if full {
                        d.holders.remove(&peer);
                    }
                    d.heard.insert(peer, Instant::now());
                }
                data
            }
            None => {
                d.download.on_failure(&peer, index);
                self.pump(content);
                return;
            }
        };
        match d.download.on_chunk(&peer, index, &data) {
            ChunkVerdict::Accept(proof) => {
                let Some(stored) = self.dist.held.get_mut(&content) else { return };
                let len = data.len() as u64;
                if let Err(e) = stored.store_chunk(index, data, proof) {
                    // Our disk's fault, not the sender's: the chunk is missing again
                    // (it had been counted as held) and nobody is struck.
                    warn!(%content, index, error = %e, "cannot store chunk");
                    d.download.store_failed(index);
                } else {
                    d.download.mark_stored(index);
                    d.bytes += len;
                    d.first_chunk.get_or_insert_with(|| d.started.elapsed());
                }
                if d.download.is_complete() {
                    self.finish_download(content);
                }
            }
            ChunkVerdict::Duplicate => {}
            ChunkVerdict::Reject(r) => {
                let name = chunk_rejection_name(r);
                *self.dist.rejected_chunks.entry(name).or_default() += 1;
                if r == Rejection::Unsolicited {
                    // An answer from a peer already banned from this download: its
                    // penalty was paid when it was banned.
                    debug!(%peer, %content, index, "ignored chunk from a banned peer");
                } else {
                    warn!(%peer, %content, index, reason = name, bytes = data.len(), "refused chunk; peer banned from this download");
                    self.penalize(peer, "a bad chunk");
                }
            }
        }
        self.pump(content);
    }

    pub(super) fn on_have(&mut self, peer: PeerId, content: Digest, response: ContentResponse) {
        let ContentResponse::Have(bits) = response else { return };
        let Some(info) = self.dist.artifact_info(&content) else { return };
        let Some(chunks) = unpack_bitmap(&bits, info.chunk_count()) else {
            debug!(%peer, "have bitmap of the wrong length");
            return;
        };
        let full = chunks.len() == info.chunk_count();
        if let Some(goal) = &mut self.dist.seed_goal {
            if goal.content == content && full && goal.replicated.insert(peer) {
                info!(%peer, replicas = goal.replicated.len(), wanted = goal.replicas, "peer holds a full copy");
            }
        }
        if let Some(d) = self.dist.downloads.get_mut(&content) {
            if d.finished.is_none() {
                d.heard.insert(peer, Instant::now());
                if !full {
                    d.holders.insert(peer);
                } else {
                    // A full copy never changes: no need to ask again.
                    d.holders.remove(&peer);
                }
                d.download.peer_has(peer, chunks);
                self.ask_lane(peer);
                self.pump(content);
            }
        }
    }

    pub(super) fn finish_download(&mut self, content: Digest) {
        let Some(d) = self.dist.downloads.get_mut(&content) else { return };
        let elapsed = d.started.elapsed();
        d.finished = Some(elapsed);
        let (app, version, what, bytes) = (d.app.clone(), d.version.clone(), d.what, d.bytes);
        let (requests, mean_ms, max_ms) = (d.latency.count, d.latency.mean_ms(), d.latency.max.as_millis() as u64);
        let first_chunk_ms = d.first_chunk.map(|f| f.as_millis() as u64);
        let peers = d.heard.len();
        // The fsync and whole-content check run off the event loop, so this node keeps
        // serving the swarm meanwhile; until they are done a restart re-verifies chunks.
        match self.dist.held.get(&content).map(StoredArtifact::finisher) {
            Some(Ok(finisher)) => {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = finisher.run() {
                        tracing::error!(%content, error = %e, "finished artifact failed its final check");
                    }
                });
            }
            Some(Err(e)) => warn!(error = %e, "cannot finish artifact"),
            None => {}
        }
        if let Err(e) = self.store.set_wanted(&content.to_hex(), &app, false) {
            warn!(error = %e, "cannot update wanted artifacts");
        }
        let secs = elapsed.as_secs_f64().max(1e-3);
        info!(app, %version, what, %content, seconds = secs, mib_per_s = bytes as f64 / secs / 1048576.0,
            requests, mean_ms, max_ms, first_chunk_ms, peers, "download complete");
        if self.staging.manages(&app) {
            self.staging_content_check(&app);
        }
    }
}

/// A stable word for a local storage fault, for status counters.
fn store_fault_name(e: &crate::chunk_store::StoreError) -> &'static str {
    match e {
        crate::chunk_store::StoreError::NoSpace { .. } => "no_space",
        _ => "store",
    }
}
