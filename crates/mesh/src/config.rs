//! Configuration parsing that fails the way an operator needs: exit status 2 and one line naming
//! the environment variable (or flag) and what is wrong with it.
//!
//! clap does the parsing; its own error is several lines long and names only the flag, while in a
//! container the operator set an environment variable. [`parse`] rewrites the error into one line.

use std::time::Duration;

use clap::Parser;
use clap::error::{ContextKind, ContextValue, ErrorKind};

/// Parses the process's arguments and environment into `C`, or exits.
///
/// `--help` and `--version` print and exit 0 as usual; any other error prints one line to stderr
/// and exits with status 2.
pub fn parse<C: Parser>() -> C {
    match try_parse_from::<C, _, _>(std::env::args_os()) {
        Ok(config) => config,
        Err(Exit::Clap(err)) => err.exit(),
        Err(Exit::Invalid(line)) => {
            eprintln!("{line}");
            std::process::exit(2);
        }
    }
}

/// Ends the process as [`parse`] does for a bad value: `line` (which names the variables) on
/// stderr after the program's name, and exit status 2.
pub fn exit_invalid<C: Parser>(line: &str) -> ! {
    eprintln!("{}: {}", C::command().get_name(), redact(line));
    std::process::exit(2);
}

/// The longest interval a setting may ask for: longer is a typo, and would overflow a timer.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// A clap value parser for intervals and deadlines: a duration such as `5s`, more than zero (a
/// zero interval would spin, a zero deadline fail every call) and at most a day.
pub fn parse_interval(raw: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(raw).map_err(|err| err.to_string())?;
    if interval.is_zero() {
        return Err("must be more than 0s".to_string());
    }
    if interval > MAX_INTERVAL {
        return Err("must be at most 24h".to_string());
    }
    Ok(interval)
}

/// The most requests a queue may serve at once: far beyond what one replica can do, and far below
/// what its semaphore can count.
pub const MAX_CONCURRENCY: usize = 1_000_000;

/// A clap value parser for concurrency limits: 0 (unlimited) to [`MAX_CONCURRENCY`].
pub fn parse_concurrency(raw: &str) -> Result<usize, String> {
    let limit: usize = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a whole number"))?;
    if limit > MAX_CONCURRENCY {
        return Err(format!("must be at most {MAX_CONCURRENCY} (0 = unlimited)"));
    }
    Ok(limit)
}

/// `text` with the password of every URL in it replaced by `***`, for error and log lines:
/// `redis://:secret@redis:6379` becomes `redis://:***@redis:6379`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let (before, after) = rest.split_at(scheme_end + 3);
        out.push_str(before);
        // The authority ends at the first '/', whitespace or quote; its userinfo at the last '@'.
        let authority_len = after
            .find(|c: char| c == '/' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..authority_len];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str("***");
                    }
                    None => out.push_str("***"),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_len..];
    }
    out.push_str(rest);
    out
}

/// Why [`try_parse_from`] did not return a configuration.
#[derive(Debug)]
pub enum Exit {
    /// `--help`, `--version`, or an error clap already words well: let clap print it.
    Clap(clap::Error),
    /// A bad value, as one line for the operator.
    Invalid(String),
}

/// Parses `args` (and the environment) into `C`; the testable half of [`parse`].
pub fn try_parse_from<C, I, T>(args: I) -> Result<C, Exit>
where
    C: Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut command = C::command();
    let matches = command
        .try_get_matches_from_mut(args)
        .map_err(|err| classify(&command, err))?;
    C::from_arg_matches(&matches).map_err(|err| classify(&command, err))
}

fn classify(command: &clap::Command, err: clap::Error) -> Exit {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Exit::Clap(err),
        _ => Exit::Invalid(redact(&one_line(command, &err))),
    }
}

/// `rng: RNG_DELAY (--delay): invalid value "abc": expected a duration such as 100ms or 0s`.
fn one_line(command: &clap::Command, err: &clap::Error) -> String {
    let name = command.get_name();
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => Some(arg.clone()),
        _ => None,
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => Some(value.clone()),
        _ => None,
    };
    // The first line of clap's message, without its "error: " prefix, is the reason; the rest
    // (usage, "For more information") is noise in a container log.
    let rendered = err.to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let mut reason = first.trim_start_matches("error: ").to_string();
    if let Some(source) = std::error::Error::source(err) {
        reason = source.to_string();
    }
    match (arg, value) {
        (Some(arg), Some(value)) => {
            let who = describe_arg(command, &arg);
            format!("{name}: {who}: invalid value {value:?}: {reason}")
        }
        (Some(arg), None) => format!("{name}: {}: {reason}", describe_arg(command, &arg)),
        _ => format!("{name}: {reason}"),
    }
}

