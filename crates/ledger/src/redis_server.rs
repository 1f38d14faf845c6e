//! A throwaway redis-server for the scripts' tests: the scripts are Lua that only Redis runs, so
//! only Redis can say whether they take the keys and arguments this crate derives for them.
//!
//! It listens on a Unix socket in its own directory (no port to pick or collide on), keeps
//! nothing on disk, and is killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long redis-server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(10);

pub struct RedisServer {
    dir: PathBuf,
    process: Child,
}

impl RedisServer {
    pub fn start() -> Self {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ledger-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let socket = dir.join("redis.sock");
        let process = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        let server = Self { dir, process };
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                started.elapsed() < START_DEADLINE,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// A connection to it.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let url = format!("redis+unix://{}", self.dir.join("redis.sock").display());
        let client = redis::Client::open(url).expect("a Unix socket URL");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("redis-server accepts connections")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
