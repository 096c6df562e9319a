//! A throwaway `redis-server` for tests and benchmarks (feature `testing`): on a free
//! loopback port, in its own temporary directory, persisting nothing, killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long `redis-server` may take to answer PING after starting.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A running `redis-server` child process.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1 and waits until it answers PING.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not installed (the message names the Debian package), or does
    /// not answer within 20 s. Tests want exactly that.
    pub fn start() -> RedisServer {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mux-redis-{}-{n}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
        };
        server.restart();
        server
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs (for its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: as abrupt as a crash) and waits for it to exit. Its data
    /// is gone; [`RedisServer::restart`] starts an empty one on the same port.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (stopping it first if it runs) and waits
    /// until it answers PING.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn restart(&mut self) {
        self.stop();
        let started = Instant::now();
        loop {
            let child = Command::new("redis-server")
                .arg("--port")
                .arg(self.port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                    "redis-server is not installed: these tests need a real Redis; \
                     install Debian's `redis-server` package (apt-get install redis-server)"
                ),
                Err(e) => panic!("cannot start redis-server: {e}"),
            };
            loop {
                if ping(self.port) {
                    self.child = Some(child);
                    return;
                }
                // Exited: most likely the port is still held by the previous instance.
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if started.elapsed() > START_LIMIT {
                    let _ = child.kill();
                    panic!("redis-server did not answer PING on port {}", self.port);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if started.elapsed() > START_LIMIT {
                panic!("redis-server could not start on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `INFO commandstats`: calls per command (`evalsha`, `publish`, ...) since the server
    /// started or the last [`RedisServer::reset_stats`].
    pub fn command_calls(&self) -> std::collections::HashMap<String, u64> {
        command_calls(&self.url())
    }

    /// `CONFIG RESETSTAT`.
    pub fn reset_stats(&self) {
        reset_stats(&self.url());
    }

    /// Runs one command on a fresh blocking connection.
    ///
    /// # Panics
    ///
    /// If Redis does not answer as `T`.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        query(&self.url(), cmd)
    }
}

/// `INFO commandstats` of the Redis at `url`: calls per command (`evalsha`, `publish`, ...)
/// since it started or the last [`reset_stats`]. Commands that scripts run are counted too.
///
/// # Panics
///
/// If Redis does not answer.
pub fn command_calls(url: &str) -> std::collections::HashMap<String, u64> {
    let info: String = query(url, redis::cmd("INFO").arg("commandstats"));
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, fields) = rest.split_once(':')?;
            let calls = fields.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// `CONFIG RESETSTAT` on the Redis at `url`.
///
/// # Panics
///
/// If Redis does not answer.
pub fn reset_stats(url: &str) {
    let _: String = query(url, redis::cmd("CONFIG").arg("RESETSTAT"));
}

/// Runs one command on a fresh blocking connection to `url`.
///
/// # Panics
///
/// If Redis does not answer as `T`.
pub fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> T {
    let client = match redis::Client::open(url) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    match client
        .get_connection_with_timeout(Duration::from_secs(5))
        .and_then(|mut con| cmd.query(&mut con))
    {
        Ok(v) => v,
        Err(e) => panic!("redis query failed: {e}"),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free a moment ago (the OS picks it; redis-server binds it next).
fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("no free loopback port: {e}"),
    }
}

/// PING over a plain socket (RESP inline), so waiting needs no client library state.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
