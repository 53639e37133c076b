//! The HTTP API (`/api/v1`), the dashboard's files and `/metrics`.
//!
//! Every call but `GET /api/v1/health` and the dashboard's static files
//! (which hold no data) needs `Authorization: Bearer TOKEN`. Bodies are
//! read up to a limit per route; ids in paths are matched against the
//! experiments the daemon issued, never used to build a path. Every error
//! is a JSON object `{"error": "..."}` with a 4xx or 5xx status.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use futures_util::StreamExt;
use serde::Deserialize;

use super::registry::{self, Entry, Registry, Sse};
use crate::config::{ConfigError, ConfigFormat};
use crate::engine::EngineError;
use crate::supervision::TrialControlError;
use crate::trial::{Trial, TrialStatus};

/// The largest config a submission may carry.
const MAX_CONFIG_BODY: usize = 1 << 20;
/// The largest JSON body of a control call.
const MAX_CONTROL_BODY: usize = 64 << 10;
/// The largest prediction request.
const MAX_PREDICT_BODY: usize = 8 << 20;
/// Event streams open at once, all experiments together.
const MAX_STREAMS: usize = 256;
/// How often an idle event stream is written to: a client gone is noticed
/// (and its place freed) at the second write after it left.
const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(3);
/// Rows one prediction request may hold.
const MAX_PREDICT_ROWS: usize = 10_000;
/// Prediction requests computed at once (each holds its rows and answer).
const MAX_PREDICTIONS: usize = 2;
/// Trials one leaderboard answer lists at most.
const MAX_LIMIT: usize = 10_000;
/// Reports one trial's answer lists at most.
const MAX_REPORTS: usize = 100_000;
/// How long a request body may take to arrive, all of it.
const BODY_DEADLINE: Duration = Duration::from_secs(30);

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        HttpResponse::build(self.status).json(serde_json::json!({ "error": self.message }))
    }
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub(super) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub(super) fn internal(message: impl ToString) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    /// A config refused as `validate` refuses it (422).
    pub(super) fn bad_config(e: ConfigError) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
    }
    pub(super) fn from_engine(e: EngineError) -> Self {
        if e.is_usage() {
            Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        } else {
            Self::internal(e)
        }
    }
}

/// What every handler shares.
pub(super) struct AppState {
    registry: Arc<Registry>,
    token: String,
    streams: AtomicUsize,
    predictions: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub(super) fn new(registry: Arc<Registry>, token: String) -> Self {
        AppState {
            registry,
            token,
            streams: AtomicUsize::new(0),
            predictions: Arc::new(tokio::sync::Semaphore::new(MAX_PREDICTIONS)),
        }
    }

    pub(super) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>, ApiError> {
        if !registry::valid_id(id) {
            return Err(ApiError::bad_request(format!(
                "`{}` is not an experiment id (expected digits, a dash and lower-case letters, digits or dashes, \
                 as `POST /api/v1/experiments` returns)",
                id.chars().take(80).collect::<String>()
            )));
        }
        self.registry.get(id).ok_or_else(|| ApiError::not_found(format!("no experiment `{id}`")))
    }
}

/// Compares without leaking where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn open(path: &str) -> bool {
    path == "/api/v1/health" || path == "/" || path.starts_with("/assets/")
}

/// Lets a request through with the right bearer token (or to an open path).
async fn authorize(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let allowed = open(req.path()) || {
        let state = req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::internal("no state"))?;
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        same(given.as_bytes(), format!("Bearer {}", state.token).as_bytes())
    };
    if !allowed {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send `Authorization: Bearer TOKEN`, the token being the `token` file in the \
             daemon's state directory",
        )
        .into());
    }
    next.call(req).await
}

