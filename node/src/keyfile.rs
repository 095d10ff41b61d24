//! Secret key files: one tagged line of hex, mode 0600, never overwritten.

use mirage_protocol::Keypair;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("{0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
    #[error("cannot write key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("key file {path}: {source}")]
    Parse { path: PathBuf, source: mirage_protocol::identity::KeyError },
}

/// Creates a new key file with a fresh key. Fails if the file exists.
pub fn create(path: &Path) -> Result<Keypair, KeyFileError> {
    let keypair = Keypair::generate(&mut rand::rngs::OsRng);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.to_path_buf())
        } else {
            KeyFileError::Write { path: path.to_path_buf(), source: e }
        }
    })?;
    file.write_all(keypair.to_key_file().as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| KeyFileError::Write { path: path.to_path_buf(), source: e })?;
    Ok(keypair)
}

pub fn load(path: &Path) -> Result<Keypair, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeyFileError::Read { path: path.to_path_buf(), source: e })?;
    Keypair::from_key_file(&text).map_err(|e| KeyFileError::Parse { path: path.to_path_buf(), source: e })
}

/// Loads the key at `path`, creating it first if there is none (a node's first run).
pub fn load_or_create(path: &Path) -> Result<Keypair, KeyFileError> {
    match create(path) {
        Ok(k) => Ok(k),
        Err(KeyFileError::Exists(_)) => load(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_refuses_overwrite_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let k = create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(create(&path), Err(KeyFileError::Exists(_))));
        assert_eq!(load(&path).unwrap().public(), k.public());
        assert_eq!(load_or_create(&path).unwrap().public(), k.public());
    }

    #[test]
    fn corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "garbage").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn peer_id_matches_libp2p() {
        let k = Keypair::from_secret_bytes(&[42; 32]);
        let mut secret = k.secret_bytes();
        let lp = libp2p::identity::Keypair::ed25519_from_bytes(&mut secret).unwrap();
        assert_eq!(lp.public().to_peer_id().to_string(), k.public().peer_id());
        assert_eq!(lp.public().to_peer_id().to_bytes(), k.public().peer_id_bytes().to_vec());
    }
}
