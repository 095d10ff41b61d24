//! Generated machine roots for testnets, benchmarks and tests: small Debian-like
//! filesystems carrying a MySQL installation whose environment is chosen by number and
//! whose host-specific noise (hostname, addresses, machine id, logs, comments, line
//! order) is chosen by the host index. Machines with the same `environment` must land
//! in the same cluster whatever their `host`.
//!
//! Environments `e` with `e % 3 == 2` (2, 5, 8, ...) are the *breaking* ones for the
//! [`sample_app`](crate::sample_app) upgrade: their `my.cnf` still sets
//! `query_cache_size = 16M` in `[mysqld]`, an option the sample 8.4.0 release removed
//! (as MySQL 8.0 really did), so 8.4.0 fails its config check there and only there.
//! They also link a different client library build. The option is part of the
//! environment, not host noise: every host of such an environment has it.

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The environment a generated machine has. Each variant changes something an upgrade
/// may meet: a config value, a library build, an extra config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleMachine {
    pub environment: u32,
    pub host: u32,
}

impl SampleMachine {
    pub fn hostname(&self) -> String {
        format!("host{}-e{}", self.host, self.environment)
    }
}

/// Whether machines of `environment` set `query_cache_size` in my.cnf (see the module
/// doc): the environments where the sample 8.4.0 release fails.
pub fn sets_query_cache(environment: u32) -> bool {
    environment % 3 == 2
}

fn write_old(root: &Path, logical: &str, contents: &[u8]) -> io::Result<()> {
    let path = root.join(logical.trim_start_matches('/'));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, contents)?;
    // Real machines' files are old; freshly written ones would be (rightly) too racy
    // for the digest cache.
    let old = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&path)?.set_modified(old)
}

/// Writes `machine` under `root` (which may already exist).
pub fn write_mysql_machine(root: &Path, machine: &SampleMachine) -> io::Result<()> {
    let env = machine.environment;
    let host = machine.host;
    let hostname = machine.hostname();
    write_old(root, "/etc/hostname", format!("{hostname}\n").as_bytes())?;
    write_old(root, "/etc/machine-id", format!("{:032x}\n", 0x5eed_0000_u128 + host as u128 * 7919).as_bytes())?;
    write_old(root, "/etc/environment", b"LANG=C.UTF-8\nTZ=UTC\n")?;
    write_old(root, "/usr/sbin/mysqld", b"\x7fELF mysqld 8.0.36 (generated)")?;
    write_old(root, "/usr/bin/mysql", b"\x7fELF mysql client 8.0.36")?;
    // Environments 2, 5, 8... link against a different client library build.
    let lib = format!("\x7fELF libmysqlclient.so.21 build {}", env % 3 == 2);
    write_old(root, "/usr/lib/x86_64-linux-gnu/libmysqlclient.so.21", lib.as_bytes())?;

    let mut settings = vec![
        format!("bind-address = 10.{}.{}.{}", host % 200, (host / 200) % 250, 1 + host % 250),
        format!("report_host = {hostname}"),
        format!("server-id = {}", 100 + host),
        format!("pid-file = /run/mysqld/{hostname}.pid"),
        "port = 3306".to_string(),
        format!("innodb_buffer_pool_size = {}M", 128 << (env % 4)),
        format!("max_connections = {}", 100 + 50 * (env / 4)),
    ];
    // A setting left over from an older MySQL; it breaks the 8.4.0 sample release.
    if sets_query_cache(env) {
        settings.push("query_cache_size = 16M".to_string());
    }
    // Line order and comments differ per host; they must not matter.
    if host % 2 == 1 {
        settings.reverse();
    }
    let mut cnf = String::from("# Generated for a Mirage testnet\n[mysqld]\n");
    for (i, line) in settings.iter().enumerate() {
        if (i as u32 + host).is_multiple_of(3) {
            cnf.push_str(&format!("# edited by admin on host {host}\n\n"));
        }
        cnf.push_str(line);
        cnf.push('\n');
    }
    write_old(root, "/etc/mysql/my.cnf", cnf.as_bytes())?;
    write_old(root, "/var/lib/mysql/ibdata1", b"innodb system tablespace")?;
    write_old(
        root,
        "/var/lib/mysql/auto.cnf",
        format!("[auto]\nserver-uuid={:08x}-0000-4000-8000-{:012x}\n", host, host).as_bytes(),
    )?;
    write_old(
        root,
        "/var/log/mysql/error.log",
        format!("2026-11-23T10:{:02}:00Z 0 [System] mysqld ready on {hostname}\n", host % 60).as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The breaking option is environment, not host noise: every host of a breaking
    /// environment has it in `[mysqld]`, no host of another environment does.
    #[test]
    fn query_cache_follows_the_environment_only() {
        let dir = tempfile::tempdir().unwrap();
        for environment in 0..6 {
            for host in 0..4 {
                let root = dir.path().join(format!("e{environment}h{host}"));
                write_mysql_machine(&root, &SampleMachine { environment, host }).unwrap();
                let cnf = std::fs::read_to_string(root.join("etc/mysql/my.cnf")).unwrap();
                let has = cnf.lines().any(|l| l == "query_cache_size = 16M");
                assert_eq!(has, sets_query_cache(environment), "env {environment} host {host}:\n{cnf}");
                // Only one section, so every option line is in [mysqld].
                assert_eq!(cnf.matches('[').count(), 1);
            }
        }
    }
}
