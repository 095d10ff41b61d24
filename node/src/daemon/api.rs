//! The local control API: line-delimited JSON over TCP, one request and one reply per
//! connection line. Bound to 127.0.0.1 by default; it must never face the network.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// Longest request line accepted.
const MAX_REQUEST_LINE: u64 = 64 * 1024;

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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            format!("unknown kind `{s}` (malformed, oversized, unsigned, wrong-signature, stale, wrong-app)")
        })
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
    /// Serve content wrongly from now on (`--allow-debug` only), for attack tests.
    Misbehave {
        mode: super::Misbehaviour,
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

/// A request the node did not carry out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn not_yet(message: impl Into<String>) -> Self {
        ApiError { kind: ErrorKind::NotYet, message: message.into() }
    }
}

impl From<String> for ApiError {
    fn from(message: String) -> Self {
        ApiError { kind: ErrorKind::Refused, message }
    }
}

impl From<&str> for ApiError {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

pub type Reply = Result<serde_json::Value, ApiError>;
pub type Incoming = (Request, oneshot::Sender<Reply>);

/// Binds the API socket. Returns the bound address (the port may have been 0).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves connections until the receiver side of `tx` is gone.
pub async fn serve(listener: TcpListener, tx: mpsc::Sender<Incoming>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, tx).await {
                debug!(%peer, error = %e, "api connection ended");
            }
        });
    }
}

async fn handle(stream: TcpStream, tx: mpsc::Sender<Incoming>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST_LINE)).lines();
    while let Some(line) = lines.next_line().await? {
        let reply: Reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => Err(format!("bad request: {e}").into()),
            Ok(req) => {
                let (otx, orx) = oneshot::channel();
                if tx.send((req, otx)).await.is_err() {
                    Err("node is shutting down".into())
                } else {
                    orx.await.unwrap_or_else(|_| Err("node is shutting down".into()))
                }
            }
        };
        let body = match reply {
            Ok(v) => serde_json::json!({ "ok": v }),
            Err(e) => serde_json::json!({ "error": e.message, "kind": e.kind }),
        };
        let mut out = serde_json::to_vec(&body).map_err(std::io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the node's API at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("API I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("no reply from the node within {0:?}")]
    Timeout(Duration),
    #[error("bad reply from the node: {0}")]
    BadReply(String),
    #[error("node says: {message}")]
    Node { kind: ErrorKind, message: String },
}

/// Sends one request to a node's API and returns its reply.
pub async fn call(addr: &str, request: &Request, timeout: Duration) -> Result<serde_json::Value, ClientError> {
    let work = async {
        let stream =
            TcpStream::connect(addr).await.map_err(|e| ClientError::Connect { addr: addr.to_string(), source: e })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(|e| ClientError::BadReply(e.to_string()))?;
        line.push(b'\n');
        write.write_all(&line).await?;
        let mut lines = BufReader::new(read).lines();
        let reply = lines.next_line().await?.ok_or_else(|| ClientError::BadReply("connection closed".into()))?;
        let mut v: serde_json::Value =
            serde_json::from_str(&reply).map_err(|e| ClientError::BadReply(e.to_string()))?;
        if let Some(e) = v.get("error") {
            // A node from before error kinds said nothing of it: take it as final.
            let kind = v.get("kind").and_then(|k| serde_json::from_value(k.clone()).ok()).unwrap_or(ErrorKind::Refused);
            return Err(ClientError::Node { kind, message: e.as_str().unwrap_or_default().to_string() });
        }
        v.get_mut("ok").map(serde_json::Value::take).ok_or(ClientError::BadReply(reply))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| ClientError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shape() {
        let r: Request = serde_json::from_str(r#"{"cmd":"inject","kind":"wrong-app","app":null}"#).unwrap();
        assert_eq!(r, Request::Inject { kind: InjectKind::WrongApp, app: None });
        assert_eq!(serde_json::to_string(&Request::Status).unwrap(), r#"{"cmd":"status"}"#);
        assert_eq!("stale".parse::<InjectKind>().unwrap(), InjectKind::Stale);
        assert!("nope".parse::<InjectKind>().is_err());
        let r: Request = serde_json::from_str(r#"{"cmd":"misbehave","mode":"mix"}"#).unwrap();
        assert_eq!(r, Request::Misbehave { mode: super::super::Misbehaviour::Mix });
        let r: Request = serde_json::from_str(r#"{"cmd":"fetch","app":"web","version":"1.0.0"}"#).unwrap();
        assert_eq!(r, Request::Fetch { app: "web".into(), version: Some("1.0.0".into()) });
    }

    #[tokio::test]
    async fn serves_and_calls() {
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (tx, mut rx) = mpsc::channel::<Incoming>(4);
        tokio::spawn(serve(listener, tx));
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let _ = reply.send(match req {
                    Request::Status => Ok(serde_json::json!({"peer_id": "x"})),
                    Request::Fetch { .. } => Err(ApiError::not_yet("later")),
                    _ => Err("no".into()),
                });
            }
        });
        let v = call(&addr.to_string(), &Request::Status, Duration::from_secs(5)).await.unwrap();
        assert_eq!(v["peer_id"], "x");
        let e = call(&addr.to_string(), &Request::Announce { app: None }, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, ClientError::Node { kind: ErrorKind::Refused, message } if message == "no"));
        let fetch = Request::Fetch { app: "a".into(), version: None };
        let e = call(&addr.to_string(), &fetch, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, ClientError::Node { kind: ErrorKind::NotYet, message } if message == "later"));
    }
}
