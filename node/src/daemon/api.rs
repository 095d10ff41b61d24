//! The local control API: line-delimited JSON, one request and one reply per line.
//!
//! Always on a Unix socket in the data directory (`api.sock`), mode 0600, or 0660 with
//! a group the operator names: the file's permission is the authentication. Optionally
//! on TCP too, where every connection first presents a token read from a file the node
//! keeps (`api.token`, 0600): a web page in a browser on the same machine can send
//! bytes to a loopback port, but it cannot read the token, and a line that looks like
//! HTTP closes the connection unanswered.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use mirage_protocol::control::looks_like_http;
pub use mirage_protocol::control::{ErrorKind, Hello, InjectKind, Misbehaviour, Request, MAX_REQUEST_LINE};

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

/// The secret a TCP caller presents: 32 random bytes, hex, in a 0600 file.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// The token in `path`, made there (0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> std::io::Result<ApiToken> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        match ApiToken::read(path) {
            Ok(t) => return Ok(t),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
        }
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let token = hex::encode(bytes);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(ApiToken(token))
    }

    pub fn read(path: &Path) -> std::io::Result<ApiToken> {
        let text = std::fs::read_to_string(path)?;
        let token = text.trim();
        if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds no API token (32+ hex digits)", path.display()),
            ));
        }
        Ok(ApiToken(token.to_string()))
    }

    /// Compared in time independent of where the two first differ.
    fn matches(&self, offered: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), offered.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Binds the TCP endpoint. Returns the bound address (the port may have been 0).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Longest socket path the kernel takes (`sun_path` less its terminating zero).
const MAX_SOCKET_PATH: usize = 107;

/// Binds the Unix socket at `path`, readable and writable by its owner only, or also by
/// `group` (a gid). A socket left by a node that died is replaced; one that answers
/// belongs to a running node, and binding fails.
pub async fn bind_unix(path: &Path, group: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    if path.as_os_str().as_bytes().len() > MAX_SOCKET_PATH {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("socket path is over {MAX_SOCKET_PATH} bytes: choose a shorter --api-socket"),
        ));
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "another node answers on this socket"));
        }
        std::fs::remove_file(path)?;
    }
    // Made under a name nobody knows, given its mode, then renamed into place: there is
    // no moment when the socket is at its path with wider permissions.
    let mut suffix = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
    let tmp = path.with_file_name(format!(".api-{}.sock", hex::encode(suffix)));
    let listener = UnixListener::bind(&tmp)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(&tmp, None, Some(gid))?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

/// The gid of a group by name.
pub fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam(3) reads a NUL-terminated name; the returned record is only read
    // here, before any other call that could reuse its storage.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

/// Serves the Unix socket until the receiver side of `tx` is gone.
pub async fn serve_unix(listener: UnixListener, tx: mpsc::Sender<Incoming>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, write) = stream.into_split();
            if let Err(e) = handle(read, write, tx, None).await {
                debug!(error = %e, "api connection ended");
            }
        });
    }
}

/// Serves TCP connections that present `token` until the receiver side of `tx` is gone.
pub async fn serve(listener: TcpListener, token: ApiToken, tx: mpsc::Sender<Incoming>) {
    let token = Arc::new(token);
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let (tx, token) = (tx.clone(), token.clone());
        tokio::spawn(async move {
            let (read, write) = stream.into_split();
            if let Err(e) = handle(read, write, tx, Some(&token)).await {
                debug!(%peer, error = %e, "api connection ended");
            }
        });
    }
}

