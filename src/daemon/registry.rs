//! The daemon's experiments: one run directory each under
//! `STATE/experiments/<id>/`, hosted on one engine. What the API lists is
//! kept here, updated from each experiment's event stream, so that a read
//! never has to walk a leaderboard; the leaderboard itself is asked only
//! for one experiment's detail.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use tokio::sync::broadcast;

use super::ApiError;
use crate::config::{Config, ConfigFormat};
use crate::engine::{self, Engine, Opened, Run};
use crate::space::Mode;
use crate::supervision::{rank, ExperimentHandle, SweepEvent};
use crate::trial::{Trial, TrialId, TrialStatus};

/// Experiments one daemon hosts at most (running and finished).
pub const MAX_EXPERIMENTS: usize = 1000;

/// Events each experiment keeps for clients that reconnect.
pub const RING: usize = 1024;

/// Points of the best-value-over-time line kept per experiment.
const MAX_BEST_POINTS: usize = 2000;

/// Where an experiment stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Its trials run (or wait for slots).
    Running,
    /// Stopped by a pause: resumable.
    Paused,
    /// Stopped by a cancel.
    Cancelled,
    /// It ran to its end.
    Finished,
    /// It could not run: its run directory or journal is broken, or the engine failed it.
    Failed(String),
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Cancelled => "cancelled",
            Phase::Finished => "finished",
            Phase::Failed(_) => "failed",
        }
    }
}

/// One server-sent event, as every client gets it.
#[derive(Debug)]
pub struct Sse {
    /// Its number within the experiment in this life of the daemon (the
    /// `id:` line is `LIFE-NUMBER`).
    pub seq: u64,
    /// `report`, `trial` or `state`.
    pub kind: &'static str,
    /// The JSON.
    pub data: String,
}

/// What a client that reconnects gets: the events it missed (`None` when
/// some are no longer kept), the stream of those to come, and the number
/// of the last event now.
pub struct Backlog {
    /// Missed events still kept.
    pub kept: Option<Vec<Arc<Sse>>>,
    /// Events to come.
    pub live: broadcast::Receiver<Arc<Sse>>,
    /// The last event's number.
    pub now: u64,
}

/// What the API lists about an experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// Its id.
    pub id: String,
    /// `experiment.name`.
    pub name: String,
    /// `running`, `paused`, `cancelled`, `finished`, `failed`.
    pub status: &'static str,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The metric and its direction.
    pub metric: String,
    /// `max` or `min`.
    pub mode: Mode,
    /// The best value so far.
    pub best: Option<f64>,
    /// The trial that has it.
    pub best_trial: Option<u32>,
    /// Trials by status.
    pub trials: BTreeMap<&'static str, u32>,
    /// Trials in all (of `max_trials`).
    pub total_trials: u32,
    /// `experiment.max_trials`.
    pub max_trials: u32,
    /// Reports received.
    pub reports: u64,
    /// Trials it may run at once.
    pub concurrency: u32,
    /// `experiment.priority`.
    pub priority: i32,
}

struct Inner {
    phase: Phase,
    statuses: Vec<TrialStatus>,
    best: Option<(f64, u32)>,
    reports: u64,
    concurrency: u32,
    /// (seconds the experiment had run, best value then): the best over time.
    best_over_time: Vec<(f64, f64)>,
    ring: VecDeque<Arc<Sse>>,
    seq: u64,
    handle: Option<ExperimentHandle>,
    /// A stop asked of the running experiment: `Some(true)` a cancel, `Some(false)` a pause.
    stopping: Option<bool>,
    /// A resume asked while a pause was under way: it continues once paused.
    resume_after: bool,
    /// A concurrency set while no run held the experiment: the next run takes it.
    concurrency_pending: Option<u32>,
    /// The trials at the end (or as the journal had them, for one that does not run).
    trials: Option<Vec<Trial>>,
}

/// One hosted experiment.
pub struct Entry {
    /// Its id (its directory's name).
    pub id: String,
    /// Its run directory.
    pub dir: PathBuf,
    config: Config,
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Arc<Sse>>,
}