/// Builds the server on `addr` (port 0: any); returns it with the address it got.
pub(super) fn server(state: Arc<AppState>, addr: SocketAddr) -> std::io::Result<(Server, SocketAddr)> {
    let data = web::Data::from(state);
    let http = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(actix_web::middleware::from_fn(authorize))
            // A malformed query string is refused as every error is: JSON, naming the parameter.
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::bad_request(format!("the query string: {e}")).into()),
            )
            .service(resource("/", "GET, HEAD").route(get_or_head().to(super::metrics::dashboard)))
            .service(resource("/assets/{file}", "GET, HEAD").route(get_or_head().to(super::metrics::asset)))
            .service(resource("/metrics", "GET, HEAD").route(get_or_head().to(super::metrics::metrics)))
            .service(resource("/api/v1/health", "GET, HEAD").route(get_or_head().to(health)))
            .service(resource("/api/v1/openapi.json", "GET, HEAD").route(get_or_head().to(openapi)))
            .service(
                resource("/api/v1/experiments", "GET, HEAD, POST")
                    .route(get_or_head().to(list))
                    .route(web::post().to(submit)),
            )
            .service(resource("/api/v1/experiments/{id}", "GET, HEAD").route(get_or_head().to(detail)))
            .service(resource("/api/v1/experiments/{id}/curves", "GET, HEAD").route(get_or_head().to(curves)))
            .service(resource("/api/v1/experiments/{id}/events", "GET").route(web::get().to(events)))
            .service(
                resource("/api/v1/experiments/{id}/trials/{trial}", "GET, HEAD").route(get_or_head().to(trial_reports)),
            )
            .service(
                resource("/api/v1/experiments/{id}/trials/{trial}/log", "GET, HEAD").route(get_or_head().to(trial_log)),
            )
            .service(resource("/api/v1/experiments/{id}/trials/{trial}/stop", "POST").route(web::post().to(stop_trial)))
            .service(
                resource("/api/v1/experiments/{id}/trials/{trial}/restart", "POST")
                    .route(web::post().to(restart_trial)),
            )
            .service(resource("/api/v1/experiments/{id}/pause", "POST").route(web::post().to(pause)))
            .service(resource("/api/v1/experiments/{id}/resume", "POST").route(web::post().to(resume)))
            .service(resource("/api/v1/experiments/{id}/cancel", "POST").route(web::post().to(cancel)))
            .service(resource("/api/v1/experiments/{id}/concurrency", "POST").route(web::post().to(concurrency)))
            .service(resource("/api/v1/experiments/{id}/predict", "POST").route(web::post().to(predict)))
            .default_service(web::to(|req: HttpRequest| async move {
                ApiError::not_found(format!("no such route: {} {}", req.method(), req.path())).error_response()
            }))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(5)
    .max_connection_rate(256)
    .max_connections(1024)
    .client_request_timeout(Duration::from_secs(10))
    .bind(addr)?;
    let bound = http.addrs().first().copied().unwrap_or(addr);
    Ok((http.run(), bound))
}

/// GET, and HEAD answered as GET without the body (actix-web routes HEAD
/// only where asked; its HTTP layer sends no body for a HEAD request).
fn get_or_head() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

/// A path's methods, `allow` listing them: any other method gets a JSON 405 saying which.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: HttpRequest| async move {
        let mut res = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not a method of {}: it takes {allow}", req.method(), req.path()),
        )
        .error_response();
        res.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
        res
    }))
}

/// Reads a body up to `limit` bytes, all of it within [`BODY_DEADLINE`].
async fn body(mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let read = async {
        let mut out = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            if out.len() + chunk.len() > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is over {limit} bytes, the most this call takes"),
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    };
    tokio::time::timeout(BODY_DEADLINE, read).await.unwrap_or_else(|_| {
        Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {}s", BODY_DEADLINE.as_secs()),
        ))
    })
}

