//! The documents agree with the code (no services needed):
//! docs/configuration.md's settings table with each binary's `--help`, and
//! docs/architecture.md's crate table with the workspace's Cargo.toml files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the first Markdown table under a header line that starts
/// with `header`, split into trimmed cells.
fn table(text: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(header));
    assert!(lines.next().is_some(), "no table headed {header:?}");
    lines
        .skip(1) // |---|
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// The `code spans` of a cell.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The five binaries, by the names the settings table uses.
fn binaries() -> BTreeMap<&'static str, clap::Command> {
    BTreeMap::from([
        ("registry", webhook_registry::Cli::command()),
        ("worker", delivery_worker::Config::command()),
        ("gateway", gateway::Config::command()),
        ("relay", outbox_relay::Cli::command()),
        ("eventctl", eventctl::Cli::command()),
    ])
}

/// One option as `--help` shows it: flag and variable (`none` without one).
type Key = (String, String);

/// An option's default as the table writes it.
fn default_of(arg: &clap::Arg) -> Option<String> {
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    Some(values.join(",")).filter(|v| !v.is_empty())
}

/// Every option a binary's `--help` lists (not its subcommands' own
/// arguments), with its default.
fn options(command: &clap::Command) -> BTreeMap<Key, (Option<String>, bool)> {
    command
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_positional())
        .map(|a| {
            let flag = format!(
                "--{}",
                a.get_long()
                    .unwrap_or_else(|| panic!("{} has no long flag", a.get_id()))
            );
            let env = a
                .get_env()
                .map_or("none".to_owned(), |e| e.to_string_lossy().into_owned());
            ((flag, env), (default_of(a), a.is_required_set()))
        })
        .collect()
}