/// Names an argument by its environment variable first, since that is what containers set.
fn describe_arg(command: &clap::Command, rendered_arg: &str) -> String {
    // clap renders the argument as `--delay <DELAY>`; find it by its long name.
    let long = rendered_arg
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_start_matches("--");
    let found = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long));
    match found.and_then(|arg| arg.get_env()) {
        Some(env) => format!("{} (--{long})", env.to_string_lossy()),
        None => rendered_arg.to_string(),
    }
}

/// For the binaries' own tests: runs `binary` with `variable=value` and asserts that it exits with
/// status 2 and one line on stderr that names the variable.
#[doc(hidden)]
pub fn assert_rejected(binary: &str, variable: &str, value: &str) {
    assert_rejected_with(binary, &[(variable, value)], variable);
}

/// Like [`assert_rejected`], for settings that are only wrong together: runs `binary` with `env`
/// and asserts exit status 2, no panic, and one line on stderr naming `named`; returns that line.
#[doc(hidden)]
pub fn assert_rejected_with(binary: &str, env: &[(&str, &str)], named: &str) -> String {
    let output = std::process::Command::new(binary)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {binary}: {err}"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{env:?}: {stderr}");
    assert!(stderr.contains(named), "{stderr} should name {named}");
    stderr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    #[command(name = "demo")]
    struct Demo {
        /// A delay.
        #[arg(long, env = "MESH_TEST_DEMO_DELAY", default_value = "100ms", value_parser = humantime_like)]
        delay: Duration,
        /// A count.
        #[arg(long, env = "MESH_TEST_DEMO_COUNT", default_value_t = 1)]
        count: u32,
    }

    fn humantime_like(s: &str) -> Result<Duration, String> {
        s.strip_suffix("ms")
            .and_then(|n| n.parse().ok())
            .map(Duration::from_millis)
            .ok_or_else(|| format!("expected milliseconds such as 100ms, got {s:?}"))
    }

    #[test]
    fn defaults_apply_without_flags() {
        let demo: Demo = try_parse_from(["demo"]).unwrap();
        assert_eq!(demo.delay, Duration::from_millis(100));
        assert_eq!(demo.count, 1);
    }

    #[test]
    fn a_bad_value_is_one_line_naming_the_variable() {
        let Err(Exit::Invalid(line)) = try_parse_from::<Demo, _, _>(["demo", "--count", "many"])
        else {
            panic!("a bad count must be rejected");
        };
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(
            line.starts_with("demo: MESH_TEST_DEMO_COUNT (--count): invalid value \"many\""),
            "{line}"
        );
    }

    #[test]
    fn the_value_parsers_reason_is_kept() {
        let Err(Exit::Invalid(line)) = try_parse_from::<Demo, _, _>(["demo", "--delay", "soon"])
        else {
            panic!("a bad delay must be rejected");
        };
        assert!(line.contains("MESH_TEST_DEMO_DELAY"), "{line}");
        assert!(line.contains("expected milliseconds"), "{line}");
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact("REDIS_URL: invalid value \"redis://:secret@redis:6379/0\": bad"),
            "REDIS_URL: invalid value \"redis://:***@redis:6379/0\": bad"
        );
        assert_eq!(
            redact("redis://user:pw@h:1 and http://x:9"),
            "redis://user:***@h:1 and http://x:9"
        );
        assert_eq!(redact("rediss://token@h"), "rediss://***@h");
        assert_eq!(redact("no url here"), "no url here");
    }

    #[test]
    fn intervals_are_positive_and_at_most_a_day() {
        assert_eq!(parse_interval("5s"), Ok(Duration::from_secs(5)));
        for bad in ["0s", "0ms", "2days", "soon", "-1s"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn concurrency_is_bounded() {
        assert_eq!(parse_concurrency("0"), Ok(0));
        assert_eq!(parse_concurrency("1000000"), Ok(1_000_000));
        for bad in ["1000001", "18446744073709551615", "-1", "many"] {
            assert!(parse_concurrency(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn help_is_left_to_clap() {
        let result = try_parse_from::<Demo, _, _>(["demo", "--help"]);
        assert!(matches!(result, Err(Exit::Clap(_))));
    }
}
