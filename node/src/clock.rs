//! The one place the node reads the wall clock; the core only ever sees the result.

use mirage_protocol::UnixMillis;
use std::time::SystemTime;

pub fn now() -> UnixMillis {
    UnixMillis(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
}
