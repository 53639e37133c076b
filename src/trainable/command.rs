//! `kind = "command"`: any program as a trainable.
//!
//! ```text
//! gauntlet ── argv + --name value ... ──▶ program
//!          ── GAUNTLET_PARAMS (JSON file), GAUNTLET_CHECKPOINT_DIR ──▶
//!          ◀── stdout: {"epoch": 3, "val_accuracy": 0.87} per line ──
//!          ◀── other stdout lines and stderr: the trial's output.log ──
//! ```
//! The program writes its checkpoint into `GAUNTLET_CHECKPOINT_DIR` before
//! it prints the epoch's report. When the directory changed since the last
//! report, Gauntlet pauses the program (SIGSTOP) as the report arrives,
//! records the report, copies the directory into the trial's checkpoint for
//! that epoch, and lets it go on (SIGCONT); a
//! restart starts the program with that copy in a fresh directory.
//! A stop (pruned, budget reached, sweep shutting down) is SIGTERM to the
//! program's process group, then SIGKILL after `grace_seconds`. Exit 0 ends
//! the trial as completed; any other end is a crash, restarted.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::kind::{self, DataUse, KeyError, Model, Section};
use super::{Stop, TrainError, Trainable, TrialContext};
use crate::checkpoint::copy_tree;
use crate::config::fields::Keys;
use crate::config::Config;
use crate::data::DataError;
use crate::space::Domain;

/// `[model] kind = "command"`.
pub const KIND: kind::ModelKind =
    kind::ModelKind { name: "command", parse: |model| Ok(Box::new(CommandModel::take(model)?)), predictor: None };

/// Default seconds a stopped program has to exit after SIGTERM.
pub const DEFAULT_GRACE_SECONDS: f64 = 5.0;

/// `[model] kind = "command"`: the program, and how long it has to stop.
/// Every other key of `[model]` and `[train]` is one of its options.
#[derive(Debug, Clone)]
pub struct CommandModel {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Seconds between SIGTERM and SIGKILL when a trial stops.
    pub grace_seconds: f64,
    /// The directory it runs in: the config file's, once resolved.
    pub workdir: PathBuf,
}

impl CommandModel {
    /// Takes `command` and `grace_seconds` out of `[model]`.
    fn take(model: &mut Section) -> Result<Self, KeyError> {
        let bad = |message: String| ("model.command".to_owned(), message);
        let line = kind::take_text(model, "command")?
            .ok_or_else(|| bad("missing; expected the program to run, e.g. \"python3 train.py\"".into()))?;
        if line.contains('\0') {
            return Err(bad("a NUL byte, which no program or argument can hold".into()));
        }
        let argv = shlex::split(&line)
            .filter(|words| !words.is_empty())
            .ok_or_else(|| bad(format!("`{line}`: unbalanced quotes")))?;
        let grace_seconds = match model.remove("grace_seconds") {
            None => DEFAULT_GRACE_SECONDS,
            Some(Domain::Fixed(v)) if v.as_f64().is_some_and(|s| (0.0..=3600.0).contains(&s)) => {
                v.as_f64().unwrap_or(DEFAULT_GRACE_SECONDS)
            }
            Some(_) => return Err(("model.grace_seconds".into(), "expected a fixed number from 0 to 3600".into())),
        };
        Ok(CommandModel { argv, grace_seconds, workdir: PathBuf::from(".") })
    }
}

impl Model for CommandModel {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn model_keys(&self) -> Keys {
        Keys::Free
    }

