//! Release and download state for `mirage status`.

use super::*;

impl Node {
    /// Download and release state for `mirage status`.
    pub(in crate::daemon) fn distribution_status(&self) -> serde_json::Value {
        let releases: Vec<serde_json::Value> = self
            .dist
            .releases
            .iter()
            .map(|(app, a)| {
                let m = a.manifest.payload();
                let parts: Vec<serde_json::Value> = std::iter::once(("artifact", &m.artifact))
                    .chain(m.test_bundle.as_ref().map(|b| ("tests", b)))
                    .map(|(what, info)| self.artifact_status(what, info))
                    .collect();
                serde_json::json!({
                    "app": app,
                    "version": m.version.to_string(),
                    "manifest_id": m.id().to_hex(),
                    "signer": a.manifest.signer().to_hex(),
                    "expires_at_ms": m.expires_at.0,
                    "content": parts,
                })
            })
            .collect();
        serde_json::json!({
            "releases": releases,
            "rejected_manifests": self.dist.rejected_manifests,
            "rejected_chunks": self.dist.rejected_chunks,
            "rejected_release_messages": self.dist.rejected_messages,
            "local_faults": self.dist.local_faults,
            "served_chunks": self.dist.served_chunks,
            "lane_port": self.dist.lanes.port(),
            "received_chunks": {
                "lane": self.dist.received_via_lane,
                "libp2p": self.dist.received_via_libp2p,
            },
            "replicas": self.dist.seed_goal.as_ref().map(|g| g.replicated.len()),
        })
    }

    pub(super) fn artifact_status(&self, what: &str, info: &ArtifactInfo) -> serde_json::Value {
        let content = info.content_hash;
        let stored = self.dist.held.get(&content);
        let have = stored.map_or(0, |s| s.have().iter().filter(|h| **h).count());
        let complete = stored.is_some_and(StoredArtifact::is_complete);
        let d = self.dist.downloads.get(&content);
        let state = match (complete, d) {
            (true, _) => "complete",
            (false, Some(_)) => "downloading",
            (false, None) => "not-requested",
        };
        let banned: Vec<String> = d
            .map(|d| self.swarm.connected_peers().filter(|p| d.download.is_banned(p)).map(|p| p.to_base58()).collect())
            .unwrap_or_default();
        serde_json::json!({
            "what": what,
            "content_hash": content.to_hex(),
            "size": info.size,
            "chunks": info.chunk_count(),
            "have_chunks": have,
            "bytes_done": (have as u64 * info.chunk_size as u64).min(info.size),
            "state": state,
            "path": complete.then(|| stored.map(|s| s.data_path().display().to_string())).flatten(),
            "seconds": d.and_then(|d| d.finished).map(|f| f.as_secs_f64()),
            "banned_peers": banned,
        })
    }
}
