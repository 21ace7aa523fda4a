//! Faults that are not crashes: processes paused with SIGSTOP (a GC or
//! swap stall, a frozen VM) and a port cut off by a firewall rule (a
//! silent network), each undone when its guard is dropped.

use std::process::Command;

/// `kill -s SIGNAL pid…`.
fn send(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    let out = Command::new("kill")
        .arg("-s")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .output()
        .expect("run kill");
    assert!(
        out.status.success(),
        "kill -s {signal} {pids:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pid` and every process below it (from `/proc`).
pub fn with_descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parents.push((child, ppid));
        }
    }
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        all.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    all
}

/// Processes stopped with SIGSTOP; SIGCONT when resumed or dropped.
pub struct Paused {
    pids: Vec<u32>,
}

impl Paused {
    pub fn resume(mut self) {
        send(&std::mem::take(&mut self.pids), "CONT");
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let pids = std::mem::take(&mut self.pids);
        if !pids.is_empty() {
            let _ = Command::new("kill")
                .arg("-s")
                .arg("CONT")
                .args(pids.iter().map(u32::to_string))
                .output();
        }
    }
}

/// SIGSTOP to `pids`.
pub fn pause(pids: Vec<u32>) -> Paused {
    send(&pids, "STOP");
    Paused { pids }
}

/// An `iptables` rule dropping every TCP packet sent to `127.0.0.1:port`
/// (connections neither open nor close: a receiver behind a silent
/// network); removed when lifted or dropped.
pub struct Blackhole {
    port: u16,
    active: bool,
}

fn rule(action: &str, port: u16) -> Command {
    let mut cmd = Command::new("iptables");
    cmd.args([action, "OUTPUT", "-p", "tcp", "-d", "127.0.0.1", "--dport"])
        .arg(port.to_string())
        .args(["-j", "DROP"]);
    cmd
}

impl Blackhole {
    /// Adds the rule; `Err` says why it cannot be (no iptables, no
    /// permission), for the test to print when it skips.
    pub fn start(port: u16) -> Result<Self, String> {
        let out = rule("-I", port)
            .output()
            .map_err(|e| format!("iptables cannot run: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "iptables refused the rule: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { port, active: true })
    }

    pub fn lift(mut self) {
        self.remove();
    }

    fn remove(&mut self) {
        if std::mem::take(&mut self.active) {
            let out = rule("-D", self.port).output();
            assert!(
                out.is_ok_and(|o| o.status.success()),
                "could not remove the iptables rule for port {}",
                self.port
            );
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        if self.active {
            self.active = false;
            let _ = rule("-D", self.port).output();
        }
    }
}
