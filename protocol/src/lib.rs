//! Mirage's protocol core.
//!
//! Everything here is pure logic: no sockets, no files, no clocks, no threads. Time is
//! passed in as [`UnixMillis`], randomness as an RNG argument, file contents as bytes.
//! The `mirage` node and the `testnet` simulator drive this same code, so what the
//! simulator shows is what the real network does.
//!
//! - [`identity`]: ed25519 key pairs, public keys and the libp2p peer ids they map to.
//! - [`connections`]: the connection budget (which connections to close so their
//!   number stays flat).
//! - [`envelope`]: domain-separated signed envelopes; verification yields [`envelope::Verified`].
//! - [`wire`]: the versioned, size-limited bincode encoding every message travels in.
//! - [`fingerprint`]: application profiles, config parsing, host-noise normalization,
//!   fingerprints, cluster keys and the distance between fingerprints.
//! - [`manifest`] and [`report`]: upgrade manifests, test reports and problem reports.
//! - [`presence`]: when this node first saw each peer in its cluster, which decides who
//!   may represent a cluster (nobody minted after a release).
//! - [`roster`]: heartbeats on a cluster's own topic and rate-bounded size summaries on
//!   the app's: a node's view of its cluster and the fleet at a flat cost per node.
//! - [`staging`]: representatives, cluster gates, stages, and the per-(node, app)
//!   rollout state machine.
//! - [`transfer`]: swarm download planning (rarest first, verified chunks, bans).
//! - [`channel`]: what may travel on an app's release channel (signed manifests and
//!   test reports), checked the same way by nodes and relaying bootstrap peers.
//! - [`trust`]: which manifests a node accepts (trusted vendor keys, expiry, versions
//!   only moving forward).

pub mod channel;
pub mod connections;
pub mod control;
pub mod digest;
pub mod envelope;
pub mod exchange;
pub mod fingerprint;
pub mod identity;
pub mod manifest;
pub mod membership;
pub mod presence;
pub mod report;
pub mod roster;
pub mod staging;
pub mod time;
pub mod transfer;
pub mod trust;
pub mod wire;

pub use digest::Digest;
pub use envelope::{Envelope, MessageKind, SignedPayload, Verified, VerifyError};
pub use fingerprint::{ClusterKey, Fingerprint};
pub use identity::{Keypair, PublicKey};
pub use time::UnixMillis;
