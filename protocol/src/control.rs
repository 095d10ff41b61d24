//! The control API's vocabulary: what an operator's tools (the CLI, and the web view
//! to come) ask a running node, as line-delimited JSON. The node serves it on an
//! authenticated local endpoint (node/src/daemon/api.rs); parsing lives here, where the
//! fuzzer reaches it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("bad request: {0}")]
    BadRequest(#[from] serde_json::Error),
    #[error("unknown kind `{0}` (malformed, oversized, unsigned, wrong-signature, stale, wrong-app)")]
    UnknownInjectKind(String),
}

/// What a node run with `--allow-debug` (test builds only) can be told to do wrong when
/// serving, so tests attack honest nodes through the real network path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Misbehaviour {
    Honest,
    /// Claim every chunk of every known artifact and serve chunks with a flipped byte
    /// (or noise, for chunks not held).
    Corrupt,
    /// Claim every chunk and serve more bytes than the manifest's chunk length.
    Endless,
    /// Claim every chunk and serve the same chunk index of another artifact held
    /// (another version): mix-and-match.
    Mix,
    /// Serve honestly, but every chunk a tenth of a second late: a slow peer, so tests can
    /// interrupt a download half-way.
    Slow,
}

impl Misbehaviour {
    /// Whether the peer lies about what it holds.
    pub fn lies(self) -> bool {
        matches!(self, Misbehaviour::Corrupt | Misbehaviour::Endless | Misbehaviour::Mix)
    }
}

/// Bytes a connection may send before it is cut off (a line never grows past it).
pub const MAX_REQUEST_LINE: u64 = 64 * 1024;

/// A bad announcement a node can be told to publish (only with `--allow-debug`), so
/// tests exercise the real receiving path of its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InjectKind {
    Malformed,
    Oversized,
    Unsigned,
    WrongSignature,
    Stale,
    WrongApp,
}

impl std::str::FromStr for InjectKind {
    type Err = ControlError;
    fn from_str(s: &str) -> Result<Self, ControlError> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| ControlError::UnknownInjectKind(s.to_string()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Re-sign and publish our fingerprint for `app` (all apps if none) now.
    Announce {
        app: Option<String>,
    },
    /// What we hold from `peer` for `app`: issue and receive times of its newest announcement.
    Seen {
        app: String,
        peer: String,
    },
    /// Publish a bad announcement on `app`'s topic (debug builds of a fleet only).
    Inject {
        kind: InjectKind,
        app: Option<String>,
    },
    /// Download the newest admitted release of `app` (which must be `version`, if given).
    Fetch {
        app: String,
        version: Option<String>,
    },
    /// Switch `app` back to the version that ran before the current one, and pin it
    /// there until the next release or [`Request::Unpin`].
    Rollback {
        app: String,
    },
    /// Lift the pin a rollback set: `app` follows its cluster's releases again.
    Unpin {
        app: String,
    },
    /// The signed problem reports this node holds for `app` (hex envelopes).
    ProblemReports {
        app: String,
    },
    /// Cut this node off from these peers (`--allow-debug` only): it disconnects them
    /// and refuses their connections until the list is replaced (empty: heals). How
    /// tests make a partition on loopback.
    Block {
        peers: Vec<String>,
    },
    /// Serve content wrongly from now on (`--allow-debug` only), for attack tests.
    Misbehave {
        mode: Misbehaviour,
    },
    /// Publish these bytes (hex) on `app`'s release topic (`--allow-debug` only), so tests
    /// can send forged, replayed or rolled-back manifests through a real peer. The node
    /// also judges the bytes itself, as it would had a peer sent them.
    PublishRelease {
        app: String,
        hex: String,
    },
}

/// Whether a refused request may succeed if asked again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// It will not: the app is unknown, the version is gone, the feature is off.
    Refused,
    /// Not yet: the release has not reached the node, say. Worth asking again.
    NotYet,
}

/// What a TCP connection's first line must be.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub token: String,
}

impl Hello {
    /// The first line of a TCP connection, if it is a hello.
    pub fn parse(line: &str) -> Option<Hello> {
        serde_json::from_str(line).ok()
    }
}

/// Whether a line is the start of an HTTP request (a browser's, most likely).
pub fn looks_like_http(line: &str) -> bool {
    const METHODS: [&str; 9] =
        ["GET ", "POST ", "PUT ", "DELETE ", "HEAD ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE "];
    METHODS.iter().any(|m| line.starts_with(m))
}

impl Request {
    /// One request line.
    pub fn parse(line: &str) -> Result<Request, ControlError> {
        Ok(serde_json::from_str(line)?)
    }
}