impl Entry {
    /// Its config's `[model] kind`.
    pub fn model_kind(&self) -> &'static str {
        self.config.model.kind()
    }

    fn new(id: String, dir: PathBuf, config: Config, phase: Phase, trials: Option<Vec<Trial>>) -> Arc<Entry> {
        let concurrency = config.experiment.slots();
        let entry = Arc::new(Entry {
            id,
            dir,
            config,
            inner: Mutex::new(Inner {
                phase: Phase::Running,
                statuses: Vec::new(),
                best: None,
                reports: 0,
                concurrency,
                best_over_time: Vec::new(),
                ring: VecDeque::new(),
                seq: 0,
                handle: None,
                stopping: None,
                resume_after: false,
                concurrency_pending: None,
                trials: None,
            }),
            feed: broadcast::channel(RING).0,
        });
        if let Some(t) = &trials {
            entry.absorb(t);
        }
        let mut inner = entry.lock();
        inner.trials = trials;
        inner.phase = phase;
        drop(inner);
        entry
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many trials it has proposed.
    pub fn trial_count(&self) -> usize {
        self.lock().statuses.len()
    }

    /// Its metric and direction.
    pub fn metric(&self) -> (&str, Mode) {
        (&self.config.experiment.metric, self.config.experiment.mode)
    }

    /// What the list shows.
    pub fn listing(&self) -> Listing {
        let inner = self.lock();
        let mut trials = BTreeMap::new();
        for s in &inner.statuses {
            *trials.entry(s.as_str()).or_insert(0) += 1;
        }
        let e = &self.config.experiment;
        Listing {
            id: self.id.clone(),
            name: e.name.clone(),
            status: inner.phase.name(),
            error: match &inner.phase {
                Phase::Failed(e) => Some(e.clone()),
                _ => None,
            },
            metric: e.metric.clone(),
            mode: e.mode,
            best: inner.best.map(|b| b.0),
            best_trial: inner.best.map(|b| b.1),
            trials,
            total_trials: inner.statuses.len() as u32,
            max_trials: e.max_trials,
            reports: inner.reports,
            concurrency: inner.concurrency,
            priority: e.priority,
        }
    }

    /// The best value over time: (seconds run, best then).
    pub fn best_over_time(&self) -> Vec<(f64, f64)> {
        self.lock().best_over_time.clone()
    }

    /// Its trials now: the leaderboard's while it runs, else the last known.
    pub async fn trials(&self) -> Vec<Trial> {
        let (handle, known) = {
            let inner = self.lock();
            (inner.handle.clone(), inner.trials.clone())
        };
        match handle {
            Some(h) => h.trials().await,
            None => known.unwrap_or_default(),
        }
    }

    /// Events after `after` still kept, and a receiver of those to come
    /// (subscribed first, so that none falls between); `None` for the
    /// events when some after `after` were dropped already. With them, the
    /// last event's number now (an `after` beyond it means "from now on").
    pub fn events_after(&self, after: u64) -> Backlog {
        let live = self.feed.subscribe();
        let inner = self.lock();
        let kept: Vec<Arc<Sse>> = inner.ring.iter().filter(|e| e.seq > after).cloned().collect();
        // An `after` beyond the last number (a bare number from another
        // life of the daemon, whose numbers restart): a reset, not a silent skip.
        let complete = after == inner.seq || kept.first().is_some_and(|e| e.seq == after + 1);
        Backlog { kept: complete.then_some(kept), live, now: inner.seq }
    }

    /// The handle, while it runs.
    pub fn handle(&self) -> Option<ExperimentHandle> {
        self.lock().handle.clone()
    }

    fn publish(&self, inner: &mut Inner, kind: &'static str, mut data: serde_json::Value) {
        inner.seq += 1;
        if let Some(o) = data.as_object_mut() {
            o.insert("seq".into(), inner.seq.into());
            o.insert("experiment".into(), self.id.clone().into());
        }
        let sse = Arc::new(Sse { seq: inner.seq, kind, data: data.to_string() });
        if inner.ring.len() == RING {
            inner.ring.pop_front();
        }
        inner.ring.push_back(sse.clone());
        let _ = self.feed.send(sse);
    }

    fn set_phase(&self, phase: Phase) {
        let mut inner = self.lock();
        self.set_phase_locked(&mut inner, phase);
    }

    /// [`set_phase`](Self::set_phase) under a lock the caller holds.
    fn set_phase_locked(&self, inner: &mut Inner, phase: Phase) {
        inner.phase = phase;
        let data = serde_json::json!({ "status": inner.phase.name(), "error": match &inner.phase {
            Phase::Failed(e) => Some(e.clone()),
            _ => None,
        }});
        self.publish(inner, "state", data);
    }

    /// Counts and best from a table of trials.
    fn absorb(&self, trials: &[Trial]) {
        let mode = self.config.experiment.mode;
        let mut inner = self.lock();
        inner.statuses = trials.iter().map(|t| t.status).collect();
        inner.reports = inner.reports.max(trials.iter().map(|t| u64::from(t.epochs)).sum());
        if let Some(best) = rank(trials, mode).first() {
            if let Some(v) = best.best_metric {
                inner.best = Some((v, best.id.0));
            }
        }
    }

    /// One event of the running experiment.
    fn on_event(&self, timed: &crate::supervision::Timed) {
        let mode = self.config.experiment.mode;
        let mut inner = self.lock();
        let set = |inner: &mut Inner, id: TrialId, status: TrialStatus| {
            let i = id.0 as usize;
            if i >= inner.statuses.len() && i <= self.config.experiment.max_trials as usize {
                inner.statuses.resize(i + 1, TrialStatus::Pending);
            }
            if let Some(s) = inner.statuses.get_mut(i) {
                *s = status;
            }
        };
        let kind = match &timed.event {
            SweepEvent::Proposed { id } => {
                set(&mut inner, *id, TrialStatus::Pending);
                "trial"
            }
            SweepEvent::Started { id, .. } => {
                set(&mut inner, *id, TrialStatus::Running);
                "trial"
            }
            SweepEvent::Ended { id, status, .. } => {
                set(&mut inner, *id, *status);
                "trial"
            }
            SweepEvent::Reported { id, value, at, .. } => {
                inner.reports += 1;
                if let Some(v) = value.filter(|v| v.is_finite()) {
                    if inner.best.is_none_or(|(b, _)| mode.score(v) > mode.score(b)) {
                        inner.best = Some((v, id.0));
                        if inner.best_over_time.len() < MAX_BEST_POINTS {
                            inner.best_over_time.push((at.elapsed_ms as f64 / 1000.0, v));
                        }
                    }
                }
                "report"
            }
            SweepEvent::Restarting { .. } | SweepEvent::Preempted { .. } => "trial",
        };
        let mut data = serde_json::to_value(&timed.event).unwrap_or_default();
        if let Some(o) = data.as_object_mut() {
            o.insert("at".into(), timed.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into());
            o.insert("elapsed_s".into(), timed.elapsed.as_secs_f64().into());
            if let SweepEvent::Reported { at, .. } = &timed.event {
                o.insert("elapsed_s".into(), (at.elapsed_ms as f64 / 1000.0).into());
            }
        }
        self.publish(&mut inner, kind, data);
    }
}

