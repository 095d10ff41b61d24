//! ed25519 identities: the key pair a node or vendor signs with, its public key, and the
//! libp2p peer id that public key maps to.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// First token of a key file; lets a wrong file be told apart from a corrupt one.
const KEY_FILE_TAG: &str = "mirage-ed25519-secret-v1";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a Mirage key file (expected a line `{KEY_FILE_TAG} <64 hex chars>`)")]
    NotAKeyFile,
    #[error("key is not valid hex of 32 bytes")]
    BadHex,
    #[error("public key is not a valid ed25519 point")]
    BadPublicKey,
}

/// A secret signing key. Its `Debug` shows only the public half, so it cannot leak
/// into logs by accident.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair(public: {})", self.public().to_hex())
    }
}

impl Keypair {
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Keypair { signing: SigningKey::generate(rng) }
    }

    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Keypair { signing: SigningKey::from_bytes(secret) }
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.signing.sign(message).to_bytes())
    }

    /// The X25519 secret of the same key (libsodium's ed25519-to-curve25519): what
    /// opens a box sealed to [`PublicKey::x25519`].
    pub fn x25519_secret(&self) -> [u8; 32] {
        self.signing.to_scalar_bytes()
    }

    /// The text stored in a key file: one tagged line of hex.
    pub fn to_key_file(&self) -> String {
        format!("{KEY_FILE_TAG} {}\n", hex::encode(self.secret_bytes()))
    }

    pub fn from_key_file(text: &str) -> Result<Self, KeyError> {
        let mut parts = text.split_whitespace();
        if parts.next() != Some(KEY_FILE_TAG) {
            return Err(KeyError::NotAKeyFile);
        }
        let hex_part = parts.next().ok_or(KeyError::NotAKeyFile)?;
        if parts.next().is_some() {
            return Err(KeyError::NotAKeyFile);
        }
        let mut secret = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut secret).map_err(|_| KeyError::BadHex)?;
        Ok(Self::from_secret_bytes(&secret))
    }
}

/// An ed25519 public key, shown as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

/// Hash maps key on the first 16 bytes only: they are uniform already (a hash, or a
/// key), and a map's keyed hasher keeps them unpredictable, so no one can make many
/// of them collide; hashing all 32 cost the 1,000,000-machine simulation a tenth of
/// its time.
impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let head: [u8; 16] = self.0[..16].try_into().expect("16 of 32 bytes");
        state.write_u128(u128::from_le_bytes(head));
    }
}

impl PublicKey {
    /// The X25519 public key of the same key (its Montgomery form), to seal to.
    pub fn x25519(&self) -> Option<[u8; 32]> {
        VerifyingKey::from_bytes(&self.0).ok().map(|k| k.to_montgomery().to_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Checks an ed25519 signature strictly (no malleable or small-order forms).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig).is_ok()
    }

    /// The libp2p peer id bytes: an identity multihash of the protobuf-encoded key
    /// (`KeyType = Ed25519 (1)`, `Data = 32 bytes`). Keys this short are not hashed.
    pub fn peer_id_bytes(&self) -> [u8; 38] {
        let mut out = [0u8; 38];
        out[..6].copy_from_slice(&[0x00, 36, 0x08, 0x01, 0x12, 32]);
        out[6..].copy_from_slice(&self.0);
        out
    }

    /// The libp2p peer id in its usual base58 form (`12D3KooW...`).
    pub fn peer_id(&self) -> String {
        bs58::encode(self.peer_id_bytes()).into_string()
    }

    /// Recovers the public key from a base58 ed25519 peer id.
    pub fn from_peer_id(peer_id: &str) -> Option<Self> {
        let bytes = bs58::decode(peer_id).into_vec().ok()?;
        if bytes.len() != 38 || bytes[..6] != [0x00, 36, 0x08, 0x01, 0x12, 32] {
            return None;
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[6..]);
        Some(PublicKey(key))
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut key).map_err(|_| KeyError::BadHex)?;
        VerifyingKey::from_bytes(&key).map_err(|_| KeyError::BadPublicKey)?;
        Ok(PublicKey(key))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &self.to_hex()[..12])
    }
}

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..8]))
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        let arr: [u8; 64] =
            bytes.try_into().map_err(|v: Vec<u8>| serde::de::Error::invalid_length(v.len(), &"64 signature bytes"))?;
        Ok(Signature(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair(seed: u8) -> Keypair {
        Keypair::from_secret_bytes(&[seed; 32])
    }

    #[test]
    fn key_file_roundtrip_and_errors() {
        let kp = keypair(7);
        let back = Keypair::from_key_file(&kp.to_key_file()).unwrap();
        assert_eq!(back.public(), kp.public());
        assert_eq!(Keypair::from_key_file("hello").err(), Some(KeyError::NotAKeyFile));
        assert_eq!(Keypair::from_key_file(&format!("{KEY_FILE_TAG} zz")).err(), Some(KeyError::BadHex));
        assert_eq!(Keypair::from_key_file(&format!("{KEY_FILE_TAG} 00 11")).err(), Some(KeyError::NotAKeyFile));
    }

    #[test]
    fn sign_and_verify() {
        let kp = keypair(1);
        let sig = kp.sign(b"hello");
        assert!(kp.public().verify(b"hello", &sig));
        assert!(!kp.public().verify(b"hellp", &sig));
        assert!(!keypair(2).public().verify(b"hello", &sig));
    }

    #[test]
    fn peer_id_has_libp2p_shape_and_roundtrips() {
        let pk = keypair(3).public();
        let id = pk.peer_id();
        assert!(id.starts_with("12D3KooW"), "{id}");
        assert_eq!(PublicKey::from_peer_id(&id), Some(pk));
        assert_eq!(PublicKey::from_peer_id("12D3KooWnotreal"), None);
    }

    #[test]
    fn public_key_parse() {
        let pk = keypair(4).public();
        assert_eq!(pk.to_hex().parse::<PublicKey>().unwrap(), pk);
        assert!("abcd".parse::<PublicKey>().is_err());
    }
}
