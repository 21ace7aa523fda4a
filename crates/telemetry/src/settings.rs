//! Environment variables that were renamed.
//!
//! Every setting of one service carries that service's prefix
//! (`GATEWAY_`, `REGISTRY_`, `DELIVERY_`, `RELAY_`/`OUTBOX_`); settings
//! every binary shares have none (`DATABASE_*`, `NATS_*`, `EVENTS_*`, `LOG_FORMAT`,
//! `RUST_LOG`, `OTEL_*`). `WORKER_BIND` keeps its name: the contract fixes
//! it. A variable renamed to fit is still read under its old name while the
//! new one is unset, and the service warns about it once logging is up.

use std::ffi::OsStr;

/// An environment variable's old name and the name it has now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renamed {
    pub old: &'static str,
    pub new: &'static str,
}

/// Parses `C` from the command line and the environment like
/// [`clap::Parser::parse`], reading a renamed variable under its old name
/// when only that one is set. Returns the warnings to log.
pub fn parse<C: clap::Parser>(renamed: &[Renamed]) -> (C, Vec<String>) {
    let env = |name: &str| std::env::var_os(name).is_some();
    let (command, warnings) = with_old_names(C::command(), renamed, env);
    let parsed = command
        .try_get_matches()
        .and_then(|matches| C::from_arg_matches(&matches));
    match parsed {
        Ok(config) => (config, warnings),
        Err(e) => e.exit(),
    }
}

/// `command` with each renamed argument reading its old variable instead,
/// where `is_set` says only the old one is set; and a warning for each.
fn with_old_names(
    mut command: clap::Command,
    renamed: &[Renamed],
    is_set: impl Fn(&str) -> bool,
) -> (clap::Command, Vec<String>) {
    let mut warnings = Vec::new();
    for r in renamed {
        if is_set(r.new) || !is_set(r.old) {
            continue;
        }
        let ids: Vec<clap::Id> = command
            .get_arguments()
            .filter(|a| a.get_env() == Some(OsStr::new(r.new)))
            .map(|a| a.get_id().clone())
            .collect();
        for id in ids {
            command = command.mut_arg(id, |a| a.env(r.old));
        }
        warnings.push(format!(
            "{} is read for now but is deprecated: set {} instead",
            r.old, r.new
        ));
    }
    (command, warnings)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Settings {
        #[arg(long, env = "TEST_SERVICE_GRACE", default_value = "5")]
        grace: u32,
    }

    const RENAMED: &[Renamed] = &[Renamed {
        old: "TEST_GRACE",
        new: "TEST_SERVICE_GRACE",
    }];

    fn env_of(command: &clap::Command) -> Option<String> {
        command
            .get_arguments()
            .find(|a| a.get_id() == "grace")
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    }

    #[test]
    fn the_old_name_is_read_only_while_the_new_one_is_unset() {
        let only_old = |name: &str| name == "TEST_GRACE";
        let (command, warnings) = with_old_names(Settings::command(), RENAMED, only_old);
        assert_eq!(env_of(&command).as_deref(), Some("TEST_GRACE"));
        assert_eq!(
            warnings,
            ["TEST_GRACE is read for now but is deprecated: set TEST_SERVICE_GRACE instead"]
        );

        let both = |name: &str| name.starts_with("TEST_");
        let (command, warnings) = with_old_names(Settings::command(), RENAMED, both);
        assert_eq!(env_of(&command).as_deref(), Some("TEST_SERVICE_GRACE"));
        assert!(warnings.is_empty());

        let neither = |_: &str| false;
        let (command, warnings) = with_old_names(Settings::command(), RENAMED, neither);
        assert_eq!(env_of(&command).as_deref(), Some("TEST_SERVICE_GRACE"));
        assert!(warnings.is_empty());
    }

    /// A setting renamed from a variable every test process has (`PATH`),
    /// parsed by clap for real: the old variable's value is read, and a
    /// flag on the command line still wins over it.
    #[derive(Debug, Parser)]
    struct Search {
        #[arg(long, env = "TEST_SERVICE_SEARCH_PATH")]
        search_path: Option<String>,
    }

    #[test]
    fn clap_reads_the_old_variable_and_a_flag_still_wins() {
        let path = std::env::var("PATH").unwrap_or_else(|_| panic!("PATH is set in tests"));
        let renamed = [Renamed {
            old: "PATH",
            new: "TEST_SERVICE_SEARCH_PATH",
        }];
        let is_set = |name: &str| std::env::var_os(name).is_some();

        let (command, warnings) = with_old_names(Search::command(), &renamed, is_set);
        assert_eq!(warnings.len(), 1);
        let matches = command
            .try_get_matches_from(["search"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(matches.get_one::<String>("search_path"), Some(&path));

        let (command, _) = with_old_names(Search::command(), &renamed, is_set);
        let matches = command
            .try_get_matches_from(["search", "--search-path", "/opt"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            matches.get_one::<String>("search_path").map(String::as_str),
            Some("/opt")
        );
    }
}