async fn json_body<T: serde::de::DeserializeOwned>(payload: web::Payload, limit: usize) -> Result<T, ApiError> {
    let bytes = body(payload, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the request body: {e}")))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "ok": true, "version": env!("CARGO_PKG_VERSION") }))
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(super::metrics::OPENAPI)
}

/// The query of an endpoint that takes none: any parameter is a 400 naming it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoQuery {}

async fn list(state: web::Data<AppState>, _: web::Query<NoQuery>) -> HttpResponse {
    let listings: Vec<registry::Listing> = state.registry.all().iter().map(|e| e.listing()).collect();
    HttpResponse::Ok().json(serde_json::json!({ "experiments": listings }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitQuery {
    format: Option<String>,
    /// The directory relative paths in the config resolve against (its
    /// file's, as `gauntlet submit` sends it); the run directory without it.
    dir: Option<String>,
}

async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<SubmitQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let kind = query.format.clone().unwrap_or_else(|| {
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    });
    let format = match kind.split(';').next().unwrap_or("").trim() {
        "yaml" | "yml" | "application/yaml" | "application/x-yaml" | "text/yaml" => ConfigFormat::Yaml,
        "json" | "application/json" => ConfigFormat::Json,
        "" | "toml" | "application/toml" | "text/plain" | "text/x-toml" | "application/octet-stream"
        // curl's default for --data
        | "application/x-www-form-urlencoded" => ConfigFormat::Toml,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type `{other}`: expected application/toml, application/yaml or application/json"),
            ))
        }
    };
    let bytes = body(payload, MAX_CONFIG_BODY).await?;
    let text = String::from_utf8(bytes.to_vec()).map_err(|e| {
        ApiError::bad_request(format!("the config is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
    })?;
    let dir = match &query.dir {
        None => None,
        Some(d) if d.len() > 4096 || d.contains('\0') || !Path::new(d).is_absolute() => {
            return Err(ApiError::bad_request(format!(
                "dir `{}`: expected the absolute path of the config file's directory on the daemon's machine",
                d.chars().take(80).collect::<String>()
            )))
        }
        Some(d) => Some(PathBuf::from(d)),
    };
    let id = state.registry.submit(text, format, dir).await?;
    let entry = state.entry(&id)?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/experiments/{id}")))
        .json(serde_json::json!({ "id": id, "experiment": entry.listing() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetailQuery {
    limit: Option<usize>,
    status: Option<String>,
}

async fn detail(
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<DetailQuery>,
) -> Result<HttpResponse, ApiError> {
    let entry = state.entry(&id)?;
    let limit = query.limit.unwrap_or(1000).min(MAX_LIMIT);
    let status = match &query.status {
        None => None,
        Some(s) => Some(parse_status(s)?),
    };
    let trials = entry.trials().await;
    let (metric, mode) = entry.metric();
    let mut ranked: Vec<&Trial> = crate::supervision::rank(&trials, mode);
    ranked.extend(trials.iter().filter(|t| t.best_metric.is_none()));
    let shown: Vec<&Trial> = ranked.into_iter().filter(|t| status.is_none_or(|s| t.status == s)).take(limit).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "experiment": entry.listing(),
        "metric": metric,
        "best_over_time": entry.best_over_time(),
        "leaderboard": shown,
        "shown": shown.len(),
    })))
}

fn parse_status(s: &str) -> Result<TrialStatus, ApiError> {
    use TrialStatus::*;
    [Pending, Running, Paused, Completed, Pruned, Failed, Diverged].into_iter().find(|t| t.as_str() == s).ok_or_else(
        || {
            ApiError::bad_request(format!(
                "status `{s}`: expected pending, running, paused, completed, pruned, failed or diverged"
            ))
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CurvesQuery {
    top: Option<usize>,
    points: Option<usize>,
}

/// Learning curves of the top trials, each thinned to at most `points`.
async fn curves(
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<CurvesQuery>,
) -> Result<HttpResponse, ApiError> {
    let entry = state.entry(&id)?;
    let top = query.top.unwrap_or(200).clamp(1, 2000);
    let points = query.points.unwrap_or(100).clamp(2, 1000);
    let (metric, mode) = (entry.metric().0.to_owned(), entry.metric().1);
    let trials = entry.trials().await;
    let dir = entry.dir.clone();
    let curves = tokio::task::spawn_blocking(move || read_curves(&dir, &metric, &trials, mode, top, points))
        .await
        .map_err(ApiError::internal)??;
    Ok(HttpResponse::Ok().json(curves))
}

/// Each trial's curve of the metric from `results.jsonl`, the last report
/// of an epoch winning (a restart repeats epochs).
fn read_curves(
    dir: &std::path::Path,
    metric: &str,
    trials: &[Trial],
    mode: crate::space::Mode,
    top: usize,
    points: usize,
) -> Result<serde_json::Value, ApiError> {
    use std::collections::BTreeMap;
    use std::io::BufRead;
    let mut ranked = crate::supervision::rank(trials, mode);
    ranked.truncate(top);
    let wanted: BTreeMap<u32, &Trial> = ranked.iter().map(|t| (t.id.0, *t)).collect();
    let mut series: BTreeMap<u32, BTreeMap<u32, f64>> = BTreeMap::new();
    if let Ok(file) = std::fs::File::open(dir.join("results.jsonl")) {
        for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            let Some(trial) = v["trial"].as_u64().map(|t| t as u32).filter(|t| wanted.contains_key(t)) else {
                continue;
            };
            if let (Some(epoch), Some(value)) = (v["epoch"].as_u64(), v[metric].as_f64()) {
                series.entry(trial).or_default().insert(epoch as u32, value);
            }
        }
    }
    let out: Vec<serde_json::Value> = ranked
        .iter()
        .map(|t| {
            let curve: Vec<(u32, f64)> =
                series.get(&t.id.0).map(|c| c.iter().map(|(e, v)| (*e, *v)).collect()).unwrap_or_default();
            serde_json::json!({
                "trial": t.id.0,
                "status": t.status.as_str(),
                "epochs": t.epochs,
                "best": t.best_metric,
                "params": t.params,
                "lineage": t.lineage,
                "curve": thin(&curve, points),
            })
        })
        .collect();
    Ok(serde_json::json!({ "metric": metric, "trials": out }))
}

/// At most `n` points of a curve, evenly spread, the first and last kept.
fn thin(curve: &[(u32, f64)], n: usize) -> Vec<(u32, f64)> {
    if curve.len() <= n {
        return curve.to_vec();
    }
    let step = (curve.len() - 1) as f64 / (n - 1) as f64;
    (0..n).map(|i| curve[((i as f64 * step).round() as usize).min(curve.len() - 1)]).collect()
}

async fn trial_reports(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    _: web::Query<NoQuery>,
) -> Result<HttpResponse, ApiError> {
    let (id, trial) = path.into_inner();
    let entry = state.entry(&id)?;
    let trial = trial_number(&trial)?;
    let trials = entry.trials().await;
    let Some(record) = trials.get(trial as usize).cloned() else {
        return Err(ApiError::not_found(format!("experiment {id} has no trial {trial}")));
    };
    let dir = entry.dir.clone();
    let reports = tokio::task::spawn_blocking(move || -> Vec<serde_json::Value> {
        use std::io::BufRead;
        let Ok(file) = std::fs::File::open(dir.join("results.jsonl")) else { return Vec::new() };
        std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .filter(|v| v["trial"].as_u64() == Some(u64::from(trial)))
            .take(MAX_REPORTS)
            .collect()
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "trial": record, "reports": reports })))
}

/// The most of a trial's log one answer carries (its end).
const MAX_LOG: u64 = 1 << 20;

/// The output of a trial's program (`kind = "command"`): the last MiB.
async fn trial_log(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    _: web::Query<NoQuery>,
) -> Result<HttpResponse, ApiError> {
    let (id, trial) = path.into_inner();
    let entry = state.entry(&id)?;
    let trial = trial_number(&trial)?;
    if entry.trials().await.len() <= trial as usize {
        return Err(ApiError::not_found(format!("experiment {id} has no trial {trial}")));
    }
    let file = entry.dir.join("trials").join(trial.to_string()).join(crate::trainable::OUTPUT_LOG);
    let text = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match std::fs::File::open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(MAX_LOG)))?;
        let mut bytes = Vec::new();
        f.take(MAX_LOG).read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::internal(format!("cannot read the trial's log: {e}")))?;
    Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(text))
}

