//! A PostgreSQL cluster of a test's own (`initdb`, `pg_ctl`), so a test can
//! stop the database without touching the machine's shared one.
//!
//! PostgreSQL refuses to run as root: when the test runs as root, every
//! command runs as the `postgres` user through `runuser`, in a directory
//! owned by it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::process::{free_port, tail};

/// The server binaries: `$(pg_config --bindir)`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").is_file());
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .expect("PostgreSQL server binaries (pg_config --bindir, /usr/lib/postgresql/*/bin)")
}

/// A private PostgreSQL server on a free loopback port, trust
/// authentication for `postgres`, stopped and removed when dropped.
pub struct PrivatePostgres {
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
    running: bool,
}

impl PrivatePostgres {
    /// `initdb` in a new directory under `parent`, then start.
    pub fn start(parent: &Path) -> Self {
        let root = parent.join("postgres");
        std::fs::create_dir_all(&root).expect("create the PostgreSQL directory");
        let as_postgres = std::fs::metadata(&root)
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        if as_postgres {
            // The test's directory is root's; postgres must be able to reach
            // its own folder inside it.
            run_ok(Command::new("chmod").args(["755".as_ref(), parent.as_os_str()]));
            run_ok(Command::new("chown").args(["postgres:postgres".as_ref(), root.as_os_str()]));
        }
        let mut pg = Self {
            data: root.join("data"),
            log: root.join("postgres.log"),
            root,
            bin: bindir(),
            port: free_port(),
            as_postgres,
            running: false,
        };
        let initdb = pg.bin.join("initdb");
        let data = pg.data.clone();
        pg.run(&[
            initdb.as_os_str(),
            "-D".as_ref(),
            data.as_os_str(),
            "-A".as_ref(),
            "trust".as_ref(),
            "-U".as_ref(),
            "postgres".as_ref(),
            "--no-sync".as_ref(),
        ]);
        pg.start_again();
        pg
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a database and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let mut conn = AsyncPgConnection::establish(&self.url("postgres"))
            .await
            .expect("connect to the private PostgreSQL");
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        self.url(name)
    }

    /// The postmaster and every backend of this cluster (to pause them
    /// all: a frozen database server).
    pub fn pids(&self) -> Vec<u32> {
        let pidfile = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .expect("postmaster.pid of a running cluster");
        let postmaster: u32 = pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("the postmaster's pid");
        crate::signal::with_descendants(postmaster)
    }

    /// `pg_ctl stop -m fast` (open connections are closed).
    pub fn stop(&mut self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
        self.running = false;
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    pub fn start_again(&mut self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.root.display()
        );
        let log = self.log.clone();
        self.pg_ctl(&[
            "-o",
            &opts,
            "-l",
            &log.to_string_lossy(),
            "-w",
            "-t",
            "30",
            "start",
        ]);
        self.running = true;
    }

    fn pg_ctl(&self, args: &[&str]) {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut all = vec![pg_ctl.as_os_str(), "-D".as_ref(), self.data.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        self.run(&all);
    }

    /// `args` as a command, run as `postgres` when the test is root.
    fn command(&self, args: &[&std::ffi::OsStr]) -> Command {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(args);
            c
        } else {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        };
        // Outside the directory being removed, readable by postgres.
        cmd.current_dir("/");
        cmd
    }

    fn run(&self, args: &[&std::ffi::OsStr]) {
        let out = self
            .command(args)
            .output()
            .expect("run a PostgreSQL command");
        assert!(
            out.status.success(),
            "{args:?} failed: {}\n{}",
            text(&out),
            tail(&self.log, 20)
        );
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run a command");
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of the private PostgreSQL log:\n{}",
                tail(&self.log, 20)
            );
        }
        if self.running {
            let pg_ctl = self.bin.join("pg_ctl");
            let data = self.data.clone();
            let args = [
                pg_ctl.as_os_str(),
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ];
            let _ = self.command(&args).output();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