    fn settings(&self) -> &'static [&'static str] {
        &["command", "grace_seconds"]
    }

    fn train_keys(&self) -> Keys {
        Keys::Free
    }

    fn metrics(&self) -> Option<&'static [&'static str]> {
        None
    }

    fn data(&self) -> DataUse {
        DataUse::Refused("not used by model.kind = \"command\": the program loads its own data; remove [data]")
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.workdir = base.to_owned();
    }

    fn check_files(&self) -> Result<(), KeyError> {
        let bad = |message: String| ("model.command".to_owned(), message);
        if !self.workdir.is_dir() {
            // Programs run in the config file's directory: gone (moved, or
            // a resume elsewhere), every trial would crash in turn.
            return Err(bad(format!(
                "runs in {}, the config file's directory, which does not exist (here) any more; put it back, or run \
                 from a copy of the config file",
                self.workdir.display()
            )));
        }
        find_program(&self.argv[0], &self.workdir).map(|_| ()).map_err(bad)
    }

    fn build(&self, _config: &Config) -> Result<Arc<dyn Trainable>, DataError> {
        Ok(Arc::new(CommandTrainable::new(self)))
    }

    fn boxed(&self) -> Box<dyn Model> {
        Box::new(self.clone())
    }
}

/// Where the program of `model.command` is: a path with a `/` is taken in
/// the directory it runs in (the config file's), a bare name on `PATH`,
/// as `execvp` would.
fn find_program(program: &str, workdir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let path = workdir.join(program);
        return if runnable(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("{} is not an executable file (chmod +x it, or name its interpreter first)", path.display()))
        } else {
            Err(format!("`{program}`: {} does not exist", path.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| runnable(p)).ok_or_else(|| {
        format!(
            "`{program}` is not found on PATH ({}); install it, or give its path",
            std::env::var("PATH").unwrap_or_default()
        )
    })
}

/// The program's files inside a trial checkpoint (beside Gauntlet's own
/// `checkpoint.json`, so that no name of the program's can clash with it).
pub const PROGRAM_DIR: &str = "program";

/// The longest stderr line quoted in a crash's error.
const QUOTE_CHARS: usize = 300;

/// The longest line read from the program: a longer one is no report; its
/// first [`TRUNCATED_HEAD`] bytes go to the log, the rest is skipped.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What the log keeps of a line longer than [`MAX_LINE_BYTES`].
const TRUNCATED_HEAD: usize = 4096;

/// The most output one attempt writes to `output.log`; past it, other
/// lines are counted and dropped (reports are still read).
pub const MAX_OUTPUT_BYTES: usize = 64 << 20;

/// Output gathered before it is sent to the log, at most.
const FLUSH_BYTES: usize = 64 << 10;

/// How long output is read after the program exited: what something it
/// started (in a session of its own, out of its killed group) still prints.
const AFTER_EXIT: Duration = Duration::from_secs(2);

/// Lines waiting between the reader threads and the trial: when they are
/// full, the readers wait, and so does a program that prints faster than
/// the trial can follow.
const LINES_IN_FLIGHT: usize = 256;

/// Runs the program of `[model] command` for each trial.
pub struct CommandTrainable {
    argv: Vec<String>,
    workdir: PathBuf,
    grace: Duration,
}

impl CommandTrainable {
    /// The program `[model]` names.
    pub fn new(model: &CommandModel) -> Self {
        CommandTrainable {
            argv: model.argv.clone(),
            workdir: model.workdir.clone(),
            grace: Duration::from_secs_f64(model.grace_seconds),
        }
    }
}

/// A line from the program.
enum Line {
    Out(String),
    Err(String),
    /// A line longer than [`MAX_LINE_BYTES`]: its head, for the log only.
    Long(String),
    /// Its stdout closed.
    Closed,
}

/// What goes to the trial's `output.log`: gathered, sent in pieces, and
/// capped at [`MAX_OUTPUT_BYTES`] an attempt.
#[derive(Default)]
struct Log {
    pending: String,
    written: usize,
    dropped: u64,
    flushed: Option<Instant>,
}

impl Log {
    fn line(&mut self, ctx: &mut TrialContext, text: &str) {
        if self.written + self.pending.len() + text.len() >= MAX_OUTPUT_BYTES {
            if self.dropped == 0 {
                self.pending.push_str(&format!(
                    "gauntlet: this attempt's output reached {} MiB; further lines are not logged (reports are \
                     still read)\n",
                    MAX_OUTPUT_BYTES >> 20
                ));
            }
            self.dropped += 1;
        } else {
            self.pending.push_str(text);
            self.pending.push('\n');
        }
        let due = self.flushed.is_none_or(|t| t.elapsed() > Duration::from_millis(200));
        if self.pending.len() >= FLUSH_BYTES || due {
            self.flush(ctx);
        }
    }

    fn flush(&mut self, ctx: &mut TrialContext) {
        if !self.pending.is_empty() {
            self.written += self.pending.len();
            ctx.output(&std::mem::take(&mut self.pending));
        }
        self.flushed = Some(Instant::now());
    }

    fn finish(&mut self, ctx: &mut TrialContext) {
        if self.dropped > 0 {
            self.pending.push_str(&format!("gauntlet: {} lines of output were not logged\n", self.dropped));
            self.dropped = 0;
        }
        self.flush(ctx);
    }
}

impl Trainable for CommandTrainable {
    fn train(&self, ctx: &mut TrialContext) -> Result<(), TrainError> {
        let prefix = format!("{}{}-", crate::files::scratch_prefix(crate::files::TRIAL_SCRATCH), ctx.id().0);
        let scratch = tempfile::Builder::new().prefix(&prefix).tempdir()?;
        let ckpt_dir = scratch.path().join("checkpoint");
        fs::create_dir(&ckpt_dir)?;
        if let Some(resume) = ctx.resume() {
            let saved = resume.dir.join(PROGRAM_DIR);
            if saved.is_dir() {
                copy_tree(&saved, &ckpt_dir)
                    .map_err(|e| TrainError::Failed(format!("restoring checkpoint {}: {e}", saved.display())))?;
            }
        }
        let params_file = scratch.path().join("params.json");
        fs::write(&params_file, serde_json::to_vec_pretty(ctx.params()).map_err(std::io::Error::other)?)?;

        let mut command = Command::new(&self.argv[0]);
        command.args(&self.argv[1..]).current_dir(&self.workdir);
        for (name, value) in ctx.params() {
            command.arg(format!("--{name}")).arg(value.exact());
        }
        let threads = ctx.threads().to_string();
        command
            .env("GAUNTLET_PARAMS", &params_file)
            .env("GAUNTLET_CHECKPOINT_DIR", &ckpt_dir)
            .env("GAUNTLET_TRIAL", ctx.id().0.to_string())
            .env("GAUNTLET_ATTEMPT", ctx.attempt().to_string())
            .env("GAUNTLET_SEED", ctx.seed().to_string())
            .env("GAUNTLET_MAX_EPOCHS", ctx.max_epochs().to_string())
            .env("GAUNTLET_FIRST_EPOCH", ctx.first_epoch().to_string())
            .env("GAUNTLET_THREADS", &threads)
            .env("PYTHONUNBUFFERED", "1")
            // The cluster's secret and the daemon's token are this process's, not the program's.
            .env_remove("GAUNTLET_SECRET")
            .env_remove("GAUNTLET_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            command.env("OMP_NUM_THREADS", &threads);
        }
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        // The program dies with the thread that started it, so a killed
        // worker leaves no program behind.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        if !self.workdir.is_dir() {
            return Err(TrainError::Failed(format!(
                "{} does not exist here: command trials run in the config file's directory, which must exist \
                 (with the program) on every worker machine",
                self.workdir.display()
            )));
        }
        let child = command.spawn().map_err(|e| {
            let message = format!("cannot start `{}` in {}: {e}", self.argv[0], self.workdir.display());
            match e.kind() {
                // The program itself is missing or not executable: no restart will help.
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => TrainError::Invalid(message),
                _ => TrainError::Failed(message),
            }
        })?;
        let mut program = Program::new(child, self.grace);
        let lines = program.lines();
        let outcome = self.follow(ctx, &mut program, &lines, &ckpt_dir);
        // What it prints while it stops is dropped, never left to block it.
        std::thread::spawn(move || lines.iter().for_each(drop));
        program.terminate();
        outcome
    }
}