async fn handle(
    read: impl AsyncRead + Unpin,
    mut write: impl AsyncWrite + Unpin,
    tx: mpsc::Sender<Incoming>,
    token: Option<&ApiToken>,
) -> std::io::Result<()> {
    let mut lines = BufReader::new(read.take(MAX_REQUEST_LINE)).lines();
    if let Some(token) = token {
        let Some(first) = lines.next_line().await? else { return Ok(()) };
        if looks_like_http(&first) {
            warn!("refused an HTTP request on the control API (a web page?)");
            return Ok(());
        }
        let authenticated = Hello::parse(&first).is_some_and(|h| token.matches(&h.token));
        let body = if authenticated {
            serde_json::json!({ "ok": "authenticated" })
        } else {
            warn!("refused a control API connection without the token");
            serde_json::json!({ "error": "unauthorized: send {\"token\": ...} from the node's api.token first", "kind": ErrorKind::Refused })
        };
        write_line(&mut write, &body).await?;
        if !authenticated {
            return Ok(());
        }
    }
    while let Some(line) = lines.next_line().await? {
        let reply: Reply = match Request::parse(&line) {
            Err(e) => Err(e.to_string().into()),
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
        write_line(&mut write, &body).await?;
    }
    Ok(())
}

async fn write_line(write: &mut (impl AsyncWrite + Unpin), body: &serde_json::Value) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(body).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
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

/// Where a node's API is, for a client.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { addr: String, token: ApiToken },
}

impl Endpoint {
    /// The node whose data directory is `dir`: its socket.
    pub fn of_data_dir(dir: &Path) -> Endpoint {
        Endpoint::Unix(dir.join(super::API_SOCKET_FILE))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp { addr, .. } => f.write_str(addr),
        }
    }
}

