//! The client's progress line on standard error: which measurement of how many runs, and
//! for how long the run has been going. It is drawn between measurements only (never inside
//! a timed loop), on a terminal redrawn in place, elsewhere a line per measurement.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use crate::cli::Progress;
use crate::wire::Spec;

/// The progress line's state.
pub struct ProgressLine {
    enabled: bool,
    /// Redrawn in place (a terminal), rather than a line each.
    in_place: bool,
    start: Instant,
    /// A line is on the screen and must be cleared before other output.
    drawn: bool,
}

impl ProgressLine {
    /// The line as `choice` asks, for this process's standard error.
    pub fn new(choice: Progress) -> ProgressLine {
        let terminal = std::io::stderr().is_terminal();
        ProgressLine {
            enabled: match choice {
                Progress::Auto => terminal,
                Progress::Always => true,
                Progress::Never => false,
            },
            in_place: terminal,
            start: Instant::now(),
            drawn: false,
        }
    }

    /// Shows that measurement `index` (from 0) of `total`, `spec`, starts.
    pub fn starting(&mut self, index: usize, total: usize, spec: &Spec) {
        if !self.enabled {
            return;
        }
        let text = format!(
            "[{}/{total} {}s] {} {} {} {} B x{}",
            index + 1,
            self.start.elapsed().as_secs(),
            spec.rt.name(),
            spec.mode.name(),
            spec.test.name(),
            spec.size,
            spec.iters
        );
        let mut err = std::io::stderr().lock();
        // Progress is a courtesy: a closed standard error must not stop the run.
        let _ = if self.in_place {
            self.drawn = true;
            write!(err, "\r\x1b[K{text}")
        } else {
            writeln!(err, "anyrdma-perf: {text}")
        };
        let _ = err.flush();
    }

    /// Clears a line drawn in place, before results or messages are printed.
    pub fn clear(&mut self) {
        if self.drawn {
            self.drawn = false;
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}