impl CommandTrainable {
    /// Reads the program's lines until it ends or the trial must stop.
    fn follow(
        &self,
        ctx: &mut TrialContext,
        program: &mut Program,
        lines: &Receiver<Line>,
        ckpt_dir: &Path,
    ) -> Result<(), TrainError> {
        let mut snapshot = fingerprint(ckpt_dir);
        let mut last_epoch = ctx.first_epoch() - 1;
        let mut reported = 0u32;
        let mut log = Log::default();
        let mut stderr_tail: Vec<String> = Vec::new();
        let mut exited_at: Option<Instant> = None;
        loop {
            if ctx.cancelled() {
                log.finish(ctx);
                return Err(TrainError::Stopped(Stop::Cancelled));
            }
            // Exited, but its stdout is still open: something it started
            // holds it (the group was killed on exit, but a process of its
            // own session is not in it). Read what is left for up to
            // [`AFTER_EXIT`], however fast that something prints.
            if program.exited() && exited_at.get_or_insert_with(Instant::now).elapsed() > AFTER_EXIT {
                break;
            }
            let line = match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    log.flush(ctx);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => Line::Closed,
            };
            let text = match line {
                Line::Err(text) => {
                    stderr_tail.push(quotable(&text));
                    if stderr_tail.len() > 5 {
                        stderr_tail.remove(0);
                    }
                    log.line(ctx, &text);
                    continue;
                }
                Line::Long(text) => {
                    log.line(ctx, &text);
                    continue;
                }
                Line::Closed => break,
                Line::Out(text) => text,
            };
            let (epoch, metrics) = match parse_report(&text, last_epoch) {
                Ok(Some(report)) => report,
                Ok(None) => {
                    log.line(ctx, &text);
                    continue;
                }
                Err(why) => {
                    log.line(ctx, &text);
                    log.finish(ctx);
                    return Err(TrainError::Invalid(format!("{why}; the line: {}", quotable(&text))));
                }
            };
            log.flush(ctx);
            if epoch <= last_epoch {
                log.line(
                    ctx,
                    &format!(
                        "gauntlet: ignored the report of epoch {epoch}: epoch {last_epoch} was already reported \
                         (resume from GAUNTLET_CHECKPOINT_DIR, or start at GAUNTLET_FIRST_EPOCH)"
                    ),
                );
                continue;
            }
            last_epoch = epoch;
            reported += 1;
            // A changed directory holds this epoch's checkpoint: hold the
            // program still from now until it is copied, so that it cannot
            // start writing the next one in between.
            let now = fingerprint(ckpt_dir);
            let changed = now != snapshot && !now.is_empty();
            if changed {
                program.pause();
            }
            let named: Vec<(&str, f64)> = metrics.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            let verdict = ctx.report(epoch, &named);
            let keep =
                matches!(verdict, Ok(()) | Err(TrainError::Stopped(Stop::Completed | Stop::Cancelled | Stop::Paused)));
            if changed {
                let saved = if keep {
                    Some(ctx.save_checkpoint(epoch, |dir| {
                        let into = dir.join(PROGRAM_DIR);
                        fs::create_dir(&into)?;
                        copy_tree(ckpt_dir, &into)
                    }))
                } else {
                    None
                };
                program.resume();
                if let Some(saved) = saved {
                    saved?;
                    snapshot = now;
                }
            }
            match verdict {
                Err(TrainError::Stopped(Stop::Completed)) => {
                    // The budget is spent: the program may end on its own
                    // (its last lines still go to the log).
                    let deadline = Instant::now() + self.grace;
                    while !program.exited() && Instant::now() < deadline && !ctx.cancelled() {
                        if let Ok(Line::Out(text) | Line::Err(text) | Line::Long(text)) =
                            lines.recv_timeout(Duration::from_millis(20))
                        {
                            log.line(ctx, &text);
                        }
                    }
                    while let Ok(Line::Out(text) | Line::Err(text) | Line::Long(text)) = lines.try_recv() {
                        log.line(ctx, &text);
                    }
                    log.finish(ctx);
                    return verdict;
                }
                Err(_) => {
                    log.finish(ctx);
                    return verdict;
                }
                Ok(()) => {}
            }
        }
        // Its stdout is closed: wait for the exit (a program may close
        // stdout early), still logging its stderr (a full pipe would block
        // it for ever) and obeying a stop; then read what stderr still
        // holds, for at most [`AFTER_EXIT`].
        let mut exited_at = None;
        let mut status = None;
        loop {
            match lines.recv_timeout(Duration::from_millis(50)) {
                Ok(Line::Err(text) | Line::Out(text) | Line::Long(text)) => {
                    stderr_tail.push(quotable(&text));
                    if stderr_tail.len() > 5 {
                        stderr_tail.remove(0);
                    }
                    log.line(ctx, &text);
                }
                Ok(Line::Closed) => {}
                Err(RecvTimeoutError::Timeout) => log.flush(ctx),
                Err(RecvTimeoutError::Disconnected) if status.is_some() => break,
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(10)),
            }
            if status.is_none() {
                status = program.wait_for(Duration::ZERO);
            }
            if status.is_some() && exited_at.get_or_insert_with(Instant::now).elapsed() > AFTER_EXIT {
                break;
            }
            if status.is_none() && ctx.cancelled() {
                log.finish(ctx);
                return Err(TrainError::Stopped(Stop::Cancelled));
            }
        }
        let Some(status) = status else { unreachable!("the loop ends once the program has exited") };
        log.finish(ctx);
        if status.success() && reported == 0 && ctx.first_epoch() <= ctx.max_epochs() {
            return Err(TrainError::Invalid(format!(
                "`{}` exited 0 without a report; print one JSON object per epoch on stdout, e.g. \
                 {{\"epoch\": 1, \"{}\": 0.5}}",
                self.argv.join(" "),
                ctx.settings().metric
            )));
        }
        if status.success() {
            return Ok(());
        }
        let tail = if stderr_tail.is_empty() {
            String::new()
        } else {
            format!("; its last stderr: {}", stderr_tail.join(" | "))
        };
        Err(TrainError::Failed(format!("program {} after epoch {last_epoch}{tail}", describe_exit(status))))
    }
}

