//! libfaketime, from Debian's package (scripts/prerequisites.sh installs it):
//! moves the clock of the process it is preloaded in, and of its children, by
//! the offset written in a file (`-3h`, `+1d`), read again every second, so
//! that a test can move a running process's clock. Monotonic time is left
//! alone: timers and timeouts run as they would.

use std::ffi::OsString;
use std::path::Path;

const LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The environment that runs a process on the clock `offset_file` says.
pub fn env(offset_file: &Path) -> [(&'static str, OsString); 4] {
    assert!(Path::new(LIBRARY).exists(), "{LIBRARY} is missing: run scripts/prerequisites.sh");
    [
        ("LD_PRELOAD", LIBRARY.into()),
        ("FAKETIME_TIMESTAMP_FILE", offset_file.into()),
        ("FAKETIME_CACHE_DURATION", "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
    ]
}
