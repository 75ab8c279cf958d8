//! What the lab says on the terminal as it goes: one line per event, with the
//! seconds since the start, on stderr (stdout carries the summary).

use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Progress {
    start: Instant,
}

impl Progress {
    pub fn new() -> Self {
        Self { start: Instant::now() }
    }

    /// Seconds since the lab started.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// A step begins or ends.
    pub fn step(&self, text: &str) {
        eprintln!("[{:>7.1}s] {text}", self.elapsed());
    }

    /// Something the user should know about how this run differs from the real thing.
    pub fn note(&self, text: &str) {
        eprintln!("[{:>7.1}s] note: {text}", self.elapsed());
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