/// The most metrics one report may carry: each is journaled, and held by
/// the leaderboard for as long as the experiment is.
pub const MAX_METRICS: usize = 256;

/// The longest metric name a report may use.
pub const MAX_METRIC_NAME: usize = 200;

/// A report as its line gives it: the epoch and the named metrics.
type Parsed = (u32, Vec<(String, f64)>);

/// A report line: a JSON object with a numeric `epoch` or at least one
/// numeric field; the epoch defaults to the one after the last. `Ok(None)`
/// is a line of output; `Err` a line meant as a report that cannot be one
/// (an `epoch` that is no epoch number, a reserved or endless metric list),
/// which fails the trial with the reason rather than vanish into the log.
fn parse_report(text: &str, last_epoch: u32) -> Result<Option<Parsed>, String> {
    let trimmed = text.trim();
    if !trimmed.starts_with('{') {
        return Ok(None);
    }
    // Python's json.dumps writes NaN and Infinity, which JSON lacks: a
    // diverged metric must still be seen, so read them as strings.
    let parsed = serde_json::from_str(trimmed).ok().or_else(|| serde_json::from_str(&quote_non_finite(trimmed)).ok());
    let Some(serde_json::Value::Object(map)) = parsed else { return Ok(None) };
    let epoch = match map.get("epoch") {
        None => last_epoch.saturating_add(1),
        Some(e) => match e.as_f64().filter(|x| x.fract() == 0.0 && *x >= 1.0) {
            Some(x) if x <= f64::from(u32::MAX) => x as u32,
            _ => {
                return Err(format!(
                    "a report's `epoch` is {e}: expected a whole number from 1 to max_epochs (the epoch it reports)"
                ))
            }
        },
    };
    let metrics: Vec<(String, f64)> =
        map.iter().filter(|(k, _)| *k != "epoch").filter_map(|(k, v)| Some((k.clone(), number(v)?))).collect();
    if metrics.len() > MAX_METRICS {
        return Err(format!("a report of {} metrics: expected at most {MAX_METRICS}", metrics.len()));
    }
    if let Some((name, _)) = metrics.iter().find(|(n, _)| n.len() > MAX_METRIC_NAME || n.is_empty()) {
        return Err(format!(
            "a metric named `{}`: expected a name of 1 to {MAX_METRIC_NAME} bytes",
            name.chars().take(40).collect::<String>()
        ));
    }
    if let Some((name, _)) = metrics.iter().find(|(n, _)| crate::run_dir::RESERVED_NAMES.contains(&n.as_str())) {
        return Err(format!(
            "a metric named `{name}`, which results.jsonl and leaderboard.csv use for their own columns ({}): \
             rename it",
            crate::run_dir::RESERVED_NAMES.join(", ")
        ));
    }
    Ok((!metrics.is_empty()).then_some((epoch, metrics)))
}

