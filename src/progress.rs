//! What a pull shows: a bar per blob on a terminal, one line per blob in a job log, nothing
//! with `-q`. Everything goes to stderr; stdout carries only results.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::digest::Digest;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Bars,
    Lines,
    Quiet,
}

impl Mode {
    /// Bars when stderr is a terminal, lines otherwise; `quiet` wins.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

pub struct Progress {
    mode: Mode,
    multi: MultiProgress,
}

/// The outcome of one blob.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    Downloaded,
    Present,
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        let target =
            if mode == Mode::Bars { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Progress { mode, multi: MultiProgress::with_draw_target(target) }
    }

    /// A note the user should see (above the bars on a terminal).
    pub fn note(&self, text: &str) {
        match self.mode {
            Mode::Bars => self.multi.suspend(|| eprintln!("{text}")),
            Mode::Lines => eprintln!("{text}"),
            Mode::Quiet => {}
        }
    }

    /// Start showing one blob of `size` bytes.
    pub fn blob(&self, digest: &Digest, size: u64) -> BlobProgress<'_> {
        let bar = (self.mode == Mode::Bars).then(|| {
            let style = ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30.cyan/blue}] {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
            )
            .expect("the template is valid")
            .progress_chars("=> ");
            let bar = self.multi.add(ProgressBar::new(size).with_style(style));
            bar.set_prefix(digest.short().to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        BlobProgress { progress: self, bar, label: digest.short().to_string(), size, start: Instant::now() }
    }
}

pub struct BlobProgress<'a> {
    progress: &'a Progress,
    bar: Option<ProgressBar>,
    label: String,
    size: u64,
    start: Instant,
}

impl BlobProgress<'_> {
    /// Bytes of this blob on disk so far.
    pub fn position(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        }
    }

    /// Another process is downloading this blob: say so once.
    pub fn waiting(&self) {
        match &self.bar {
            Some(bar) => bar.set_message("waiting for another boxrun"),
            None => self.progress.note(&format!("{}: waiting for another boxrun to download it", self.label)),
        }
    }

    pub fn finish(self, outcome: Outcome) {
        let size = human_bytes(self.size);
        let text = match outcome {
            Outcome::Downloaded => format!("downloaded {size} in {:.1}s", self.start.elapsed().as_secs_f64()),
            Outcome::Present => format!("already present ({size})"),
        };
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.size);
                bar.finish_with_message(text);
            }
            None => self.progress.note(&format!("{}: {text}", self.label)),
        }
    }

    pub fn abandon(self) {
        if let Some(bar) = &self.bar {
            bar.abandon_with_message("failed");
        }
    }
}

/// 1.2 MiB, 340 KiB, 12 B.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
