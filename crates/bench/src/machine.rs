//! The machine a benchmark ran on, written next to its numbers: they mean nothing without it.
//!
//! Besides the hardware and the software versions, it keeps the load average at the start (two
//! cores shared with anything else running skew every number) and the commit measured, marked
//! dirty when the sources differed from it.

use std::process::Command;

/// What the results were measured on.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    pub rustc: String,
    pub wrk: String,
    pub h2load: String,
    pub redis: String,
    /// The commit measured, with `-dirty` when the sources had uncommitted changes.
    pub commit: String,
    /// `/proc/loadavg`'s 1-minute load when the run started.
    pub load_at_start: f64,
    /// CPU the machine spent busy in the second before measuring (% of one core, cores summed):
    /// anything but a few percent means something else competed for the cores.
    pub busy_at_start_percent: f64,
    /// UTC, to the second.
    pub date: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        let os_release = read("/etc/os-release");
        Self {
            cpu: field(&cpuinfo, "model name", ':').unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: field(&meminfo, "MemTotal", ':')
                .and_then(|kb| kb.trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(0.0, |kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os: field(&os_release, "PRETTY_NAME", '=').map_or_else(
                || "unknown".into(),
                |name| name.trim_matches('"').to_string(),
            ),
            rustc: first_line("rustc", &["--version"]),
            // "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
            wrk: first_line("wrk", &["-v"])
                .split(" Copyright")
                .next()
                .unwrap_or_default()
                .to_string(),
            // "h2load nghttp2/1.52.0"
            h2load: first_line("h2load", &["--version"]),
            // "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=…"
            redis: first_line("redis-server", &["--version"])
                .split(" sha=")
                .next()
                .unwrap_or_default()
                .to_string(),
            commit: commit(),
            load_at_start: read("/proc/loadavg")
                .split_whitespace()
                .next()
                .and_then(|load| load.parse().ok())
                .unwrap_or(f64::NAN),
            busy_at_start_percent: f64::NAN,
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of the first `key<sep>value` line.
fn field(text: &str, key: &str, separator: char) -> Option<String> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(separator)?;
        (name.trim() == key).then(|| value.trim().to_string())
    })
}

/// The first line a tool prints about itself (wrk prints its version on stdout and exits 1).
fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|output| {
            let text = String::from_utf8_lossy(&output.stdout).to_string()
                + &String::from_utf8_lossy(&output.stderr);
            text.lines().next().map(str::to_string)
        })
        .unwrap_or_else(|| format!("{program}: not found"))
}

/// `git describe`-like: the short commit, `-dirty` when what is built differs from it.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short=10", "HEAD"]) else {
        return "unknown".into();
    };
    let sources = [
        "status",
        "--porcelain",
        "--",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
        "build.rs",
        "src",
        "proto",
        "crates",
    ];
    match git(&sources) {
        Some(changes) if !changes.is_empty() => format!("{head}-dirty"),
        _ => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_by_name() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n";
        assert_eq!(
            field(cpuinfo, "model name", ':').as_deref(),
            Some("AMD EPYC")
        );
        assert_eq!(field(cpuinfo, "bogomips", ':'), None);
        let os = "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            field(os, "PRETTY_NAME", '=').as_deref(),
            Some("\"Debian GNU/Linux 12 (bookworm)\"")
        );
    }
}