/// `text` with the bare `NaN`, `Infinity` and `-Infinity` that Python
/// writes made strings, outside string literals only.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            match c {
                '\\' => {
                    let escaped: String = rest.chars().take(2).collect();
                    out.push_str(&escaped);
                    rest = &rest[escaped.len()..];
                    continue;
                }
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some((word, quoted)) = [("-Infinity", "\"-inf\""), ("Infinity", "\"inf\""), ("NaN", "\"nan\"")]
            .into_iter()
            .find(|(w, _)| rest.starts_with(w))
        {
            out.push_str(quoted);
            rest = &rest[word.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// What a crash's error quotes of a stderr line: the text after its last
/// carriage return (progress bars redraw with `\r`), at most [`QUOTE_CHARS`].
fn quotable(line: &str) -> String {
    let shown = line.rsplit('\r').find(|p| !p.trim().is_empty()).unwrap_or("");
    match shown.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &shown[..cut]),
        None => shown.to_owned(),
    }
}

/// A metric's value: a number, or NaN/Infinity as Python writes them.
fn number(v: &serde_json::Value) -> Option<f64> {
    match v.as_str() {
        Some("nan") => Some(f64::NAN),
        Some("inf") => Some(f64::INFINITY),
        Some("-inf") => Some(f64::NEG_INFINITY),
        Some(_) => None,
        None => v.as_f64(),
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by {}", crate::cluster::local::signal_name(sig)),
        _ => status.to_string(),
    }
}