fn trial_number(text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(format!("trial `{}`: expected a trial number", text.chars().take(40).collect::<String>()))
    })
}

async fn stop_trial(state: web::Data<AppState>, path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let (id, trial) = path.into_inner();
    let (entry, trial) = (state.entry(&id)?, trial_number(&trial)?);
    let handle = entry.handle().ok_or_else(|| not_running(&entry, trial))?;
    if let Err(e) = handle.stop_trial(crate::trial::TrialId(trial)).await {
        return Err(trial_refusal(&entry, trial, e));
    }
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "id": id, "trial": trial, "status": "stopping" })))
}

/// Why a trial of an experiment that does not run cannot be stopped or
/// restarted: it does not exist (404), or the experiment is not running (409).
fn not_running(entry: &Entry, trial: u32) -> ApiError {
    if trial as usize >= entry.trial_count() {
        ApiError::not_found(format!("experiment {} has no trial {trial}", entry.id))
    } else {
        ApiError::conflict(format!("experiment {} is not running", entry.id))
    }
}

/// Why a trial cannot be stopped or restarted: it does not exist (404), or its state forbids it (409).
fn trial_refusal(entry: &Entry, trial: u32, why: TrialControlError) -> ApiError {
    match why {
        TrialControlError::NoSuchTrial(_) => {
            ApiError::not_found(format!("experiment {} has no trial {trial}", entry.id))
        }
        TrialControlError::Refused(why) => ApiError::conflict(why),
    }
}

