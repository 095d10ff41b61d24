//! Which problem reports a node keeps for the vendor, within bounds anyone's flood
//! cannot move.
//!
//! Anyone can sign a problem report naming any release and cluster. A report is
//! *vouched* for when this node's own view backs it: its signer's failing test report
//! counted in a gate of the current release, or its signer is a member of this node's
//! cluster (an apply that failed its health check). Vouched reports have their own
//! room, which unvouched ones never take; a flood of fresh keys only churns the small
//! unvouched pool. Both are capped in count and bytes, and only the newest releases'
//! reports are kept. What a vendor is sent fits one message, vouched reports first.

use crate::envelope::Verified;
use crate::identity::PublicKey;
use crate::report::ProblemReport;
use crate::time::UnixMillis;
use crate::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most vouched problem reports kept per app, and their bytes.
pub const MAX_VOUCHED: usize = 128;
pub const MAX_VOUCHED_BYTES: usize = 16 << 20;
/// Most unvouched problem reports kept per app, and their bytes.
pub const MAX_UNVOUCHED: usize = 32;
pub const MAX_UNVOUCHED_BYTES: usize = 2 << 20;
/// Reports of this many of the newest releases (by version) are kept.
pub const MAX_RELEASES: usize = 4;

/// How much a book keeps: a node's defaults, or a vendor's collector's, which gathers
/// what many nodes kept and takes every report as vouched (the vendor judges them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub vouched: usize,
    pub vouched_bytes: usize,
    pub unvouched: usize,
    pub unvouched_bytes: usize,
}

impl Caps {
    pub const NODE: Caps = Caps {
        vouched: MAX_VOUCHED,
        vouched_bytes: MAX_VOUCHED_BYTES,
        unvouched: MAX_UNVOUCHED,
        unvouched_bytes: MAX_UNVOUCHED_BYTES,
    };
    /// A collector asks each peer for at most one message's worth (1 MiB, at most a
    /// node's 160 reports): room for about 30 peers' answers.
    pub const COLLECTOR: Caps =
        Caps { vouched: 4096, vouched_bytes: 64 << 20, unvouched: MAX_UNVOUCHED, unvouched_bytes: MAX_UNVOUCHED_BYTES };
}

impl Default for Caps {
    fn default() -> Self {
        Caps::NODE
    }
}

/// Why a problem report was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemDrop {
    /// Already kept.
    Known,
    /// Issued too long ago or too far in the future.
    Stale,
    /// For a release older than the newest [`MAX_RELEASES`].
    OldRelease,
    /// Its pool is full of reports at least as new.
    Full,
    /// Larger than its pool's byte cap on its own.
    TooLarge,
}

impl ProblemDrop {
    pub fn name(self) -> &'static str {
        match self {
            ProblemDrop::Known => "known",
            ProblemDrop::Stale => "stale",
            ProblemDrop::OldRelease => "old_release",
            ProblemDrop::Full => "full",
            ProblemDrop::TooLarge => "too_large",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    manifest: Digest,
    signer: PublicKey,
    version: semver::Version,
    issued_at: UnixMillis,
    bytes: usize,
    vouched: bool,
}

/// The problem reports one node keeps for one app (ids only; the node keeps the bytes).
#[derive(Clone, Debug, Default)]
pub struct ProblemBook {
    kept: BTreeMap<Digest, Entry>,
    caps: Caps,
}

impl ProblemBook {
    pub fn new() -> Self {
        ProblemBook::default()
    }

