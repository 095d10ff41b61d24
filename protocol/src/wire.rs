//! The wire encoding: one version byte, then bincode 2 (standard config).
//!
//! The size limit is checked before any decoding, and bincode is told the same limit so
//! that a length prefix inside the message cannot make it allocate more than the
//! message could hold. Garbage input yields an error, never a panic.

use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

/// The first byte of every encoded message. Bumped on incompatible changes.
pub const WIRE_VERSION: u8 = 1;

/// The largest message a peer accepts or sends (1 MiB). Manifests for multi-GiB
/// artifacts (32 bytes per 1 MiB chunk) and fingerprints of thousands of items fit.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("message is empty")]
    Empty,
    #[error("unsupported wire version {0} (this peer speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_MESSAGE_BYTES>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes `value` as `[WIRE_VERSION, bincode...]`, refusing results over the limit.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut out = vec![WIRE_VERSION];
    let body = bincode::serde::encode_to_vec(value, config()).map_err(|e| WireError::Encode(e.to_string()))?;
    out.extend_from_slice(&body);
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge { size: out.len(), limit: MAX_MESSAGE_BYTES });
    }
    Ok(out)
}

/// Decodes a message produced by [`encode`]. Checks size, then version, then decodes,
/// then requires that every byte was consumed.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge { size: bytes.len(), limit: MAX_MESSAGE_BYTES });
    }
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(body, config()).map_err(|e| WireError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::TrailingBytes(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Sample {
        name: String,
        items: Vec<(u32, Vec<u8>)>,
    }

    #[test]
    fn roundtrip() {
        let s = Sample { name: "mysql".into(), items: vec![(1, vec![1, 2, 3])] };
        let bytes = encode(&s).unwrap();
        assert_eq!(bytes[0], WIRE_VERSION);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), s);
    }

    #[test]
    fn rejects_oversized_before_decoding() {
        let bytes = vec![WIRE_VERSION; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(decode::<Sample>(&bytes), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn rejects_oversized_encode() {
        let s = Sample { name: "x".repeat(MAX_MESSAGE_BYTES), items: vec![] };
        assert!(matches!(encode(&s), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn rejects_wrong_version_and_trailing_bytes() {
        let s = Sample { name: "a".into(), items: vec![] };
        let mut bytes = encode(&s).unwrap();
        bytes[0] = 9;
        assert_eq!(decode::<Sample>(&bytes), Err(WireError::Version(9)));
        bytes[0] = WIRE_VERSION;
        bytes.push(0);
        assert_eq!(decode::<Sample>(&bytes), Err(WireError::TrailingBytes(1)));
        assert_eq!(decode::<Sample>(&[]), Err(WireError::Empty));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // A string claiming 2^60 bytes must fail on the limit, not try to allocate.
        let mut bytes = vec![WIRE_VERSION, 253];
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(decode::<Sample>(&bytes), Err(WireError::Decode(_))));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Sample>(&bytes);
            let _ = decode::<crate::envelope::Envelope>(&bytes);
            let _ = decode::<crate::fingerprint::Fingerprint>(&bytes);
        }

        #[test]
        fn roundtrip_any(name in ".{0,40}", items in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..20)), 0..10)) {
            let s = Sample { name, items };
            prop_assert_eq!(decode::<Sample>(&encode(&s).unwrap()).unwrap(), s);
        }
    }
}
