//! Which releases this node holds: vendors' manifests admitted from the release topic
//! (or a peer's answer), stored, re-checked after a restart, and seeded by a vendor.

use super::*;

impl Node {
    /// Loads stored releases (re-checked: a manifest that expired while we were down is
    /// dropped) and resumes wanted downloads.
    pub(in crate::daemon) fn restore_releases(&mut self) -> Result<(), crate::store::StoreError> {
        let now = overlay::now();
        for (app, bytes) in self.store.releases()? {
            match check_release_message(&bytes, &app, now) {
                Ok(ReleaseMessage::Manifest(m)) if self.dist.trust.admit(&m, Some(&app), None, now).is_ok() => {
                    self.dist.releases.insert(app, Admitted { manifest: m, bytes });
                }
                _ => warn!(app, "stored release no longer valid; forgotten"),
            }
        }
        for (content, app) in self.store.wanted()? {
            let wanted = self.dist.releases.get(&app).is_some_and(|a| {
                let m = a.manifest.payload();
                m.artifact.content_hash.to_hex() == content
                    || m.test_bundle.as_ref().is_some_and(|b| b.content_hash.to_hex() == content)
            });
            if wanted {
                self.fetch_release(&app);
            } else {
                let _ = self.store.set_wanted(&content, &app, false);
            }
        }
        Ok(())
    }

    /// A vendor's own release: imported (and so verified) into the chunk store, admitted
    /// like any other, provided on the DHT and published on the release topic.
    pub(in crate::daemon) fn seed_release(&mut self, seed: &SeedRelease) -> Result<(), String> {
        let env = Envelope::from_bytes(&seed.envelope).map_err(|e| e.to_string())?;
        let manifest = env.verify::<UpgradeManifest>().map_err(|e| e.to_string())?;
        let m = manifest.payload().clone();
        self.dist.trust.trust(&m.app, *manifest.signer());
        let stored = self.dist.chunks.import(&m.artifact, &seed.artifact).map_err(|e| e.to_string())?;
        self.dist.held.insert(m.artifact.content_hash, stored);
        if let (Some(info), Some(path)) = (&m.test_bundle, &seed.bundle) {
            let stored = self.dist.chunks.import(info, path).map_err(|e| e.to_string())?;
            self.dist.held.insert(info.content_hash, stored);
        }
        for info in std::iter::once(&m.artifact).chain(m.test_bundle.as_ref()) {
            if let Err(e) =
                self.swarm.behaviour_mut().overlay.kad.start_providing(overlay::content_record_key(&info.content_hash))
            {
                warn!(error = %e, "cannot register as content provider");
            }
        }
        self.follow_release_topic(&m.app);
        self.dist.releases.insert(m.app.clone(), Admitted { manifest, bytes: seed.envelope.clone() });
        if let Err(e) = self.store.put_release(&m.app, &seed.envelope) {
            warn!(error = %e, "cannot store release");
        }
        self.dist.pending_publish.push((m.app.clone(), seed.envelope.clone()));
        info!(app = m.app, version = %m.version, content = %m.artifact.content_hash, size = m.artifact.size, "seeding release");
        Ok(())
    }

    pub(in crate::daemon) fn follow_release_topic(&mut self, app: &str) {
        if let Err(e) =
            overlay::subscribe_app(&mut self.swarm.behaviour_mut().overlay.gossipsub, overlay::release_topic(app))
        {
            warn!(app, error = %e, "cannot subscribe to release topic");
        }
    }

    /// A message on a release topic.
    pub(in crate::daemon) fn on_release_message(
        &mut self,
        app: &str,
        from: PeerId,
        bytes: &[u8],
    ) -> gossipsub::MessageAcceptance {
        let _span = info_span!("release", from = %from, app).entered();
        match check_release_message(bytes, app, overlay::now()) {
            Ok(ReleaseMessage::TestReport(report)) => self.on_test_report(app, report, bytes),
            Ok(ReleaseMessage::ProblemReport(report)) => self.on_problem_report(app, report, bytes),
            Ok(ReleaseMessage::Retest(request)) => self.on_retest(app, request, bytes),
            Ok(ReleaseMessage::Manifest(_)) => self.admit_manifest(bytes, app, true),
            // A manifest that breaks the channel's rules is counted as one; anything
            // else (a report, or what does not even decode) among the other messages.
            Err(_)
                if mirage_protocol::membership::decode_envelope(bytes)
                    .is_ok_and(|e| e.kind == mirage_protocol::MessageKind::Manifest) =>
            {
                self.admit_manifest(bytes, app, true)
            }
            Err(reason) => {
                *self.dist.rejected_messages.entry(reason.name()).or_default() += 1;
                warn!(reason = reason.name(), "refused release message");
                gossipsub::MessageAcceptance::Reject
            }
        }
    }