async fn restart_trial(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, trial) = path.into_inner();
    let (entry, trial) = (state.entry(&id)?, trial_number(&trial)?);
    let handle = entry.handle().ok_or_else(|| not_running(&entry, trial))?;
    if let Err(e) = handle.restart_trial(crate::trial::TrialId(trial)).await {
        return Err(trial_refusal(&entry, trial, e));
    }
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "id": id, "trial": trial, "status": "restarting" })))
}

async fn pause(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let entry = state.entry(&id)?;
    state.registry.stop(&entry, false).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "id": entry.id, "status": "pausing" })))
}

async fn cancel(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let entry = state.entry(&id)?;
    state.registry.stop(&entry, true).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "id": entry.id, "status": "cancelling" })))
}

async fn resume(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let entry = state.entry(&id)?;
    state.registry.resume(&entry).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "id": entry.id, "status": "running" })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Concurrency {
    concurrency: u32,
}

async fn concurrency(
    state: web::Data<AppState>,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let entry = state.entry(&id)?;
    let c: Concurrency = json_body(payload, MAX_CONTROL_BODY).await?;
    let most = crate::config::MAX_CONCURRENCY;
    if !(1..=most).contains(&c.concurrency) {
        return Err(ApiError::bad_request(format!("concurrency: expected 1 to {most}, got {}", c.concurrency)));
    }
    state.registry.set_concurrency(&entry, c.concurrency).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": entry.id, "concurrency": c.concurrency })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictBody {
    rows: Vec<Vec<f32>>,
}

