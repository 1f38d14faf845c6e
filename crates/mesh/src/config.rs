//! Configuration parsing that fails the way an operator needs: exit status 2 and one line naming
//! the environment variable (or flag) and what is wrong with it.
//!
//! clap does the parsing; its own error is several lines long and names only the flag, while in a
//! container the operator set an environment variable. [`parse`] rewrites the error into one line.

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
        _ => Exit::Invalid(one_line(command, &err)),
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
    let output = std::process::Command::new(binary)
        .env(variable, value)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {binary}: {err}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{variable}={value}: {stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(variable), "{stderr} should name {variable}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn help_is_left_to_clap() {
        let result = try_parse_from::<Demo, _, _>(["demo", "--help"]);
        assert!(matches!(result, Err(Exit::Clap(_))));
    }
}