    /// Checks and, if trusted and newer, admits a manifest. `counted` says whether a
    /// refusal counts (gossip: yes; a peer's answer to our manifest request: only real
    /// attacks, since an honest peer may simply not have heard of the newer release).
    pub(super) fn admit_manifest(&mut self, bytes: &[u8], app: &str, counted: bool) -> gossipsub::MessageAcceptance {
        let now = overlay::now();
        let manifest = match check_release_message(bytes, app, now) {
            Ok(ReleaseMessage::Manifest(m)) => m,
            Ok(_) => return gossipsub::MessageAcceptance::Ignore,
            Err(reason) => {
                *self.dist.rejected_manifests.entry(drop_name(reason)).or_default() += 1;
                warn!(reason = drop_name(reason), "refused release message");
                return gossipsub::MessageAcceptance::Reject;
            }
        };
        let current = self.dist.releases.get(app).map(|a| a.manifest.payload().version.clone());
        if let Err(rejection) = self.dist.trust.admit(&manifest, Some(app), current.as_ref(), now) {
            // The same version again is a republication (or a second path to us), not an
            // attack: neither counted nor penalized.
            let same = matches!(&rejection, ManifestRejection::NotNewer { version, current, .. } if version == current);
            if same {
                debug!(%rejection, "release already known");
            } else if counted || !matches!(rejection, ManifestRejection::NotNewer { .. }) {
                *self.dist.rejected_manifests.entry(rejection_name(&rejection)).or_default() += 1;
                warn!(%rejection, "refused manifest");
            }
            // Whom to trust and which version is newest are this node's own judgements,
            // which a relay (a bootstrap peer, another node trusting other keys) cannot
            // make: refused, counted, not forwarded, but no fault of the peer it came
            // through. What every relay checks too (form, signature, expiry) is
            // rejected above.
            return gossipsub::MessageAcceptance::Ignore;
        }
        let m = manifest.payload();
        info!(version = %m.version, signer = %manifest.signer().peer_id(), content = %m.artifact.content_hash,
            size = m.artifact.size, "release admitted");
        if let Err(e) = self.store.put_release(app, bytes) {
            warn!(error = %e, "cannot store release");
        }
        if let Some(old) = self.dist.releases.remove(app) {
            self.drop_release_content(&old);
        }
        self.dist.releases.insert(app.to_string(), Admitted { manifest, bytes: bytes.to_vec() });
        if self.dist.misbehaviour.lies() {
            self.provide_release(app);
        }
        if self.staging.manages(app) {
            self.staging_manifest(app);
        } else if self.dist.auto_fetch {
            self.fetch_release(app);
        }
        gossipsub::MessageAcceptance::Accept
    }

    /// Stops downloading a superseded release (what is on disk stays, to be served).
    pub(super) fn drop_release_content(&mut self, old: &Admitted) {
        let m = old.manifest.payload();
        for info in std::iter::once(&m.artifact).chain(m.test_bundle.as_ref()) {
            if self.dist.downloads.get(&info.content_hash).is_some_and(|d| d.finished.is_none()) {
                self.dist.downloads.remove(&info.content_hash);
                let _ = self.store.set_wanted(&info.content_hash.to_hex(), &m.app, false);
            }
        }
    }

    pub(super) fn provide_release(&mut self, app: &str) {
        let Some(a) = self.dist.releases.get(app) else { return };
        let m = a.manifest.payload();
        let keys: Vec<Digest> =
            std::iter::once(&m.artifact).chain(m.test_bundle.as_ref()).map(|i| i.content_hash).collect();
        for k in keys {
            let _ = self.swarm.behaviour_mut().overlay.kad.start_providing(overlay::content_record_key(&k));
        }
    }

    /// Where the admitted release of `app` has its artifact and test bundle, once both
    /// are complete on disk.
    pub(in crate::daemon) fn release_content(&self, app: &str) -> Option<(PathBuf, Option<PathBuf>)> {
        let m = self.dist.releases.get(app)?.manifest.payload();
        let path = |info: &ArtifactInfo| {
            self.dist.held.get(&info.content_hash).filter(|s| s.is_complete()).map(StoredArtifact::data_path)
        };
        let artifact = path(&m.artifact)?;
        let bundle = match &m.test_bundle {
            Some(info) => Some(path(info)?),
            None => None,
        };
        Some((artifact, bundle))
    }
}