/// A marker file in a run directory: why the daemon does not continue it.
const STOPPED_FILE: &str = "daemon-stopped";

/// A file in a run directory: the concurrency last set through the API,
/// which outlives a pause and a restart of the daemon.
const CONCURRENCY_FILE: &str = "daemon-concurrency";

/// The concurrency stored in `dir`, if one was set (and is in range).
fn stored_concurrency(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join(CONCURRENCY_FILE)).ok()?;
    text.trim().parse::<u32>().ok().filter(|n| (1..=crate::config::MAX_CONCURRENCY).contains(n))
}

/// All experiments of one daemon.
pub struct Registry {
    engine: Engine,
    root: PathBuf,
    entries: RwLock<BTreeMap<String, Arc<Entry>>>,
    next: AtomicU32,
    /// Experiments listed plus submissions under way: a place is taken
    /// before a submission's first await, so that concurrent submissions
    /// cannot pass [`MAX_EXPERIMENTS`] between the check and the insert.
    places: AtomicUsize,
    /// This life of the daemon: random, the first part of every event id,
    /// so that a client's `Last-Event-ID` from an earlier life is known as such.
    life: String,
    /// Experiments to resume once their pause is done (a resume that came
    /// while it was under way), for the task [`open`](Self::open) starts.
    resumes: tokio::sync::mpsc::UnboundedSender<Arc<Entry>>,
    /// The daemon is shutting down: nothing is resumed any more.
    closing: std::sync::atomic::AtomicBool,
    /// Concurrency changes, one at a time (the file and memory agree).
    concurrency_writes: tokio::sync::Mutex<()>,
}

