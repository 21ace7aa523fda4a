//! Test support for tests that run a service's built binary and read what
//! it logs (feature `testing`).

use std::io::Read;
use std::thread::JoinHandle;

/// Reads a child's piped stdout or stderr to the end on a thread (a full
/// pipe would block the child's logging); `join` gives the text.
pub fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
