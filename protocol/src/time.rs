//! Time as the core sees it: a number handed in by whoever drives the core.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Milliseconds since the Unix epoch. The core never reads a clock; the node passes
/// wall-clock time in, the simulator passes virtual time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// Later than any real time: "never".
    pub const MAX: UnixMillis = UnixMillis(u64::MAX);

    pub fn saturating_add(self, d: Duration) -> Self {
        UnixMillis(self.0.saturating_add(d.as_millis().min(u64::MAX as u128) as u64))
    }

    pub fn saturating_sub(self, d: Duration) -> Self {
        UnixMillis(self.0.saturating_sub(d.as_millis().min(u64::MAX as u128) as u64))
    }

    /// How far `self` lies after `earlier`; zero if it does not.
    pub fn since(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