/// A place taken for a submission; given back unless the experiment is listed.
struct Place<'a>(&'a AtomicUsize, bool);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Registry {
    /// Experiments live under `root`; those found there are listed, and
    /// the unfinished ones continue (unless paused or cancelled).
    pub async fn open(engine: Engine, root: PathBuf) -> Result<Arc<Registry>, ApiError> {
        let dirs = {
            let root = root.clone();
            tokio::task::spawn_blocking(move || list_dirs(&root)).await.map_err(ApiError::internal)??
        };
        // Numbered after every directory, listed or not: a new id never meets an old one.
        let next = dirs.iter().filter_map(|d| d.split('-').next()?.parse::<u32>().ok()).max().unwrap_or(0) + 1;
        if dirs.len() > MAX_EXPERIMENTS {
            tracing::warn!(
                "{} holds {} experiments; this daemon lists the oldest {MAX_EXPERIMENTS}, and not {} to {}: move \
                 finished ones elsewhere and restart it",
                root.display(),
                dirs.len(),
                dirs[MAX_EXPERIMENTS],
                dirs[dirs.len() - 1]
            );
        }
        let dirs: Vec<String> = dirs.into_iter().take(MAX_EXPERIMENTS).collect();
        let (resumes, mut to_resume) = tokio::sync::mpsc::unbounded_channel::<Arc<Entry>>();
        let registry = Arc::new(Registry {
            engine,
            root,
            entries: RwLock::new(BTreeMap::new()),
            next: AtomicU32::new(next),
            places: AtomicUsize::new(dirs.len()),
            life: crate::cluster::node::random_secret()[..8].to_owned(),
            resumes,
            closing: std::sync::atomic::AtomicBool::new(false),
            concurrency_writes: tokio::sync::Mutex::new(()),
        });
        // Weak: the registry is unwrapped at shutdown.
        let weak = Arc::downgrade(&registry);
        tokio::spawn(async move {
            while let Some(entry) = to_resume.recv().await {
                let Some(registry) = weak.upgrade() else { break };
                if registry.closing.load(Ordering::SeqCst) {
                    break;
                }
                if let Err(e) = registry.resume(&entry).await {
                    tracing::error!(experiment = %entry.id, "cannot resume after the pause: {e}");
                }
            }
        });
        for id in dirs {
            registry.restore(id).await;
        }
        Ok(registry)
    }

    /// This life of the daemon, the first part of every event id
    /// (`LIFE-NUMBER`); event numbers start again with each life.
    pub fn life(&self) -> &str {
        &self.life
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.entries.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.entries.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every experiment, oldest first.
    pub fn all(&self) -> Vec<Arc<Entry>> {
        self.read().values().cloned().collect()
    }

    /// One experiment by id (`None` for an id never issued: nothing on disk is looked up).
    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.read().get(id).cloned()
    }