/// Sends one request to a node's API and returns its reply.
pub async fn call(endpoint: &Endpoint, request: &Request, timeout: Duration) -> Result<serde_json::Value, ClientError> {
    let connect_err = |e| ClientError::Connect { addr: endpoint.to_string(), source: e };
    let work = async {
        match endpoint {
            Endpoint::Unix(path) => {
                let (read, write) = UnixStream::connect(path).await.map_err(connect_err)?.into_split();
                exchange(BufReader::new(read).lines(), write, None, request).await
            }
            Endpoint::Tcp { addr, token } => {
                let (read, write) = TcpStream::connect(addr).await.map_err(connect_err)?.into_split();
                exchange(BufReader::new(read).lines(), write, Some(token), request).await
            }
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| ClientError::Timeout(timeout))?
}

async fn exchange<R: tokio::io::AsyncBufRead + Unpin>(
    mut lines: tokio::io::Lines<R>,
    mut write: impl AsyncWrite + Unpin,
    token: Option<&ApiToken>,
    request: &Request,
) -> Result<serde_json::Value, ClientError> {
    if let Some(token) = token {
        write_line(&mut write, &serde_json::json!({ "token": token.0 })).await?;
        reply(&mut lines).await?;
    }
    write_line(&mut write, &serde_json::to_value(request).map_err(|e| ClientError::BadReply(e.to_string()))?).await?;
    reply(&mut lines).await
}

async fn reply<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
) -> Result<serde_json::Value, ClientError> {
    let reply = lines.next_line().await?.ok_or_else(|| ClientError::BadReply("connection closed".into()))?;
    let mut v: serde_json::Value = serde_json::from_str(&reply).map_err(|e| ClientError::BadReply(e.to_string()))?;
    if let Some(e) = v.get("error") {
        // A node from before error kinds said nothing of it: take it as final.
        let kind = v.get("kind").and_then(|k| serde_json::from_value(k.clone()).ok()).unwrap_or(ErrorKind::Refused);
        return Err(ClientError::Node { kind, message: e.as_str().unwrap_or_default().to_string() });
    }
    v.get_mut("ok").map(serde_json::Value::take).ok_or(ClientError::BadReply(reply))
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
        assert_eq!(r, Request::Misbehave { mode: Misbehaviour::Mix });
        let r: Request = serde_json::from_str(r#"{"cmd":"fetch","app":"web","version":"1.0.0"}"#).unwrap();
        assert_eq!(r, Request::Fetch { app: "web".into(), version: Some("1.0.0".into()) });
    }

    /// Answers status, refuses fetches for now, and counts what reached the node.
    fn node(mut rx: mpsc::Receiver<Incoming>) -> Arc<std::sync::atomic::AtomicUsize> {
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = reply.send(match req {
                    Request::Status => Ok(serde_json::json!({"peer_id": "x"})),
                    Request::Fetch { .. } => Err(ApiError::not_yet("later")),
                    _ => Err("no".into()),
                });
            }
        });
        seen
    }

    #[tokio::test]
    async fn serves_and_calls_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = bind_unix(&path, None).await.unwrap();
        let (tx, rx) = mpsc::channel::<Incoming>(4);
        tokio::spawn(serve_unix(listener, tx));
        node(rx);
        let at = Endpoint::Unix(path.clone());
        let v = call(&at, &Request::Status, Duration::from_secs(5)).await.unwrap();
        assert_eq!(v["peer_id"], "x");
        let e = call(&at, &Request::Announce { app: None }, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, ClientError::Node { kind: ErrorKind::Refused, message } if message == "no"));
        let fetch = Request::Fetch { app: "a".into(), version: None };
        let e = call(&at, &fetch, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, ClientError::Node { kind: ErrorKind::NotYet, message } if message == "later"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A second node on the same socket is refused; a dead node's socket is replaced.
        assert_eq!(bind_unix(&path, None).await.unwrap_err().kind(), std::io::ErrorKind::AddrInUse);
    }

    /// Connects to `path` as uid/gid 65534 (needs root): whether it got in.
    fn connects_as_nobody(path: &Path) -> bool {
        use std::os::unix::process::CommandExt;
        let script = format!("import socket; socket.socket(socket.AF_UNIX).connect({:?})", path.display().to_string());
        let out = std::process::Command::new("python3").args(["-c", &script]).uid(65534).gid(65534).output().unwrap();
        out.status.success()
    }

    #[tokio::test]
    async fn the_socket_refuses_other_users_unless_they_are_in_its_group() {
        // SAFETY: geteuid(2) has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test switches users: run it as root");
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        // The directory lets anyone through: only the socket's own mode keeps them out.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let private = dir.path().join("private.sock");
        let (tx, rx) = mpsc::channel::<Incoming>(4);
        tokio::spawn(serve_unix(bind_unix(&private, None).await.unwrap(), tx));
        let seen = node(rx);
        let shared = dir.path().join("shared.sock");
        let (tx, rx) = mpsc::channel::<Incoming>(4);
        tokio::spawn(serve_unix(bind_unix(&shared, Some(65534)).await.unwrap(), tx));
        node(rx);
        let (a, b) = (private.clone(), shared.clone());
        let (private_ok, shared_ok) =
            tokio::task::spawn_blocking(move || (connects_as_nobody(&a), connects_as_nobody(&b))).await.unwrap();
        assert!(!private_ok, "another user reached a 0600 socket");
        assert!(shared_ok, "a member of the socket's group was kept out");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn tcp_callers_need_the_token_and_a_browsers_request_gets_nothing() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let token = ApiToken::load_or_create(&dir.path().join("api.token")).unwrap();
        assert!(ApiToken::read(&dir.path().join("api.token")).unwrap().matches(&token.0));
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (tx, rx) = mpsc::channel::<Incoming>(4);
        tokio::spawn(serve(listener, token.clone(), tx));
        let seen = node(rx);
        let good = Endpoint::Tcp { addr: addr.to_string(), token: token.clone() };
        assert_eq!(call(&good, &Request::Status, Duration::from_secs(5)).await.unwrap()["peer_id"], "x");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);

        let wrong = Endpoint::Tcp { addr: addr.to_string(), token: ApiToken("00".repeat(32)) };
        let e = call(&wrong, &Request::Status, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&e, ClientError::Node { message, .. } if message.starts_with("unauthorized")), "{e}");

        // What a web page's fetch() or form sends to a loopback port, and a request
        // with no token: neither reaches the node.
        let attempts = [
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\r\n{\"cmd\":\"rollback\",\"app\":\"mysql\"}\n",
            "{\"cmd\":\"rollback\",\"app\":\"mysql\"}\n{\"cmd\":\"status\"}\n",
        ];
        for (i, attempt) in attempts.iter().enumerate() {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(attempt.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            if i == 0 {
                assert_eq!(answer, "", "an HTTP request was answered");
            } else {
                assert!(answer.contains("unauthorized") && !answer.contains("peer_id"), "{answer}");
            }
        }
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1, "a request without the token reached the node");
    }
}
