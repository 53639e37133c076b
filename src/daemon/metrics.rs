//! `/metrics` (Prometheus text, with prometheus-client), the dashboard's
//! embedded files, and the OpenAPI document.
//!
//! Labels are bounded: an experiment id at most (the daemon hosts at most
//! [`super::registry::MAX_EXPERIMENTS`]), a trial status, a slot state;
//! never a trial id.

use std::sync::atomic::AtomicU64;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::api::{ApiError, AppState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExperimentLabel {
    experiment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrialLabels {
    experiment: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabel {
    state: String,
}

pub(super) async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let entries = state.registry().all();
    let usage = state.registry().engine().pool().usage().await;
    let dirs: Vec<(String, std::path::PathBuf)> = entries.iter().map(|e| (e.id.clone(), e.dir.clone())).collect();
    let journal_bytes = tokio::task::spawn_blocking(move || {
        dirs.into_iter()
            .map(|(id, dir)| (id, std::fs::metadata(dir.join(crate::journal::JOURNAL_FILE)).map_or(0, |m| m.len())))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(ApiError::internal)?;

    let mut registry = Registry::with_prefix("gauntlet");
    let trials = Family::<TrialLabels, Gauge>::default();
    let reports = Family::<ExperimentLabel, Gauge>::default();
    let best = Family::<ExperimentLabel, Gauge<f64, AtomicU64>>::default();
    let journal = Family::<ExperimentLabel, Gauge>::default();
    let experiments = Family::<StatusLabel, Gauge>::default();
    let slots = Family::<SlotLabel, Gauge>::default();
    let workers = Gauge::<i64>::default();
    registry.register("trials", "Trials by experiment and status", trials.clone());
    registry.register("reports", "Reports received, by experiment", reports.clone());
    registry.register("best_value", "The best value of each experiment's metric", best.clone());
    registry.register("journal_bytes", "Size of each experiment's journal", journal.clone());
    registry.register("experiments", "Experiments by status", experiments.clone());
    registry.register("slots", "Worker slots, busy or free", slots.clone());
    registry.register("workers", "Workers connected and ready", workers.clone());
    for e in &entries {
        let l = e.listing();
        for (status, n) in &l.trials {
            trials
                .get_or_create(&TrialLabels { experiment: l.id.clone(), status: (*status).into() })
                .set(i64::from(*n));
        }
        reports.get_or_create(&ExperimentLabel { experiment: l.id.clone() }).set(l.reports as i64);
        if let Some(b) = l.best {
            best.get_or_create(&ExperimentLabel { experiment: l.id.clone() }).set(b);
        }
        experiments.get_or_create(&StatusLabel { status: l.status.into() }).inc();
    }
    for (id, bytes) in journal_bytes {
        journal.get_or_create(&ExperimentLabel { experiment: id }).set(bytes as i64);
    }
    slots.get_or_create(&SlotLabel { state: "busy".into() }).set(i64::from(usage.busy));
    slots.get_or_create(&SlotLabel { state: "free".into() }).set(i64::from(usage.slots.saturating_sub(usage.busy)));
    workers.set(usage.workers as i64);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8"))
        .body(text))
}

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

pub(super) async fn dashboard() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(INDEX)
}

pub(super) async fn asset(file: web::Path<String>) -> HttpResponse {
    let (kind, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "style.css" => ("text/css; charset=utf-8", STYLE),
        _ => {
            return HttpResponse::NotFound().json(
                serde_json::json!({ "error": format!("no asset `{}`", file.chars().take(60).collect::<String>()) }),
            )
        }
    };
    HttpResponse::Ok().content_type(kind).insert_header((header::CACHE_CONTROL, "no-cache")).body(body)
}

/// The API, described.
pub(super) const OPENAPI: &str = include_str!("openapi.json");