    /// Takes an experiment: validates the config as `validate` does, creates
    /// its run directory, and starts it. Returns its id.
    pub async fn submit(
        self: &Arc<Self>,
        text: String,
        format: ConfigFormat,
        base: Option<PathBuf>,
    ) -> Result<String, ApiError> {
        if self
            .places
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < MAX_EXPERIMENTS).then_some(n + 1))
            .is_err()
        {
            return Err(ApiError::conflict(format!(
                "this daemon hosts {MAX_EXPERIMENTS} experiments, its most; move finished ones out of its state \
                 directory and restart it"
            )));
        }
        let mut place = Place(&self.places, false);
        let ext = match format {
            ConfigFormat::Toml => "toml",
            ConfigFormat::Yaml => "yaml",
            ConfigFormat::Json => "json",
        };
        let me = Arc::clone(self);
        let (run, id) = tokio::task::spawn_blocking(move || -> Result<(Run, String), ApiError> {
            let config = Config::parse(&text, format, Path::new("request body")).map_err(ApiError::bad_config)?;
            let seq = me.next.fetch_add(1, Ordering::Relaxed);
            let root = &me.root;
            let id = format!("{seq:04}-{}", slug(&config.experiment.name));
            let dir = root.join(&id);
            // Relative paths (data, a module, the directory a command runs in) resolve
            // against the config file's directory when the client named it, else against
            // the run directory. The journal records it, so a restart resolves them alike.
            let base = match base {
                Some(b) if !b.is_dir() => {
                    return Err(ApiError::bad_request(format!(
                        "dir {}: not a directory on the daemon's machine",
                        b.display()
                    )))
                }
                Some(b) => b,
                None => dir.clone(),
            };
            let config_path = base.join(format!("config.{ext}"));
            let config = config.with_paths_from(&config_path);
            // The run directory is made before the files are checked (a command may run
            // there), and removed again if they are refused.
            std::fs::create_dir_all(&dir)
                .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
            let run = config
                .check_files(&config_path)
                .map_err(ApiError::bad_config)
                .and_then(|()| Run::create_from(config, &text, &config_path, &dir).map_err(ApiError::from_engine));
            let run = run.inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&dir);
            })?;
            Ok((run, id))
        })
        .await
        .map_err(ApiError::internal)??;
        let entry = Entry::new(id.clone(), run.run_dir.root().to_owned(), run.config.clone(), Phase::Running, None);
        self.write().insert(id.clone(), entry.clone());
        place.1 = true;
        self.launch(entry, run).await;
        Ok(id)
    }

    /// Lists an experiment found on disk at start, continuing it if it is unfinished.
    async fn restore(self: &Arc<Self>, id: String) {
        let dir = self.root.join(&id);
        let read = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                let marker = std::fs::read_to_string(dir.join(STOPPED_FILE)).ok();
                let concurrency = stored_concurrency(&dir);
                engine::read_run(&dir).map(|(_, state, _)| (state, marker, concurrency))
            })
            .await
        };
        let (state, marker, concurrency) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.broken(id, dir, e.to_string()),
            Err(e) => return self.broken(id, dir, e.to_string()),
        };
        let trials = state.trials().to_vec();
        let phase = match marker.as_deref().map(str::trim) {
            _ if state.finished() => Phase::Finished,
            Some("cancelled") => Phase::Cancelled,
            Some(_) => Phase::Paused,
            None => Phase::Running,
        };
        let entry = Entry::new(id.clone(), dir.clone(), state.config.clone(), phase.clone(), Some(trials));
        if let Some(n) = concurrency {
            entry.lock().concurrency = n;
        }
        self.write().insert(id.clone(), entry.clone());
        if phase == Phase::Running {
            if let Err(e) = self.reopen(entry.clone()).await {
                entry.set_phase(Phase::Failed(e.to_string()));
            }
        }
    }

    fn broken(&self, id: String, dir: PathBuf, error: String) {
        tracing::error!(experiment = %id, "cannot read {}: {error}", dir.display());
        // A config is needed for a listing; a placeholder names the failure.
        let config = Config::parse(
            &format!("[experiment]\nname = {:?}\n[model]\nkind = \"sleep\"\n", id),
            ConfigFormat::Toml,
            Path::new("(broken run)"),
        );
        if let Ok(config) = config {
            let entry = Entry::new(id.clone(), dir, config, Phase::Failed(error), None);
            self.write().insert(id, entry);
        }
    }

    /// Continues a stopped experiment from its journal.
    async fn reopen(self: &Arc<Self>, entry: Arc<Entry>) -> Result<(), ApiError> {
        let dir = entry.dir.clone();
        let (opened, concurrency) = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_file(dir.join(STOPPED_FILE));
            // The run that just stopped lets go of its journal within moments (its writer
            // thread ends once the last handle is dropped): this same daemon, not another.
            let mut opened = Run::open(&dir, false);
            for _ in 0..40 {
                match &opened {
                    Err(crate::engine::EngineError::Journal(crate::journal::JournalError::Busy { .. })) => {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        opened = Run::open(&dir, false);
                    }
                    _ => break,
                }
            }
            (opened, stored_concurrency(&dir))
        })
        .await
        .map_err(ApiError::internal)?;
        match opened.map_err(ApiError::from_engine)? {
            Opened::Finished(_) => entry.set_phase(Phase::Finished),
            Opened::Run(mut run) => {
                // The concurrency set through the API, not the config's.
                if let Some(n) = concurrency {
                    run.config.experiment.concurrency = Some(n);
                }
                for w in &run.warnings {
                    tracing::warn!(experiment = %entry.id, "{w}");
                }
                self.launch(entry, *run).await
            }
        }
        Ok(())
    }

    async fn launch(self: &Arc<Self>, entry: Arc<Entry>, run: Run) {
        let concurrency = run.config.experiment.slots();
        let handle = match self.engine.launch(run, None).await {
            Ok(h) => h,
            Err(e) => return entry.set_phase(Phase::Failed(e.to_string())),
        };
        let mut events = handle.subscribe();
        let trials = handle.trials().await;
        entry.absorb(&trials);
        {
            let mut inner = entry.lock();
            inner.handle = Some(handle.clone());
            inner.concurrency = match inner.concurrency_pending.take() {
                Some(n) => {
                    handle.set_concurrency(n);
                    n
                }
                None => concurrency,
            };
            inner.stopping = None;
            inner.resume_after = false;
        }
        entry.set_phase(Phase::Running);
        let registry = Arc::clone(self);
        tokio::spawn(async move {
            let ended = loop {
                tokio::select! {
                    ended = handle.wait() => break ended,
                    event = events.recv() => match event {
                        Ok(timed) => entry.on_event(&timed),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(experiment = %entry.id, "the event pump fell {n} events behind");
                            entry.absorb(&handle.trials().await);
                        }
                        Err(broadcast::error::RecvError::Closed) => {}
                    },
                }
            };
            while let Ok(timed) = events.try_recv() {
                entry.on_event(&timed);
            }
            // What holds the run's journal goes before anyone may reopen it.
            drop(handle);
            registry.ended(&entry, ended).await;
        });
    }

    async fn ended(&self, entry: &Arc<Entry>, ended: Result<crate::Summary, crate::SweepError>) {
        let marker = {
            let dir = entry.dir.clone();
            tokio::task::spawn_blocking(move || std::fs::read_to_string(dir.join(STOPPED_FILE)).ok())
                .await
                .ok()
                .flatten()
        };
        if let Ok(s) = &ended {
            entry.absorb(&s.trials);
        }
        // Under the lock the stops take: a stop either joined the run going down (and is
        // part of the outcome) or finds it gone ("starting or stopping", until the phase is set).
        let (phase, stopped) = {
            let mut inner = entry.lock();
            let cancelled = inner.stopping == Some(true) || marker.as_deref().map(str::trim) == Some("cancelled");
            let phase = match &ended {
                Err(e) => Phase::Failed(e.to_string()),
                Ok(s) if !s.interrupted => Phase::Finished,
                Ok(_) if cancelled => Phase::Cancelled,
                Ok(_) => Phase::Paused,
            };
            inner.handle = None;
            if let Ok(s) = ended {
                inner.trials = Some(s.trials);
            }
            (phase, inner.stopping.is_some())
        };
        tracing::info!(experiment = %entry.id, status = phase.name(), "experiment ended");
        if stopped && matches!(phase, Phase::Paused | Phase::Cancelled) {
            // The marker on disk says what memory says (stops may have written theirs in any
            // order), before the phase lets a resume remove it.
            let (dir, word) = (entry.dir.clone(), phase.name());
            let _ = tokio::task::spawn_blocking(move || std::fs::write(dir.join(STOPPED_FILE), word)).await;
        }
        // A resume asked until now (the pause under way) is taken with the phase.
        let resume = {
            let mut inner = entry.lock();
            let resume = std::mem::take(&mut inner.resume_after)
                && phase == Phase::Paused
                && !self.closing.load(Ordering::SeqCst);
            inner.stopping = None;
            entry.set_phase_locked(&mut inner, phase);
            resume
        };
        if resume {
            // A resume came while the pause was under way: it continues now.
            let _ = self.resumes.send(Arc::clone(entry));
        }
    }

    /// Stops an experiment: running trials checkpoint at their next report.
    /// `cancel`: for good (listed as cancelled), else paused (resumable).
    pub async fn stop(&self, entry: &Arc<Entry>, cancel: bool) -> Result<(), ApiError> {
        let dir = entry.dir.clone();
        let word = if cancel { "cancelled" } else { "paused" };
        // Under the lock the run's end takes: a stop either joins the run going down or
        // finds it gone.
        let decided = {
            let mut inner = entry.lock();
            match inner.handle.clone() {
                None => None,
                Some(_) if inner.stopping == Some(true) && !cancel => {
                    return Err(ApiError::conflict(format!(
                        "experiment {} is being cancelled; a pause cannot undo that",
                        entry.id
                    )));
                }
                Some(handle) => {
                    let cancelling = cancel || inner.stopping == Some(true);
                    inner.stopping = Some(cancelling);
                    // The last word is a stop: a resume asked before it is void.
                    inner.resume_after = false;
                    Some((handle, if cancelling { "cancelled" } else { "paused" }))
                }
            }
        };
        let Some((handle, word_now)) = decided else {
            // A paused experiment can be cancelled for good without running again: taken
            // under the lock, as a resume takes it, so that only one of them has it.
            let taken = cancel && {
                let mut inner = entry.lock();
                let paused = inner.phase == Phase::Paused;
                if paused {
                    inner.phase = Phase::Cancelled;
                }
                paused
            };
            if taken {
                let written = tokio::task::spawn_blocking(move || std::fs::write(dir.join(STOPPED_FILE), word)).await;
                return match written {
                    Ok(Ok(())) => {
                        entry.set_phase(Phase::Cancelled);
                        Ok(())
                    }
                    other => {
                        entry.set_phase(Phase::Paused);
                        Err(ApiError::internal(format!("cannot record the cancellation: {other:?}")))
                    }
                };
            }
            if entry.lock().phase == Phase::Running {
                return Err(ApiError::conflict(format!(
                    "experiment {} is starting or stopping: {} it once it is running or paused",
                    entry.id,
                    if cancel { "cancel" } else { "pause" }
                )));
            }
            return Err(ApiError::conflict(format!("experiment {} is not running", entry.id)));
        };
        // Written for a daemon killed before the run ends; the run's end writes the
        // final word, whatever order concurrent stops wrote theirs in.
        tokio::task::spawn_blocking(move || std::fs::write(dir.join(STOPPED_FILE), word_now))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::internal(format!("cannot record the stop: {e}")))?;
        handle.cancel();
        Ok(())
    }

    /// Continues a paused experiment.
    pub async fn resume(self: &Arc<Self>, entry: &Arc<Entry>) -> Result<(), ApiError> {
        // Taken under the lock: of concurrent resumes, one reopens the run
        // and the others find it running (or about to).
        let phase = {
            let mut inner = entry.lock();
            let phase = inner.phase.clone();
            if phase == Phase::Paused {
                inner.phase = Phase::Running;
            }
            phase
        };
        match phase {
            Phase::Paused => {
                let reopened = self.reopen(entry.clone()).await;
                if reopened.is_err() && entry.handle().is_none() {
                    // Still paused, on disk too (`reopen` removed the marker first).
                    let dir = entry.dir.clone();
                    let _ = tokio::task::spawn_blocking(move || std::fs::write(dir.join(STOPPED_FILE), "paused")).await;
                    entry.set_phase(Phase::Paused);
                }
                reopened
            }
            Phase::Running => {
                // On its way down: a pause under way is followed by the resume; a cancel is for good.
                let mut inner = entry.lock();
                match inner.stopping {
                    Some(true) => {
                        Err(ApiError::conflict(format!("experiment {} is being cancelled: it cannot resume", entry.id)))
                    }
                    Some(false) => {
                        inner.resume_after = true;
                        Ok(())
                    }
                    None => Ok(()),
                }
            }
            other => Err(ApiError::conflict(format!(
                "experiment {} is {}: only a paused experiment resumes",
                entry.id,
                other.name()
            ))),
        }
    }

    /// Changes how many trials an experiment runs at once, from its next
    /// placement if it runs, from its resume if it is paused; kept in its
    /// run directory, so a pause or a restart of the daemon keeps it too.
    pub async fn set_concurrency(&self, entry: &Arc<Entry>, n: u32) -> Result<(), ApiError> {
        if !matches!(entry.lock().phase, Phase::Running | Phase::Paused) {
            return Err(ApiError::conflict(format!("experiment {} has ended", entry.id)));
        }
        let _one_at_a_time = self.concurrency_writes.lock().await;
        let dir = entry.dir.clone();
        tokio::task::spawn_blocking(move || {
            let tmp = dir.join(format!(".{CONCURRENCY_FILE}.tmp"));
            std::fs::write(&tmp, n.to_string()).and_then(|()| std::fs::rename(&tmp, dir.join(CONCURRENCY_FILE)))
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("cannot record the concurrency: {e}")))?;
        let mut inner = entry.lock();
        match &inner.handle {
            Some(handle) => handle.set_concurrency(n),
            // A resume under way applies it when its run starts.
            None => inner.concurrency_pending = Some(n),
        }
        inner.concurrency = n;
        Ok(())
    }

    /// Stops every experiment (trials checkpoint) and the engine.
    pub async fn shutdown(self: Arc<Self>) {
        self.closing.store(true, Ordering::SeqCst);
        let handles: Vec<ExperimentHandle> = self.all().iter().filter_map(|e| e.handle()).collect();
        for h in &handles {
            h.cancel();
        }
        for h in &handles {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), h.wait()).await;
        }
        if let Ok(registry) = Arc::try_unwrap(self) {
            registry.engine.shutdown().await;
        }
    }
}

