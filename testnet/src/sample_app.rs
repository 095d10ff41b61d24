//! A toy but honest "MySQL server" application for staged-deployment demos and e2e
//! tests: its releases are tar archives of POSIX `sh` scripts (tests run them in the
//! sandbox, which has the host's `/bin/sh`), and it comes with a vendor tests directory
//! in the format `node::release::read_tests` reads.
//!
//! The story, after a real MySQL 8.0 upgrade failure: every machine starts on
//! [`OLD_VERSION`]; [`BROKEN_VERSION`] removed the `query_cache_size` option, so its
//! `mysqld --validate-config` fails on machines whose my.cnf still sets it (the
//! environments of [`sample_root::sets_query_cache`](crate::sample_root::sets_query_cache));
//! [`FIXED_VERSION`], the vendor's fix, accepts the option with a deprecation warning
//! and ignores it.
//!
//! A release unpacks to:
//!
//! ```text
//! VERSION       the version, one line
//! bin/mysqld    --version | --validate-config FILE
//! bin/mysql     a toy client: SQL-ish statements on stdin, key=value results on stdout
//! ```
//!
//! The client answers `SELECT VERSION();`, `SELECT <n>+<m>;` and
//! `SHOW VARIABLES LIKE '<name>';` (read from `[mysqld]` of
//! `$MIRAGE_ROOT/etc/mysql/my.cnf`), and greets with `server_version=<version>`, the
//! one line that differs between versions and that the replay test ignores.

use std::fs::File;
use std::io;
use std::path::Path;

/// The app's name, as in `profiles/mysql.toml`.
pub const APP: &str = "mysql";
/// The version every sample machine starts with.
pub const OLD_VERSION: &str = "8.0.36";
/// The new release: it removed `query_cache_size` and fails where my.cnf sets it.
pub const BROKEN_VERSION: &str = "8.4.0";
/// The vendor's fix for [`BROKEN_VERSION`].
pub const FIXED_VERSION: &str = "8.4.1";
/// Every version [`write_release`] knows, oldest first.
pub const VERSIONS: [&str; 3] = [OLD_VERSION, BROKEN_VERSION, FIXED_VERSION];

/// Archive entries carry this mtime (and no owners), so a release is the same bytes
/// wherever and whenever it is built: its manifest hash must not depend on the build.
const MTIME: u64 = 1_700_000_000;

/// How a version treats the removed query cache options in `[mysqld]`.
#[derive(Clone, Copy)]
enum QueryCache {
    /// Still a known option (8.0.36 in this toy world).
    Accepted,
    /// Unknown: the config check fails, as real `mysqld` does for unknown variables.
    Removed,
    /// Known again, only to warn and ignore it.
    Deprecated,
}

fn query_cache(version: &str) -> Option<QueryCache> {
    match version {
        OLD_VERSION => Some(QueryCache::Accepted),
        BROKEN_VERSION => Some(QueryCache::Removed),
        FIXED_VERSION => Some(QueryCache::Deprecated),
        _ => None,
    }
}

/// Shared by both scripts: walks the `[mysqld]` options of a my.cnf. MySQL spells
/// option names with `-` or `_` alike, so keys come with `_` only; a callback returning
/// non-zero stops the walk (and makes it return 1).
const CNF_PARSER: &str = r#"
blank=" $(printf '\t')"
# each_mysqld_option FILE CALLBACK: calls `CALLBACK LINE_NO KEY VALUE` per option.
each_mysqld_option() {
    _n=0 _section=
    while IFS= read -r _line || [ -n "$_line" ]; do
        _n=$((_n + 1))
        _line=${_line#"${_line%%[!$blank]*}"}
        _line=${_line%"${_line##*[!$blank]}"}
        case $_line in
        '' | '#'* | ';'*) continue ;;
        '['*']') _section=${_line#?} _section=${_section%?}; continue ;;
        esac
        [ "$_section" = mysqld ] || continue
        _key=${_line%%=*}
        _key=${_key%"${_key##*[!$blank]}"}
        _value=
        case $_line in *=*) _value=${_line#*=} _value=${_value#"${_value%%[!$blank]*}"} ;; esac
        "$2" "$_n" "$(printf '%s' "$_key" | tr - _)" "$_value" || return 1
    done <"$1"
}
"#;