async fn predict(
    state: web::Data<AppState>,
    id: web::Path<String>,
    _: web::Query<NoQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let entry = state.entry(&id)?;
    let kind = entry.model_kind();
    if crate::trainable::kind::named(kind).is_some_and(|k| k.predictor.is_none()) {
        let kinds = crate::trainable::kind::KINDS.iter().filter(|k| k.predictor.is_some());
        return Err(ApiError::conflict(format!(
            "model.kind = \"{kind}\" leaves no model to predict with; {} do",
            crate::trainable::kind::names(kinds)
        )));
    }
    // Taken before the body is read: a request's parsed rows count against the bound too.
    let Ok(permit) = Arc::clone(&state.predictions).try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_PREDICTIONS} predictions are being computed, the most at once; try again"),
        ));
    };
    let body: PredictBody = json_body(payload, MAX_PREDICT_BODY).await?;
    if body.rows.is_empty() || body.rows.len() > MAX_PREDICT_ROWS {
        return Err(ApiError::bad_request(format!(
            "rows: {} rows, expected 1 to {MAX_PREDICT_ROWS} rows of features per request",
            body.rows.len()
        )));
    }
    let dir = entry.dir.join("best");
    let answer = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, ApiError> {
        let model = crate::predict::Model::load(&dir).map_err(|e| {
            ApiError::conflict(format!("no best model to predict with yet ({e}); it appears when the experiment ends"))
        })?;
        let n = model.inputs();
        let _permit = permit;
        if let Some((i, r)) = body.rows.iter().enumerate().find(|(_, r)| r.len() != n) {
            return Err(ApiError::bad_request(format!(
                "sample {} (rows[{i}]): {} values, expected {n} features",
                i + 1,
                r.len()
            )));
        }
        let flat: Vec<f32> = body.rows.concat();
        let probs = model.predict_rows(&flat).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let predictions: Vec<serde_json::Value> = probs
            .iter()
            .map(|p| {
                let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(c, _)| c);
                serde_json::json!({ "class": model.class_name(best), "probabilities": p })
            })
            .collect();
        Ok(serde_json::json!({ "classes": model.class_names(), "predictions": predictions }))
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(HttpResponse::Ok().json(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
}

/// Server-sent events of one experiment: reports, trial changes and its
/// state, each with an `id:` (`LIFE-NUMBER`); a client that reconnects with
/// `Last-Event-ID` (or `?after=NUMBER`) gets what it missed while the daemon
/// still keeps it, else a `reset` event telling it to read the state again:
/// so too for an id of an earlier life of the daemon.
async fn events(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse<EitherBody<BoxBody>>, ApiError> {
    let entry = state.entry(&id)?;
    let life = state.registry.life().to_owned();
    let (last, earlier_life) = match req.headers().get("last-event-id").map(|v| v.to_str()) {
        Some(v) => {
            let v = v.unwrap_or("").trim();
            let bad = || {
                ApiError::bad_request(format!(
                    "Last-Event-ID `{}`: expected an event id as sent (LIFE-NUMBER) or an event number",
                    v.chars().take(40).collect::<String>()
                ))
            };
            match v.split_once('-') {
                Some((l, n)) => (Some(n.parse::<u64>().map_err(|_| bad())?), l != life),
                None => (Some(v.parse::<u64>().map_err(|_| bad())?), false),
            }
        }
        None => (query.after, false),
    };
    if state.streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
        state.streams.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_STREAMS} event streams are open, the most; try again once one closes"),
        ));
    }
    let guard = StreamGuard(state.clone().into_inner());
    let registry::Backlog { kept, live: rx, now } = entry.events_after(last.unwrap_or(0));
    let kept = kept.filter(|_| !earlier_life);
    let after = if earlier_life { now } else { last.unwrap_or(0).min(now) };
    let mut first = String::from("retry: 2000\n\n");
    let mut sent = after;
    match kept {
        Some(events) => {
            for e in events {
                first.push_str(&frame(&life, &e));
                sent = e.seq;
            }
        }
        None => first.push_str(&format!("event: reset\ndata: {{\"after\":{after}}}\n\n")),
    }
    struct Feed {
        rx: tokio::sync::broadcast::Receiver<Arc<Sse>>,
        life: String,
        sent: u64,
        first: Option<String>,
        _guard: StreamGuard,
    }
    let feed = Feed { rx, life, sent, first: Some(first), _guard: guard };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        if let Some(first) = f.first.take() {
            return Some((Ok::<_, std::convert::Infallible>(web::Bytes::from(first)), f));
        }
        loop {
            match tokio::time::timeout(STREAM_KEEP_ALIVE, f.rx.recv()).await {
                Err(_) => return Some((Ok(web::Bytes::from_static(b": keep-alive\n\n")), f)),
                Ok(Ok(e)) if e.seq <= f.sent => continue,
                Ok(Ok(e)) => {
                    f.sent = e.seq;
                    return Some((Ok(web::Bytes::from(frame(&f.life, &e))), f));
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    let text = format!("event: reset\ndata: {{\"after\":{}}}\n\n", f.sent);
                    return Some((Ok(web::Bytes::from(text)), f));
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
            }
        }
    });
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(stream)
        .map_into_left_body())
}

fn frame(life: &str, e: &Sse) -> String {
    format!("id: {life}-{}\nevent: {}\ndata: {}\n\n", e.seq, e.kind, e.data)
}

/// Counts an open event stream until it is dropped.
struct StreamGuard(Arc<AppState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_the_ends() {
        let curve: Vec<(u32, f64)> = (1..=1000).map(|e| (e, f64::from(e))).collect();
        let t = thin(&curve, 50);
        assert_eq!(t.len(), 50);
        assert_eq!((t[0].0, t[49].0), (1, 1000));
        assert_eq!(thin(&curve[..10], 50).len(), 10);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"Bearer abc", b"Bearer abc"));
        assert!(!same(b"Bearer abd", b"Bearer abc"));
        assert!(!same(b"Bearer ab", b"Bearer abc"));
    }
}
