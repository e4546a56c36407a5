//! What long runs show and leave behind: a progress bar, one plain line per epoch, and every
//! logged metric as a JSON line (`metrics.jsonl` in the run directory).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub struct RunLog {
    name: String,
    jsonl: Option<(PathBuf, File)>,
    bar: ProgressBar,
    started: Instant,
    quiet: bool,
}

impl RunLog {
    /// A log for `total_steps` steps of the run `name`; JSON lines go to `jsonl` if given
    /// (appended, so a resumed run continues the same file). `quiet` hides the bar (tests, CI).
    pub fn new(name: &str, total_steps: u64, jsonl: Option<&Path>, quiet: bool) -> Result<RunLog> {
        let jsonl = match jsonl {
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                }
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                Some((path.to_path_buf(), f))
            }
            None => None,
        };
        let bar = if quiet || std::env::var_os("CI").is_some() {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(total_steps);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(name.to_string());
            bar
        };
        Ok(RunLog {
            name: name.to_string(),
            jsonl,
            bar,
            started: Instant::now(),
            quiet,
        })
    }

    pub fn set_position(&self, step: u64) {
        self.bar.set_position(step);
    }

    /// Advances the bar to `step` and shows a short message.
    pub fn step(&self, step: u64, msg: &str) {
        self.bar.set_position(step);
        self.bar.set_message(msg.to_string());
    }

    /// Appends one JSON object with `kind`, the run name, the elapsed seconds and `fields`.
    pub fn record(&mut self, kind: &str, fields: &[(&str, Value)]) -> Result<()> {
        let Some((path, file)) = &mut self.jsonl else {
            return Ok(());
        };
        let mut obj = Map::new();
        obj.insert("kind".into(), kind.into());
        obj.insert("run".into(), self.name.clone().into());
        obj.insert(
            "elapsed_s".into(),
            ((self.started.elapsed().as_secs_f64() * 1e3).round() / 1e3).into(),
        );
        for (k, v) in fields {
            obj.insert((*k).to_string(), v.clone());
        }
        writeln!(file, "{}", Value::Object(obj)).map_err(|e| Error::io(path.as_path(), e))
    }

    /// One plain line (above the bar), e.g. the end of an epoch.
    pub fn line(&self, text: &str) {
        if self.bar.is_hidden() {
            if !self.quiet {
                println!("{text}");
            }
        } else {
            self.bar.println(text);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}
