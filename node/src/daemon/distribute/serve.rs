//! Serving what this node holds to its peers, and the test-only misbehaviours.

use super::*;

impl Node {
    pub(super) fn serve(&mut self, request: ContentRequest) -> ContentResponse {
        match request {
            // Tickets are per peer: issued where the peer is known (`on_content`).
            ContentRequest::Lane => ContentResponse::NotFound,
            ContentRequest::Verdicts { app, manifest, cluster } => {
                let reports = self.verdicts(&app, &manifest, &cluster);
                if reports.is_empty() {
                    ContentResponse::NotFound
                } else {
                    ContentResponse::Reports(reports)
                }
            }
            ContentRequest::Reports { app } => {
                let reports = self.problem_reports_for_vendor(&app);
                if reports.is_empty() {
                    ContentResponse::NotFound
                } else {
                    ContentResponse::Reports(reports)
                }
            }
            ContentRequest::Manifest { app } => self
                .dist
                .releases
                .get(&app)
                .map_or(ContentResponse::NotFound, |a| ContentResponse::Manifest(a.bytes.clone())),
            ContentRequest::Have { content } => {
                if self.dist.misbehaviour.lies() {
                    if let Some(info) = self.dist.artifact_info(&content) {
                        return ContentResponse::Have(pack_bitmap(&vec![true; info.chunk_count()]));
                    }
                }
                self.dist
                    .held
                    .get(&content)
                    .map_or(ContentResponse::NotFound, |s| ContentResponse::Have(pack_bitmap(s.have())))
            }
            ContentRequest::Chunk { content, index } => {
                let index = index as usize;
                if self.dist.misbehaviour.lies() {
                    if let Some(bad) = self.bad_chunk(&content, index) {
                        let info = self.dist.artifact_info(&content).map_or(0, ArtifactInfo::chunk_count);
                        return ContentResponse::Chunk { data: bad.into(), have: pack_bitmap(&vec![true; info]) };
                    }
                }
                match self.dist.held.get(&content) {
                    Some(s) if s.have().get(index).copied().unwrap_or(false) => {
                        let (data, from) = match s.cached_chunk(index) {
                            Some(hit) => (Ok(hit), "memory"),
                            None => (s.load_chunk(index), "disk"),
                        };
                        *self.dist.served_chunks.entry(from).or_default() += 1;
                        match data {
                            Ok(data) => ContentResponse::Chunk { data, have: pack_bitmap(s.have()) },
                            Err(e) => {
                                warn!(%content, index, error = %e, "cannot read chunk to serve");
                                ContentResponse::NotFound
                            }
                        }
                    }
                    _ => ContentResponse::NotFound,
                }
            }
        }
    }

    /// What a misbehaving peer serves instead of chunk `index` of `content`.
    pub(super) fn bad_chunk(&self, content: &Digest, index: usize) -> Option<Vec<u8>> {
        let info = self.dist.artifact_info(content)?;
        let len = info.chunk_len(index)? as usize;
        let real = self.dist.held.get(content).filter(|s| s.have()[index]).and_then(|s| s.read_chunk(index).ok());
        let noise = || (0..len).map(|i| (i as u8).wrapping_mul(31) ^ 0x5a).collect::<Vec<u8>>();
        Some(match self.dist.misbehaviour {
            Misbehaviour::Honest | Misbehaviour::Slow => return None,
            Misbehaviour::Corrupt => {
                let mut bytes = real.map_or_else(noise, |r| r.to_vec());
                bytes[len / 2] ^= 0xff;
                bytes
            }
            Misbehaviour::Endless => {
                let mut bytes = real.map_or_else(noise, |r| r.to_vec());
                bytes.resize(len + (1 << 20), 0xee);
                bytes
            }
            Misbehaviour::Mix => {
                let other = self
                    .dist
                    .held
                    .iter()
                    .filter(|(k, s)| *k != content && s.have().get(index).copied().unwrap_or(false))
                    .find_map(|(_, s)| s.read_chunk(index).ok());
                other.map_or_else(noise, |o| o.to_vec())
            }
        })
    }

    pub(in crate::daemon) fn set_misbehaviour(&mut self, mode: Misbehaviour) {
        self.dist.misbehaviour = mode;
        let apps: Vec<String> = self.dist.releases.keys().cloned().collect();
        if mode.lies() {
            for app in apps {
                self.provide_release(&app);
            }
        }
        warn!(?mode, "serving behaviour changed on request");
    }
}