/// The process groups of the programs running in this process.
static GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Kills every program this process runs, with its whole process group:
/// for a worker that lost its coordinator and exits now.
pub fn kill_programs() {
    let groups = GROUPS.lock().map(|g| g.clone()).unwrap_or_default();
    for group in groups {
        // SAFETY: plain syscall; each group is a program's own, not yet reaped.
        unsafe { libc::killpg(group, libc::SIGKILL) };
    }
}

fn forget_group(group: i32) {
    if let Ok(mut g) = GROUPS.lock() {
        g.retain(|&x| x != group);
    }
}

/// The running program: its process group, signalled as a whole.
struct Program {
    child: Child,
    grace: Duration,
    status: Option<ExitStatus>,
}

impl Program {
    fn new(child: Child, grace: Duration) -> Self {
        if let Ok(mut g) = GROUPS.lock() {
            g.push(child.id() as i32);
        }
        Program { child, grace, status: None }
    }

    /// Its stdout and stderr, line by line, from two reader threads.
    fn lines(&mut self) -> Receiver<Line> {
        let (tx, rx) = crossbeam_channel::bounded(LINES_IN_FLIGHT);
        if let Some(out) = self.child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                read_lines(out, |l| tx.send(l.map_or_else(Line::Long, Line::Out)).is_ok());
                let _ = tx.send(Line::Closed);
            });
        }
        if let Some(err) = self.child.stderr.take() {
            std::thread::spawn(move || read_lines(err, |l| tx.send(l.map_or_else(Line::Long, Line::Err)).is_ok()));
        }
        rx
    }

    fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: plain syscall; the group is the child's own (process_group(0)).
            unsafe { libc::killpg(self.child.id() as i32, sig) };
        }
    }

    fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Whether the program has exited (and was reaped). On exit, what is
    /// left of its process group is killed first, while the dead program
    /// still holds the group's id (a zombie is not reaped by `waitid` with
    /// `WNOWAIT`), so the id cannot name anyone else's group yet.
    fn exited(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        // SAFETY: an all-zero siginfo_t is valid; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: plain syscall on our own child.
        let r = unsafe { libc::waitid(libc::P_PID, self.child.id(), &mut info, flags) };
        // SAFETY: si_pid is set by waitid (0 when the child has not exited).
        if r != 0 || unsafe { info.si_pid() } == 0 {
            return false;
        }
        // SAFETY: the group is the program's own (process_group(0)); it may be empty.
        unsafe { libc::killpg(self.child.id() as i32, libc::SIGKILL) };
        forget_group(self.child.id() as i32);
        self.status = self.child.wait().ok();
        true
    }

    /// Waits up to `limit` for the program to exit.
    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.status
    }

    /// SIGTERM to the group, SIGKILL after the grace period; reaps the
    /// program (and kills what is left of its group, see [`Program::exited`]).
    fn terminate(&mut self) {
        if self.exited() {
            return;
        }
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        if self.wait_for(self.grace).is_none() {
            self.signal(libc::SIGKILL);
            while !self.exited() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // A panic (chaos, a bug) on the way out must not leave the program running.
        if self.status.is_none() {
            self.signal(libc::SIGKILL);
            forget_group(self.child.id() as i32);
            self.status = self.child.wait().ok();
        }
    }
}

