//! The binary's log set-up: messages on stderr, colour only when stderr is a terminal and
//! `NO_COLOR` is unset (<https://no-color.org>), `--quiet` keeps warnings and errors only.
//! `RUST_LOG` still chooses the levels when set (and `--quiet` is not given).

use std::io::IsTerminal;

/// Whether to colour the logs: a terminal, and `NO_COLOR` unset or empty.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&str>) -> bool {
    stderr_is_terminal && no_color.is_none_or(str::is_empty)
}

/// The log filter: `warn` with `--quiet`, else `RUST_LOG` if set, else `info`.
pub fn filter(quiet: bool, rust_log: Option<&str>) -> String {
    match (quiet, rust_log) {
        (true, _) => "warn".to_string(),
        (false, Some(f)) if !f.trim().is_empty() => f.to_string(),
        _ => "info".to_string(),
    }
}

/// Installs the global subscriber (call once, first thing in `main`).
pub fn init(quiet: bool) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let no_color = std::env::var("NO_COLOR").ok();
    let env_filter = tracing_subscriber::EnvFilter::try_new(filter(quiet, rust_log.as_deref()))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_target(false)
        .with_ansi(use_colour(std::io::stderr().is_terminal(), no_color.as_deref()))
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_and_levels() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("")));
        assert!(!use_colour(true, Some("1")));
        assert!(!use_colour(false, None));
        assert_eq!(filter(true, Some("debug")), "warn");
        assert_eq!(filter(false, Some("debug")), "debug");
        assert_eq!(filter(false, None), "info");
    }
}