const MYSQLD: &str = r#"#!/bin/sh
# Toy mysqld (Mirage sample app): `--version`, and `--validate-config FILE`, which
# checks the [mysqld] options of FILE like `mysqld --validate-config` does: exit 0 when
# the server would start with them.
VERSION=@VERSION@
@CNF_PARSER@
check_option() {
    case $2 in
    query_cache_size | query_cache_type)
@QUERY_CACHE@
        ;;
    esac
}

case ${1-} in
--version)
    echo "mysqld  Ver $VERSION for Linux on x86_64 (Mirage sample)"
    ;;
--validate-config)
    config=${2-}
    if [ -z "$config" ] || [ ! -r "$config" ]; then
        echo "mysqld: [ERROR] cannot read config file '$config'" >&2
        exit 1
    fi
    if ! each_mysqld_option "$config" check_option; then
        echo "mysqld: [ERROR] Aborting" >&2
        exit 1
    fi
    ;;
*)
    echo "usage: mysqld --version | --validate-config FILE" >&2
    exit 2
    ;;
esac
"#;

const MYSQL: &str = r#"#!/bin/sh
# Toy mysql client (Mirage sample app): runs one statement per stdin line against the
# server configured in $MIRAGE_ROOT/etc/mysql/my.cnf and prints key=value results. Like
# `mysql` in batch mode, it stops at the first error with status 1.
VERSION=@VERSION@
CONFIG=${MIRAGE_ROOT-}/etc/mysql/my.cnf
@CNF_PARSER@
# lookup NAME: sets `value` to NAME's setting (the last one wins, as in MySQL).
match_option() {
    if [ "$2" = "$want" ]; then value=$3 found=1; fi
}
lookup() {
    want=$1 value= found=
    [ -r "$CONFIG" ] && each_mysqld_option "$CONFIG" match_option
    if [ -z "$found" ]; then
        case $1 in
        port) value=3306 found=1 ;;
        max_connections) value=151 found=1 ;;
        esac
    fi
    [ -n "$found" ]
}
syntax_error() {
    echo "ERROR 1064 (42000): You have an error in your SQL syntax near '$1'"
    exit 1
}

echo "server_version=$VERSION"
while IFS= read -r stmt || [ -n "$stmt" ]; do
    # Keywords and variable names are case-insensitive.
    stmt=$(printf '%s' "$stmt" | tr 'A-Z' 'a-z')
    stmt=${stmt#"${stmt%%[!$blank]*}"}
    stmt=${stmt%"${stmt##*[!$blank;]}"}
    case $stmt in
    '' | '--'*) ;;
    'select version()') echo "server_version=$VERSION" ;;
    'select '*+*)
        sum=${stmt#select } a=${sum%%+*} b=${sum#*+}
        # Plain decimals only: anything else must not reach shell arithmetic.
        for n in "$a" "$b"; do
            case $n in '' | *[!0-9]* | 0?*) syntax_error "$stmt" ;; esac
        done
        echo "$a+$b=$((a + b))"
        ;;
    "show variables like '"*"'")
        name=${stmt#"show variables like '"} name=${name%"'"}
        if lookup "$name"; then echo "$name=$value"; else echo "$name: empty set"; fi
        ;;
    *) syntax_error "$stmt" ;;
    esac
done
"#;

fn mysqld_script(version: &str, qc: QueryCache) -> String {
    let handling = match qc {
        QueryCache::Accepted => "        :",
        QueryCache::Removed => {
            "        echo \"mysqld: [ERROR] unknown variable '$2' ($config, line $1)\" >&2\n        return 1"
        }
        QueryCache::Deprecated => {
            "        echo \"mysqld: [Warning] '$2' is deprecated and ignored ($config, line $1)\" >&2"
        }
    };
    MYSQLD.replace("@CNF_PARSER@", CNF_PARSER).replace("@QUERY_CACHE@", handling).replace("@VERSION@", version)
}