/// Calls `each` with every line of `stream` (without its end), or with
/// `Err(head)` for a line longer than [`MAX_LINE_BYTES`]: its first bytes and
/// a note; the rest of such a line is read and dropped, so memory stays
/// bounded whatever the program prints.
fn read_lines(stream: impl Read, mut each: impl FnMut(Result<String, String>) -> bool) {
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut line: Vec<u8> = Vec::new();
    // Bytes of the current line past the limit (it was sent as too long).
    let mut skipped: Option<usize> = None;
    loop {
        let chunk = match reader.fill_buf() {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (part, end) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        let used = end.unwrap_or(part.len());
        match &mut skipped {
            Some(n) => *n += part.len(),
            None if line.len() + part.len() > MAX_LINE_BYTES => {
                line.extend_from_slice(&part[..MAX_LINE_BYTES.saturating_sub(line.len()).min(part.len())]);
                let head = String::from_utf8_lossy(&line[..TRUNCATED_HEAD.min(line.len())]).into_owned();
                let note = format!(
                    "{head}… [gauntlet: a line longer than {} MiB: truncated here, not read as a report]",
                    MAX_LINE_BYTES >> 20
                );
                line.clear();
                skipped = Some(0);
                if !each(Err(note)) {
                    return;
                }
            }
            None => line.extend_from_slice(part),
        }
        reader.consume(used);
        // A line that ends here was sent already when it was too long.
        if end.is_some() && skipped.take().is_none() {
            let text = String::from_utf8_lossy(&line).trim_end_matches('\r').to_owned();
            line.clear();
            if !each(Ok(text)) {
                return;
            }
        }
    }
    if skipped.is_none() && !line.is_empty() {
        each(Ok(String::from_utf8_lossy(&line).trim_end_matches('\r').to_owned()));
    }
}

/// The files of a directory tree with their sizes and modification times:
/// equal fingerprints mean nothing was written.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_json_objects_with_numbers() {
        let report = |text: &str, last: u32| parse_report(text, last).unwrap();
        let (epoch, metrics) = report(r#"{"epoch": 3, "val_accuracy": 0.87, "note": "x"}"#, 0).unwrap();
        assert_eq!(epoch, 3);
        assert_eq!(metrics, vec![("val_accuracy".to_owned(), 0.87)]);
        assert_eq!(report(r#"{"loss": 1.5}"#, 4).unwrap().0, 5, "the epoch defaults to the next");
        assert_eq!(report(r#"{"epoch": 2.0, "loss": 1}"#, 0).unwrap().0, 2, "2.0 is the whole number 2");
        assert!(report("loss 1.5", 0).is_none());
        assert!(report(r#"{"msg": "starting"}"#, 0).is_none(), "no numbers: a log line");
        assert!(report(r#"{"epoch": 2, "loss": 1"#, 0).is_none(), "broken JSON is output");
        let (_, m) = report(r#"{"epoch": 2, "loss": NaN, "gain": -Infinity}"#, 0).unwrap();
        assert!(m[1].1.is_nan() && m[0].1 == f64::NEG_INFINITY, "Python's NaN and Infinity are read: {m:?}");
        // Only outside strings: a note that mentions NaN does not hide the report.
        let (_, m) = report(r#"{"epoch": 2, "loss": NaN, "note": "loss became NaN \" Infinity"}"#, 0).unwrap();
        assert!(m.len() == 1 && m[0].1.is_nan(), "{m:?}");
        // A line meant as a report that cannot be one is an error, not output.
        for bad in ["0", "-1", "2.5", "\"2\"", "null", "1e10", "4294967296"] {
            let e = parse_report(&format!(r#"{{"epoch": {bad}, "loss": 0.4}}"#), 1).unwrap_err();
            assert!(e.contains("expected a whole number from 1 to max_epochs"), "{bad}: {e}");
        }
        let e = parse_report(r#"{"epoch": 1, "trial": 7, "loss": 0.4}"#, 0).unwrap_err();
        assert!(e.contains("a metric named `trial`"), "{e}");
        let wide: Vec<String> = (0..=MAX_METRICS).map(|i| format!("\"m{i}\": 1")).collect();
        let e = parse_report(&format!("{{{}}}", wide.join(", ")), 0).unwrap_err();
        assert!(e.contains("257 metrics: expected at most 256"), "{e}");
        assert_eq!(quotable("10%\r50%\r100% done"), "100% done");
        assert_eq!(quotable(&"x".repeat(1000)).chars().count(), QUOTE_CHARS + 1);
    }

    #[test]
    fn long_lines_are_cut_and_skipped_with_bounded_memory() {
        let mut input = b"first\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE_BYTES + 7));
        input.extend_from_slice(b"\n{\"epoch\": 1, \"loss\": 0.5}\nlast without end");
        let mut got = Vec::new();
        read_lines(&input[..], |l| {
            got.push(l);
            true
        });
        assert_eq!(
            got.len(),
            4,
            "{:?}",
            got.iter().map(|l| l.as_ref().map_or_else(|e| e.len(), |o| o.len())).collect::<Vec<_>>()
        );
        assert_eq!(got[0], Ok("first".to_owned()));
        let long = got[1].as_ref().unwrap_err();
        assert!(long.len() < TRUNCATED_HEAD + 200 && long.contains("truncated"), "{}", &long[long.len() - 100..]);
        assert_eq!(got[2], Ok(r#"{"epoch": 1, "loss": 0.5}"#.to_owned()), "the next line is read whole");
        assert_eq!(got[3], Ok("last without end".to_owned()));
        // A stream that never ends its line gives one note, whatever its length.
        let endless = vec![b'y'; 5 * MAX_LINE_BYTES];
        let mut n = 0;
        read_lines(&endless[..], |l| {
            assert!(l.is_err());
            n += 1;
            true
        });
        assert_eq!(n, 1);
    }
}
