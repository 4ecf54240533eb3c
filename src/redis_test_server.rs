//! Test equipment: a `redis-server` of a test's own, for the tests of the Redis cache and the
//! Redis rate limiter.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// Longest the harness waits for a server to answer or a port to free up: it only catches a
/// hang.
const HANG: Duration = Duration::from_secs(20);

/// A `redis-server` of the test's own, killed when dropped.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    process: Child,
}

impl RedisServer {
    /// Starts a server on a free port. The port is free when picked but not held: should
    /// another process take it first, redis-server exits and another port is tried.
    pub(crate) fn start() -> Self {
        for _ in 0..10 {
            if let Some(server) = Self::try_start_on(free_port()) {
                return server;
            }
        }
        panic!("redis-server could not listen on any of 10 free ports");
    }

    /// Starts a server on `port`, which a server of the test listened on before: it waits
    /// while another process holds the port.
    pub(crate) fn start_on(port: u16) -> Self {
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(server) = Self::try_start_on(port) {
                return server;
            }
            assert!(Instant::now() < deadline, "port {port} stayed taken");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a server on `port`; `None` when it exits before answering, as it does when
    /// the port is taken.
    fn try_start_on(port: u16) -> Option<Self> {
        assert!(
            Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: the redis cache tests need a real Redis \
             (apt-get install redis-server)"
        );
        let process = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let mut server = RedisServer { port, process };
        server.wait_until_it_answers().then_some(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Waits until the server answers PING; false when it exited first.
    fn wait_until_it_answers(&mut self) -> bool {
        let deadline = Instant::now() + HANG;
        while !answers_ping(self.port) {
            if let Ok(Some(_)) = self.process.try_wait() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} never answered PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    pub(crate) fn kill(&mut self) {
        // Errors mean the process is gone already.
        self.process.kill().ok();
        self.process.wait().ok();
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.process.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on now (it may be taken by the time it is used).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut reply = [0; 7];
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .is_ok()
        && stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}
