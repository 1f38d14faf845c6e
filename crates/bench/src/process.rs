//! The processes a benchmark runs: the four services, the floor and redis-server, started on
//! loopback, the load tools run to completion, and what the kernel says about them (resident
//! memory, CPU time, time from SIGTERM to exit).
//!
//! Each process logs to its own file under the output directory rather than to a pipe: a pipe
//! would need a reader thread competing for the two cores, and the files stay behind to read when
//! a number looks wrong. Services bind `127.0.0.1:0` and log `listening addr=…`, which is how the
//! harness learns their ports without guessing.
//!
//! `tests/support` spawns processes its own way on purpose: it pipes every line into the test's
//! output, where a failure is read, and panics; this one writes files and returns errors.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a process may take to start and say it is ready.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a process may take to exit after SIGTERM before it is killed (and the run fails).
const EXIT_DEADLINE: Duration = Duration::from_secs(5);
/// Linux reports CPU times in USER_HZ, which is 100 on every architecture's user ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// A process started by the harness; killed when dropped, so a failed run leaves nothing behind.
pub struct Running {
    pub name: String,
    child: Child,
    log: PathBuf,
    exited: bool,
}

impl Running {
    /// Starts `program` with `args` and `env` (plus `RUST_LOG=info`, the services' default), its
    /// stdout and stderr in `<log_dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
            exited: false,
        })
    }

    /// Waits until the log holds a line containing `needle`, and returns that line.
    pub fn wait_for_log(&mut self, needle: &str) -> anyhow::Result<String> {
        self.wait_for_line(needle, |line| line.contains(needle))
    }

    /// Waits until the log holds a line that `wanted` accepts (`needle` names it in errors), and
    /// returns that line.
    fn wait_for_line(
        &mut self,
        needle: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|line| wanted(line)) {
                return Ok(line.to_string());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before logging {needle:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if started.elapsed() > START_DEADLINE {
                bail!(
                    "{} did not log {needle:?} within {START_DEADLINE:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address of the first `listening addr=…` line of the service port (the admin
    /// listener's lines carry the span `admin:`).
    pub fn listening_addr(&mut self) -> anyhow::Result<SocketAddr> {
        let line = self.wait_for_line("listening addr=", |line| {
            line.contains("listening addr=") && !line.contains("admin:")
        })?;
        line.split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .with_context(|| format!("no address in {line:?}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now and at its peak so far.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory(self.pid())
    }

    /// CPU time used so far (user and system, every thread).
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_time(&format!("/proc/{}/stat", self.pid()))
    }

    /// Sends `signal` (SIGINT to stop wrk and have it print its results).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.pid() as i32), signal)
            .with_context(|| format!("signal {}", self.name))
    }

    /// Sends SIGTERM and returns how long the process took to exit. A process still running after
    /// [`EXIT_DEADLINE`] is killed, and so is one that exits with a failure: both are errors.
    pub fn terminate(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.signal(Signal::SIGTERM)?;
        let status = self.wait_until(started + EXIT_DEADLINE)?;
        let took = started.elapsed();
        match status {
            Some(status) if status.success() => Ok(took),
            Some(status) => bail!("{} exited with {status} after SIGTERM", self.name),
            None => bail!("{} still ran {EXIT_DEADLINE:?} after SIGTERM", self.name),
        }
    }

    /// Waits for the process to exit by `deadline`; `None` if it had not (it is then killed).
    pub fn wait_until(&mut self, deadline: Instant) -> anyhow::Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = true;
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.exited = true;
                return Ok(None);
            }
            // Fine-grained: the exit time is measured by this loop.
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// The whole standard output and error so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Resident set size, now and at its peak, in KiB as the kernel counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

impl Memory {
    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
    pub fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }
}

/// Drops `path`'s pages from the page cache, so that the process started from it next reads it
/// from disk, as a container's first start does. How a file came into the cache otherwise sets
/// what its processes hold: the kernel maps a whole page-cache folio around every page a process
/// touches, and a binary just copied with `cp` sits in larger folios than one the linker wrote or
/// one read cold (0.3-0.6 MiB more idle RSS per service, docs/BENCHMARKS.md).
pub fn evict_from_page_cache(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    // Dirty pages cannot be dropped: to disk first.
    file.sync_all()
        .with_context(|| format!("sync {}", path.display()))?;
    posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .with_context(|| format!("evict {} from the page cache", path.display()))
}

/// `VmRSS` and `VmHWM` of process `pid`, from `/proc/<pid>/status`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_memory(&status).with_context(|| format!("no VmRSS/VmHWM in {path}"))
}

fn parse_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// User plus system CPU time from a `/proc/…/stat` file (a process's, or `/proc/self/stat`).
pub fn cpu_time(path: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    let ticks = parse_cpu_ticks(&stat).with_context(|| format!("cannot parse {path}"))?;
    Ok(Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND))
}

/// utime + stime: fields 14 and 15 of `stat`, counted after the command name, which is in
/// parentheses and may itself hold spaces.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time the whole machine spent busy (every core, anything but idle and iowait), from the
/// `cpu` line of `/proc/stat`.
pub fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let ticks = parse_machine_busy(&stat).context("no cpu line in /proc/stat")?;
    Ok(Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND))
}

fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|value| value.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy = values.iter().take(8).sum::<u64>() - values.get(3)? - values.get(4)?;
    Some(busy)
}

/// Runs a load tool's `command` on `url` to completion and returns what it printed, or an error
/// with all it said when it failed.
pub fn stdout_of(mut command: Command, url: &str) -> anyhow::Result<String> {
    let tool = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .with_context(|| format!("run {tool} (scripts/install-prereqs installs it)"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{tool} {url} failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// A port that was free a moment ago (redis-server cannot report an ephemeral port it bound).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_its_peak_from_proc_status() {
        let status = "Name:\trng\nVmHWM:\t   12345 kB\nVmRSS:\t    6789 kB\nThreads:\t3\n";
        assert_eq!(
            parse_memory(status),
            Some(Memory {
                rss_kib: 6789,
                peak_kib: 12345
            })
        );
        assert_eq!(parse_memory("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn reads_cpu_ticks_even_when_the_name_has_spaces() {
        let stat = "42 (tokio runtime) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(161));
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let memory = memory(std::process::id()).unwrap();
        assert!(memory.rss_kib > 0 && memory.peak_kib >= memory.rss_kib);
        cpu_time("/proc/self/stat").unwrap();
        machine_busy().unwrap();
    }
}