/// The experiment directories under `root`, oldest (lowest number) first; all of them.
fn list_dirs(root: &Path) -> Result<Vec<String>, ApiError> {
    std::fs::create_dir_all(root).map_err(|e| ApiError::internal(format!("cannot create {}: {e}", root.display())))?;
    let mut ids = Vec::new();
    let entries =
        std::fs::read_dir(root).map_err(|e| ApiError::internal(format!("cannot read {}: {e}", root.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && valid_id(&name) {
            ids.push(name);
        }
    }
    // By number, then name: "10000-x" comes after "9999-y".
    ids.sort_by_key(|id| (id.split('-').next().and_then(|n| n.parse::<u64>().ok()), id.clone()));
    Ok(ids)
}

/// An experiment id as the daemon issues them: `0001-name`, lower-case
/// letters, digits and dashes, at most 64 bytes.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && id.split('-').next().is_some_and(|n| n.len() >= 4 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A name cut down to what an id holds.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
        if out.len() >= 40 {
            break;
        }
    }
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() {
        "experiment".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_what_the_daemon_issues() {
        for good in ["0001-x", "0042-fashion-mlp", "12345-a-b"] {
            assert!(valid_id(good), "{good}");
        }
        for bad in ["", "x", "../0001-x", "0001-X", "001-x", "0001/x", "0001-x/../../etc", "0001-é", &"0".repeat(65)] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert_eq!(slug("Fashion MLP (v2)!"), "fashion-mlp-v2");
        assert_eq!(slug("../.."), "experiment");
        assert!(valid_id(&format!("0001-{}", slug(&"ü".repeat(300)))));
    }

    #[test]
    fn experiment_directories_are_listed_by_number_past_9999() {
        let root = tempfile::tempdir().unwrap();
        for id in ["10000-b", "9999-a", "0002-c", "not-an-id"] {
            std::fs::create_dir(root.path().join(id)).unwrap();
        }
        assert_eq!(list_dirs(root.path()).unwrap(), ["0002-c", "9999-a", "10000-b"]);
    }
}
