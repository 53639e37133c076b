//! The leaderboard as a terminal table.

use std::fmt::Write;

use gauntlet::supervision::rank;
use gauntlet::{Mode, Trial};

/// Ranked trials first (at most `limit`), then the others, as aligned text.
pub fn standings(all: &[Trial], metric: &str, mode: Mode, limit: usize) -> String {
    let ranked = rank(all, mode);
    let mut rows: Vec<&Trial> = ranked.iter().copied().take(limit).collect();
    if limit == usize::MAX {
        rows.extend(all.iter().filter(|s| !ranked.iter().any(|r| r.id == s.id)));
    }
    // Only parameters that vary are worth a column.
    let params: Vec<&String> = all
        .first()
        .map(|s| s.params.keys().filter(|k| all.iter().any(|o| o.params.get(*k) != s.params.get(*k))).collect())
        .unwrap_or_default();
    let mut header =
        vec!["rank".to_owned(), "trial".into(), "status".into(), metric.into(), "epochs".into(), "restarts".into()];
    header.extend(params.iter().map(|p| p.to_string()));
    // PBT's exploits, when there were any.
    let lineage = all.iter().any(|t| !t.lineage.is_empty());
    if lineage {
        header.push("lineage".into());
    }
    let mut table = vec![header];
    for s in &rows {
        let place = ranked.iter().position(|r| r.id == s.id).map(|i| (i + 1).to_string()).unwrap_or_default();
        let mut row = vec![
            place,
            s.id.to_string(),
            s.status.to_string(),
            s.best_metric.map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into()),
            s.epochs.to_string(),
            s.restarts.to_string(),
        ];
        row.extend(params.iter().map(|p| s.params.get(*p).map(|v| v.to_string()).unwrap_or_default()));
        if lineage {
            row.push(gauntlet::run_dir::lineage(s));
        }
        table.push(row);
    }
    let widths: Vec<usize> =
        (0..table[0].len()).map(|c| table.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &table {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}