    pub fn with_caps(caps: Caps) -> Self {
        ProblemBook { kept: BTreeMap::new(), caps }
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    pub fn contains(&self, id: &Digest) -> bool {
        self.kept.contains_key(id)
    }

    /// Offers a verified report of `bytes` bytes (its envelope). `Ok` holds the ids it
    /// pushed out, which the node forgets with it.
    pub fn offer(
        &mut self,
        report: &Verified<ProblemReport>,
        bytes: usize,
        vouched: bool,
        now: UnixMillis,
    ) -> Result<Vec<Digest>, ProblemDrop> {
        let id = report.id();
        if self.kept.contains_key(&id) {
            return Err(ProblemDrop::Known);
        }
        if !super::is_fresh(report, now) {
            return Err(ProblemDrop::Stale);
        }
        let p = report.payload();
        let entry = Entry {
            manifest: p.manifest_id,
            signer: *report.signer(),
            version: p.version.clone(),
            issued_at: report.issued_at(),
            bytes,
            vouched,
        };
        if bytes > if vouched { self.caps.vouched_bytes } else { self.caps.unvouched_bytes } {
            return Err(ProblemDrop::TooLarge);
        }
        if !self.among_newest_releases(&entry.version) {
            return Err(ProblemDrop::OldRelease);
        }
        self.kept.insert(id, entry);
        let mut evicted = self.evict_old_releases();
        evicted.extend(self.fit(vouched));
        if evicted.contains(&id) {
            // It was the oldest in a full pool: nothing changed but the others stay.
            return Err(ProblemDrop::Full);
        }
        Ok(evicted)
    }

    /// The signer's failure on `manifest` now counts here: its reports become vouched.
    /// Returns the ids pushed out of the vouched pool to make room.
    pub fn vouch(&mut self, manifest: &Digest, signer: &PublicKey) -> Vec<Digest> {
        let mut changed = false;
        for e in self.kept.values_mut().filter(|e| &e.manifest == manifest && &e.signer == signer && !e.vouched) {
            e.vouched = true;
            changed = true;
        }
        if changed {
            self.fit(true)
        } else {
            Vec::new()
        }
    }

    pub fn is_vouched(&self, id: &Digest) -> bool {
        self.kept.get(id).is_some_and(|e| e.vouched)
    }

    /// What to send a vendor within `budget` bytes (each report costing its bytes and
    /// `per_report` more): vouched before unvouched, newest first.
    pub fn for_vendor(&self, budget: usize, per_report: usize) -> Vec<Digest> {
        let mut order: Vec<(&Digest, &Entry)> = self.kept.iter().collect();
        order.sort_by(|(a, x), (b, y)| (y.vouched, y.issued_at, *b).cmp(&(x.vouched, x.issued_at, *a)));
        let mut used = 0;
        let mut out = Vec::new();
        for (id, e) in order {
            let cost = e.bytes + per_report;
            if used + cost <= budget {
                used += cost;
                out.push(*id);
            }
        }
        out
    }

    fn among_newest_releases(&self, version: &semver::Version) -> bool {
        let mut versions: Vec<&semver::Version> = self.kept.values().map(|e| &e.version).collect();
        versions.sort_unstable();
        versions.dedup();
        versions.len() < MAX_RELEASES || versions.iter().rev().take(MAX_RELEASES).any(|v| *v <= version)
    }

    fn evict_old_releases(&mut self) -> Vec<Digest> {
        let mut versions: Vec<semver::Version> = self.kept.values().map(|e| e.version.clone()).collect();
        versions.sort_unstable();
        versions.dedup();
        let Some(oldest_kept) =
            versions.len().checked_sub(MAX_RELEASES).map_or(versions.first(), |i| versions.get(i)).cloned()
        else {
            return Vec::new();
        };
        let gone: Vec<Digest> = self.kept.iter().filter(|(_, e)| e.version < oldest_kept).map(|(id, _)| *id).collect();
        for id in &gone {
            self.kept.remove(id);
        }
        gone
    }

    /// Evicts the oldest of one pool until it is within its caps.
    fn fit(&mut self, vouched: bool) -> Vec<Digest> {
        let c = self.caps;
        let (max, max_bytes) = if vouched { (c.vouched, c.vouched_bytes) } else { (c.unvouched, c.unvouched_bytes) };
        let mut pool: Vec<(UnixMillis, Digest, usize)> =
            self.kept.iter().filter(|(_, e)| e.vouched == vouched).map(|(id, e)| (e.issued_at, *id, e.bytes)).collect();
        pool.sort_unstable();
        let (mut count, mut bytes) = (pool.len(), pool.iter().map(|p| p.2).sum::<usize>());
        let mut evicted = Vec::new();
        for (_, id, size) in pool {
            if count <= max && bytes <= max_bytes {
                break;
            }
            self.kept.remove(&id);
            evicted.push(id);
            count -= 1;
            bytes -= size;
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::identity::Keypair;
    use crate::Envelope;

    fn report(signer: &Keypair, version: &str, manifest: u8, at: u64) -> Verified<ProblemReport> {
        let fingerprint = Fingerprint::new("mysql".into(), Digest([1; 32]), Vec::new());
        let p = ProblemReport {
            manifest_id: Digest([manifest; 32]),
            app: "mysql".into(),
            version: version.parse().unwrap(),
            cluster_key: fingerprint.cluster_key(),
            failed_tests: vec!["config-validates".into()],
            logs_digest: Digest([0; 32]),
            vendor: key(7777).public(),
            sealed: vec![0; 64],
        };
        Envelope::sign(signer, &p, UnixMillis(at)).unwrap().verify().unwrap()
    }

    fn key(i: u32) -> Keypair {
        let mut secret = [9u8; 32];
        secret[..4].copy_from_slice(&i.to_le_bytes());
        Keypair::from_secret_bytes(&secret)
    }

    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

    #[test]
    fn a_flood_of_strangers_reports_never_pushes_out_a_vouched_one() {
        let mut book = ProblemBook::new();
        let real = report(&key(0), "8.4.0", 1, NOW.0 - 1000);
        book.offer(&real, 2000, false, NOW).unwrap();
        assert!(book.vouch(&Digest([1; 32]), &key(0).public()).is_empty());
        assert!(book.is_vouched(&real.id()));
        for i in 1..=300 {
            let _ = book.offer(&report(&key(i), "8.4.0", 1, NOW.0 - 10), 2000, false, NOW);
        }
        assert!(book.contains(&real.id()));
        assert_eq!(book.len(), 1 + MAX_UNVOUCHED);
        // And the vendor hears of it first, whatever its budget.
        assert_eq!(book.for_vendor(2100, 8), vec![real.id()]);
    }

    #[test]
    fn stale_known_and_oversized_reports_are_refused_by_reason() {
        let mut book = ProblemBook::new();
        let r = report(&key(1), "1.0.0", 1, NOW.0);
        book.offer(&r, 100, false, NOW).unwrap();
        assert_eq!(book.offer(&r, 100, false, NOW), Err(ProblemDrop::Known));
        let old = report(&key(2), "1.0.0", 1, NOW.0 - 30 * 24 * 3600 * 1000);
        assert_eq!(book.offer(&old, 100, false, NOW), Err(ProblemDrop::Stale));
        let big = report(&key(3), "1.0.0", 1, NOW.0);
        assert_eq!(book.offer(&big, MAX_UNVOUCHED_BYTES + 1, false, NOW), Err(ProblemDrop::TooLarge));
    }

    #[test]
    fn only_the_newest_releases_are_kept() {
        let mut book = ProblemBook::new();
        for (i, v) in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"].iter().enumerate() {
            book.offer(&report(&key(i as u32), v, i as u8, NOW.0), 100, true, NOW).unwrap();
        }
        assert_eq!(book.offer(&report(&key(9), "0.9.0", 9, NOW.0), 100, true, NOW), Err(ProblemDrop::OldRelease));
        let evicted = book.offer(&report(&key(10), "2.0.0", 10, NOW.0), 100, true, NOW).unwrap();
        assert_eq!(evicted.len(), 1, "1.0.0's report goes");
        assert_eq!(book.len(), MAX_RELEASES);
    }

    #[test]
    fn pools_stay_within_their_byte_caps_and_the_vendors_answer_within_its_budget() {
        let mut book = ProblemBook::new();
        for i in 0..10 {
            let _ =
                book.offer(&report(&key(i), "1.0.0", 1, NOW.0 - 100 + i as u64), MAX_UNVOUCHED_BYTES / 4, false, NOW);
        }
        assert_eq!(book.len(), 4);
        let sent = book.for_vendor(MAX_UNVOUCHED_BYTES / 2, 8);
        assert_eq!(sent.len(), 1, "two quarter-size reports and their overhead exceed half");
    }
}