#[test]
fn the_settings_table_is_every_binarys_help() {
    let text = read("docs/configuration.md");
    let binaries = binaries();
    let mut documented: BTreeMap<String, BTreeSet<Key>> = BTreeMap::new();
    let mut problems = Vec::new();
    for row in table(&text, "| flag | variable | default | used by | meaning |") {
        let [flag, env, default, used_by, meaning] = row.as_slice() else {
            panic!("docs/configuration.md: a settings row without five cells: {row:?}");
        };
        let key: Key = (
            flag.trim_matches('`').to_owned(),
            env.trim_matches('`').to_owned(),
        );
        let row_name = format!("`{}` / `{}`", key.0, key.1);
        if meaning.is_empty() {
            problems.push(format!("{row_name}: no meaning"));
        }
        let users: Vec<&str> = if used_by == "all" {
            binaries.keys().copied().collect()
        } else {
            used_by.split(',').map(str::trim).collect()
        };
        for user in users {
            let Some(command) = binaries.get(user) else {
                problems.push(format!("{row_name}: no binary {user:?} (used by)"));
                continue;
            };
            let options = options(command);
            let Some((want, required)) = options.get(&key) else {
                problems.push(format!(
                    "{row_name}: `{} --help` has no such option",
                    command.get_name()
                ));
                continue;
            };
            let spans = code_spans(default);
            let agrees = match want {
                _ if *required => default.contains("required"),
                Some(value) => spans.iter().any(|s| s == value),
                None => default.contains("unset") || default.contains("empty"),
            };
            if !agrees {
                problems.push(format!(
                    "{row_name}: the default cell {default:?} does not say {} of `{}`",
                    want.as_deref()
                        .map_or("unset/empty".to_owned(), |v| format!("`{v}`")),
                    command.get_name()
                ));
            }
            if !documented
                .entry(user.to_owned())
                .or_default()
                .insert(key.clone())
            {
                problems.push(format!("{row_name}: two rows for {user}"));
            }
        }
    }
    for (user, command) in &binaries {
        for (key, (default, _)) in options(command) {
            if !documented.get(*user).is_some_and(|d| d.contains(&key)) {
                problems.push(format!(
                    "`{} --help` lists `{}` / `{}` (default {}); the table has no row for it with {user} in \"used by\"",
                    command.get_name(),
                    key.0,
                    key.1,
                    default.map_or("unset".to_owned(), |d| format!("`{d}`"))
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md disagrees with --help:\n  {}",
        problems.join("\n  ")
    );
}

/// What one Cargo.toml says: the package's name, and the dependency names
/// of each `[*dependencies]` section (`[dependencies.x]` tables included).
struct Manifest {
    name: String,
    dependencies: BTreeMap<String, BTreeSet<String>>,
}

/// Enough of TOML for this workspace's manifests (checked below against
/// what they hold).
fn manifest(relative: &str) -> Manifest {
    let text = read(&format!("{relative}/Cargo.toml"));
    let mut section = String::new();
    let mut name = None;
    let mut dependencies: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = header.to_owned();
            if let Some((table, dep)) = header.split_once('.')
                && table.ends_with("dependencies")
            {
                dependencies
                    .entry(table.to_owned())
                    .or_default()
                    .insert(dep.to_owned());
            }
            continue;
        }
        let key: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if key.is_empty() {
            continue;
        }
        if section == "package" && key == "name" {
            name = line.split('"').nth(1).map(str::to_owned);
        } else if section.ends_with("dependencies") && !section.contains('.') {
            dependencies.entry(section.clone()).or_default().insert(key);
        }
    }
    Manifest {
        name: name.unwrap_or_else(|| panic!("{relative}/Cargo.toml: no package name")),
        dependencies,
    }
}

/// The root Cargo.toml's `[workspace] members`.
fn members() -> Vec<String> {
    let text = read("Cargo.toml");
    let list = text
        .split_once("members = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .expect("Cargo.toml: [workspace] members = [ … ]");
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The names of `crates` that `cell` mentions as whole words.
fn crates_named(cell: &str, crates: &BTreeSet<String>) -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let words: BTreeSet<&str> = cell.split(|c: char| !word(c)).collect();
    crates
        .iter()
        .filter(|c| words.contains(c.as_str()))
        .cloned()
        .collect()
}

fn listed(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "none".to_owned()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[test]
fn the_crate_table_is_the_workspace() {
    let members = members();
    assert!(!members.is_empty());
    let manifests: BTreeMap<String, Manifest> =
        members.iter().map(|m| (m.clone(), manifest(m))).collect();
    // The parser above reads these manifests: make sure it read something.
    assert!(
        manifests
            .values()
            .any(|m| m.dependencies.contains_key("dependencies")),
        "no [dependencies] read from any member"
    );
    let packages: BTreeSet<String> = manifests.values().map(|m| m.name.clone()).collect();
    let text = read("docs/architecture.md");
    let rows = table(&text, "| crate | role | depends on |");
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for row in &rows {
        let [path, _role, depends_on] = row.as_slice() else {
            panic!("docs/architecture.md: a crate row without three cells: {row:?}");
        };
        let path = path
            .split('`')
            .nth(1)
            .unwrap_or_else(|| panic!("docs/architecture.md: row {row:?} names no `path`"));
        let Some(m) = manifests.get(path) else {
            if repo_root().join(path).join("Cargo.toml").exists() {
                problems.push(format!(
                    "row `{path}`: not a member of the workspace (root Cargo.toml); remove the row or add the member"
                ));
            }
            continue;
        };
        seen.insert(path.to_owned());
        let others: BTreeSet<String> = packages.iter().filter(|p| **p != m.name).cloned().collect();
        let internal = |section: &str| -> BTreeSet<String> {
            m.dependencies
                .get(section)
                .map(|d| d.intersection(&others).cloned().collect())
                .unwrap_or_default()
        };
        let normal = internal("dependencies");
        let tests: BTreeSet<String> = internal("dev-dependencies")
            .difference(&normal)
            .cloned()
            .collect();
        // "depends on" names the crate's own dependencies; an optional
        // part after "tests:" names what only its tests add.
        let (own, for_tests) = match depends_on.split_once("tests:") {
            Some((own, for_tests)) => (own, Some(for_tests)),
            None => (depends_on.as_str(), None),
        };
        let mut compare = |what: &str, cell: &str, want: &BTreeSet<String>| {
            let have = crates_named(cell, &others);
            if &have != want {
                problems.push(format!(
                    "row `{path}`: {what} lists [{}], {path}/Cargo.toml has [{}] (missing: [{}]; not a dependency: [{}])",
                    listed(&have),
                    listed(want),
                    listed(&want.difference(&have).cloned().collect()),
                    listed(&have.difference(want).cloned().collect()),
                ));
            }
        };
        compare("\"depends on\"", own, &normal);
        if let Some(cell) = for_tests {
            compare("\"tests:\"", cell, &tests);
        }
    }
    for member in &members {
        if !seen.contains(member) {
            let m = &manifests[member];
            let others: BTreeSet<String> =
                packages.iter().filter(|p| **p != m.name).cloned().collect();
            let normal: BTreeSet<String> = m
                .dependencies
                .get("dependencies")
                .map(|d| d.intersection(&others).cloned().collect())
                .unwrap_or_default();
            problems.push(format!(
                "no row for workspace member `{member}` (package `{}`); add one whose \"depends on\" names [{}]",
                m.name,
                listed(&normal)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/architecture.md's crate table disagrees with the workspace:\n  {}",
        problems.join("\n  ")
    );
}
