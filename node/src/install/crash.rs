//! Fault injection for crash-safety tests: named points in the install steps where a
//! test can make the operation stop as if the process had died there.
//!
//! Two ways to arm a point:
//! - in-process, [`super::Installer::inject_crash`]: the operation returns
//!   `InstallError::Crashed` at the point, leaving disk and journal as a crash would;
//! - across processes, the environment variable `MIRAGE_TEST_CRASH_AT=<point>` (or
//!   `<point>:<n>` for the n-th time the point is reached): read when `apply` starts,
//!   and the process calls `std::process::abort()` at the point. Only read by builds
//!   with the `test-hooks` feature (and unit tests); the shipped binary ignores it.

use std::fmt;
use thiserror::Error;

pub const CRASH_ENV: &str = "MIRAGE_TEST_CRASH_AT";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrashPoint {
    /// The artifact is unpacked in the `.partial` directory, not yet renamed.
    Unpacked,
    /// The version directory is in place.
    Prepared,
    /// The journal records the apply (before any switch).
    ApplyIntent,
    /// The journal records a switch of `current`.
    SwitchIntent,
    /// `current.tmp` points at the target.
    TmpLink,
    /// `current` has been replaced (the directory not yet synced).
    Renamed,
    /// The journal records the switch as done.
    SwitchDone,
    /// The health check ran; its verdict is not acted on yet.
    HealthChecked,
    /// The journal records the apply as finished.
    ApplyDone,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 9] = [
        CrashPoint::Unpacked,
        CrashPoint::Prepared,
        CrashPoint::ApplyIntent,
        CrashPoint::SwitchIntent,
        CrashPoint::TmpLink,
        CrashPoint::Renamed,
        CrashPoint::SwitchDone,
        CrashPoint::HealthChecked,
        CrashPoint::ApplyDone,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::Unpacked => "unpacked",
            CrashPoint::Prepared => "prepared",
            CrashPoint::ApplyIntent => "apply-intent",
            CrashPoint::SwitchIntent => "switch-intent",
            CrashPoint::TmpLink => "tmp-link",
            CrashPoint::Renamed => "renamed",
            CrashPoint::SwitchDone => "switch-done",
            CrashPoint::HealthChecked => "health-checked",
            CrashPoint::ApplyDone => "apply-done",
        }
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Return `InstallError::Crashed` (in-process tests).
    Return,
    /// `std::process::abort()` (cross-process tests).
    Abort,
}

/// A [`CRASH_ENV`] value that names no plan.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CrashPlanError {
    #[error("{CRASH_ENV}: bad count in `{0}` (expected <point>:<n>)")]
    BadCount(String),
    #[error("{CRASH_ENV}: unknown point `{name}` (one of {known})")]
    UnknownPoint { name: String, known: String },
}

/// An armed point: fire the `nth` time (1-based) the point is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashPlan {
    pub point: CrashPoint,
    pub nth: u32,
    pub mode: CrashMode,
    pub hits: u32,
}

impl CrashPlan {
    /// Parses `<point>` or `<point>:<n>`.
    pub fn parse_env(value: &str) -> Result<CrashPlan, CrashPlanError> {
        let (name, nth) = match value.split_once(':') {
            Some((name, n)) => (name, n.parse::<u32>().map_err(|_| CrashPlanError::BadCount(value.into()))?),
            None => (value, 1),
        };
        let point = CrashPoint::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| {
            let names: Vec<_> = CrashPoint::ALL.iter().map(|p| p.name()).collect();
            CrashPlanError::UnknownPoint { name: name.into(), known: names.join(", ") }
        })?;
        Ok(CrashPlan { point, nth, mode: CrashMode::Abort, hits: 0 })
    }

    /// Counts a visit to `point`; true when the plan fires.
    pub fn hit(&mut self, point: CrashPoint) -> bool {
        if point != self.point {
            return false;
        }
        self.hits += 1;
        self.hits == self.nth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_plans_parse() {
        let p = CrashPlan::parse_env("renamed:2").unwrap();
        assert_eq!((p.point, p.nth, p.mode), (CrashPoint::Renamed, 2, CrashMode::Abort));
        assert_eq!(CrashPlan::parse_env("tmp-link").unwrap().nth, 1);
        assert!(CrashPlan::parse_env("nowhere").unwrap_err().to_string().contains("switch-intent"));
        assert_eq!(CrashPlan::parse_env("renamed:x"), Err(CrashPlanError::BadCount("renamed:x".into())));
        let mut p = CrashPlan::parse_env("renamed:2").unwrap();
        assert!(!p.hit(CrashPoint::Renamed) && !p.hit(CrashPoint::TmpLink) && p.hit(CrashPoint::Renamed));
    }
}