fn mysql_script(version: &str) -> String {
    MYSQL.replace("@CNF_PARSER@", CNF_PARSER).replace("@VERSION@", version)
}

/// Writes release `version` (one of [`VERSIONS`]) as a tar at `out_tar`. The archive is
/// deterministic: sorted entries, fixed mtime, no owners, scripts mode 0755.
pub fn write_release(version: &str, out_tar: &Path) -> io::Result<()> {
    let qc = query_cache(version).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("no sample {APP} release {version}; known: {VERSIONS:?}"))
    })?;
    let mut entries = [
        ("VERSION", 0o644, format!("{version}\n")),
        ("bin/", 0o755, String::new()),
        ("bin/mysql", 0o755, mysql_script(version)),
        ("bin/mysqld", 0o755, mysqld_script(version, qc)),
    ];
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut builder = tar::Builder::new(File::create(out_tar)?);
    for (path, mode, data) in &entries {
        let mut header = tar::Header::new_gnu();
        let kind = if path.ends_with('/') { tar::EntryType::Directory } else { tar::EntryType::Regular };
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, path, data.as_bytes())?;
    }
    builder.into_inner()?.sync_all()
}

/// The vendor's tests. They run in the sandbox with the candidate version at
/// `$MIRAGE_APP_DIR` and the machine root (whose my.cnf the server would read) at
/// `$MIRAGE_ROOT`; the health check runs on the host with both set.
const TESTS_TOML: &str = r#"# Vendor tests for the Mirage sample MySQL server (mirage_testnet::sample_app).

# The server must accept this machine's configuration: this is what catches a release
# that dropped an option the machine still sets.
[[test]]
name = "config-validates"
run = ["sh", "-c", '"$MIRAGE_APP_DIR/bin/mysqld" --validate-config "$MIRAGE_ROOT/etc/mysql/my.cnf"']
timeout_secs = 30
max_output_bytes = 65536

# The binary runs and is the version it claims to be.
[[test]]
name = "starts"
run = ["sh", "-c", 'v=$(cat "$MIRAGE_APP_DIR/VERSION") && "$MIRAGE_APP_DIR/bin/mysqld" --version | grep -F "Ver $v "']
timeout_secs = 30
max_output_bytes = 65536

# Recorded client sessions must give the same results on the old and the new version.
[[replay]]
name = "queries"
inputs = "replay"
run = ["sh", "-c", '"$MIRAGE_APP_DIR/bin/mysql"']
ignore_fields = ["server_version"]
timeout_secs = 30
max_output_bytes = 65536

[health_check]
run = ["sh", "-c", '"$MIRAGE_APP_DIR/bin/mysqld" --validate-config "$MIRAGE_ROOT/etc/mysql/my.cnf"']
timeout_secs = 30
"#;

/// Recorded client sessions (file name, stdin), replayed through both versions.
const REPLAY_INPUTS: [(&str, &str); 2] = [
    (
        "001.sql",
        "-- connection check of a monitoring agent\nSELECT VERSION();\nSELECT 1+1;\nSHOW VARIABLES LIKE 'port';\n",
    ),
    (
        "002.sql",
        "-- an admin's session\nSHOW VARIABLES LIKE 'max_connections';\nshow variables like 'innodb_buffer_pool_size';\n\
         SHOW VARIABLES LIKE 'innodb_log_file_size';\nselect 40+2;\n",
    ),
];

/// Writes the vendor tests directory (`tests.toml` and `replay/*.sql`) into `dir`,
/// creating it if needed.
pub fn write_tests_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir.join("replay"))?;
    std::fs::write(dir.join("tests.toml"), TESTS_TOML)?;
    for (name, sql) in REPLAY_INPUTS {
        std::fs::write(dir.join("replay").join(name), sql)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
