//! Bad configs are refused before anything runs: exit code 2 and a message
//! naming the file and the key.

mod common;

use common::*;

const GOOD: &str = r#"
[experiment]
name = "good"
max_trials = 2

[data]
source = "synthetic"

[model]
kind = "mlp"
hidden_units = { int = [8, 64] }

[train]
lr = { loguniform = [1e-4, 1e-1] }
optimizer = { choice = ["adam", "sgd"] }
max_epochs = 2
"#;

/// The data and model sections of GOOD (a `command` model has no [data]).
const ONLY_MODEL: &str = "[data]\nsource = \"synthetic\"\n\n[model]\nkind = \"mlp\"\nhidden_units = { int = [8, 64] }";

/// (what is changed, replacement, the key the message must name, a phrase it must contain)
const CASES: &[(&str, &str, &str, &str)] = &[
    ("max_trials = 2", "max_trials = \"two\"", "experiment.max_trials", "invalid type"),
    ("max_trials = 2", "max_trials = 0", "experiment.max_trials", "at least 1"),
    ("[1e-4, 1e-1]", "[1e-1, 1e-4]", "train.lr", "empty range"),
    ("[1e-4, 1e-1]", "[0.0, 1e-1]", "train.lr", "0 < low"),
    ("lr = { loguniform = [1e-4, 1e-1] }", "lr = { uniform = [-1.7e308, 1.7e308] }", "train.lr", "wider than a float"),
    ("{ choice = [\"adam\", \"sgd\"] }", "{ choice = [nan, 1.0] }", "train.optimizer", "choice holds NaN"),
    ("{ choice = [\"adam\", \"sgd\"] }", "{ choice = [] }", "train.optimizer", "empty choice"),
    ("\"sgd\"", "\"rmsprop\"", "train.optimizer", "one of adam, sgd"),
    ("hidden_units = { int = [8, 64] }", "hidden_unit = 8", "model.hidden_unit", "unknown key"),
    (
        "hidden_units = { int = [8, 64] }",
        "hidden_units = { uniform = [8, 64] }",
        "model.hidden_units",
        "expected an integer",
    ),
    (
        "hidden_units = { int = [8, 64] }",
        "hidden_units = { int = [8, 64], step = 2 }",
        "model.hidden_units",
        "unknown field `step`",
    ),
    ("kind = \"mlp\"", "kind = \"transformer\"", "model.kind", "unknown model kind"),
    ("max_epochs = 2", "max_epochs = { int = [1, 5] }", "train.max_epochs", "fixed integer"),
    ("source = \"synthetic\"", "source = \"imagenet\"", "data.source", "unknown data source `imagenet`"),
    (
        "source = \"synthetic\"",
        "source = \"synthetic\"\nlabel = \"y\"",
        "data.label",
        "not used by source \"synthetic\"",
    ),
    ("source = \"synthetic\"", "source = \"csv\"\npath = \"d.csv\"", "data.label", "name of the label column"),
    ("source = \"synthetic\"", "source = \"idx\"\ny = \"l.idx\"", "data.x", "needs `x`"),
    ("source = \"synthetic\"", "source = \"fashion-mnist\"\npath = \"/nonexistent/fm\"", "data.path", "does not exist"),
    (
        "source = \"synthetic\"",
        "source = \"synthetic\"\nvalidation_fraction = 1.5",
        "data.validation_fraction",
        "between 0 and 1",
    ),
    ("[data]", "[dataa]\nx = 1\n[data]", "dataa", "unknown field"),
    ("name = \"good\"", "name = \"good\"\nmode = \"maximize\"", "experiment.mode", "unknown variant"),
    ("name = \"good\"", "name = \"good\"\nmetric = \"accuracy\"", "experiment.metric", "val_accuracy"),
    ("name = \"good\"", "name = \"bad/name\"", "experiment.name", "not allowed"),
    ("kind = \"mlp\"", "kind = \"torchscript\"", "model.module", "torch.jit.save"),
    (ONLY_MODEL, "[model]\nkind = \"command\"", "model.command", "missing"),
    (ONLY_MODEL, "[model]\nkind = \"command\"\ncommand = \"python3 'train.py\"", "model.command", "unbalanced quotes"),
    (ONLY_MODEL, "[model]\nkind = \"command\"\ncommand = \"true\"\nrank = 3", "model.rank", "names a column"),
    (ONLY_MODEL, "[model]\nkind = \"command\"\ncommand = \"true\"\ns = \"a\\u0000b\"", "model.s", "NUL byte"),
    (
        ONLY_MODEL,
        "[model]\nkind = \"command\"\ncommand = \"true\"\nval_accuracy = 3",
        "experiment.metric",
        "also a parameter's name",
    ),
    (
        "kind = \"mlp\"\nhidden_units = { int = [8, 64] }",
        "kind = \"command\"\ncommand = \"./t\"",
        "data",
        "remove [data]",
    ),
    ("max_epochs = 2", "max_epochs = 2\n[chaos]\npanic_probability = 2.0", "chaos.panic_probability", "probability"),
    ("max_epochs = 2", "max_epochs = 2\n[chaos]\njournal_sync_ms = 5000", "chaos.journal_sync_ms", "0 to 1000"),
    (
        "max_epochs = 2",
        "max_epochs = 2\n[scheduler]\nkind = \"asha\"\nreduction_factor = 1",
        "scheduler.reduction_factor",
        "at least 2",
    ),
    (
        "max_epochs = 2",
        "max_epochs = 4\n[scheduler]\nkind = \"pbt\"\ninterval = 2\nmutate = [\"hidden_units\"]",
        "scheduler.mutate",
        "cannot change under PBT",
    ),
    (
        "max_epochs = 2",
        "max_epochs = 4\n[scheduler]\nkind = \"pbt\"\ninterval = 2\nmutate = [\"momentum\"]",
        "scheduler.mutate",
        "not a searched parameter",
    ),
    (
        "lr = { loguniform = [1e-4, 1e-1] }\noptimizer = { choice = [\"adam\", \"sgd\"] }\nmax_epochs = 2",
        "optimizer = { choice = [\"adam\", \"sgd\"] }\nmax_epochs = 4\n[scheduler]\nkind = \"pbt\"\ninterval = 2",
        "scheduler.mutate",
        "no searched parameter that PBT may change",
    ),
    ("max_trials = 2", "max_trials = 2 2", "(document)", "line"),
];

#[test]
fn bad_configs_exit_2_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(run_in(tmp.path(), &["validate", write(tmp.path(), "good.toml", GOOD).to_str().unwrap()]).status.success());
    for (i, (from, to, key, phrase)) in CASES.iter().enumerate() {
        assert!(GOOD.contains(from), "case {i}: `{from}` not in the base config");
        let text = GOOD.replacen(from, to, 1);
        let file = write(tmp.path(), &format!("bad{i}.toml"), &text);
        for command in ["validate", "run"] {
            let o = run_in(tmp.path(), &[command, file.to_str().unwrap()]);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "case {i} ({command}): {err}");
            assert!(err.contains(&format!("bad{i}.toml: {key}")), "case {i} ({command}) must name {key}: {err}");
            assert!(err.contains(phrase), "case {i} ({command}) must say `{phrase}`: {err}");
            assert!(!err.contains("panicked"), "case {i}: {err}");
        }
    }
    // Nothing ran: no run directory appeared.
    assert!(!tmp.path().join("runs").exists());
}

#[test]
fn yaml_errors_name_the_key_too() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = "experiment: {name: y}\ndata: {source: synthetic}\nmodel: {kind: mlp, dropout: {uniform: [0.5, 0.1]}}\n";
    let file = write(tmp.path(), "bad.yaml", yaml);
    let o = run_in(tmp.path(), &["validate", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bad.yaml: model.dropout: empty range"), "{}", stderr(&o));
}

#[test]
fn missing_files_and_unknown_flags_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run_in(tmp.path(), &["run", "nope.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope.toml: cannot read"), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("os error 2").count(), 1, "the cause once: {}", stderr(&o));
    let o = run_in(tmp.path(), &["status", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a run directory"), "{}", stderr(&o));
    let o = run_in(tmp.path(), &["run", "--frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn validate_refuses_the_run_directories_run_refuses() {
    // Before, `validate --out` said ok for a directory of someone's files
    // or one holding a run, both of which `run` then refused.
    let tmp = tempfile::tempdir().unwrap();
    let config = write(
        tmp.path(),
        "s.toml",
        "[experiment]\nname = \"s\"\nmax_trials = 1\n[model]\nkind = \"sleep\"\nepoch_ms = 1\n[train]\nmax_epochs = 1\n",
    );
    let config = config.to_str().unwrap();
    std::fs::create_dir(tmp.path().join("theirs")).unwrap();
    write(&tmp.path().join("theirs"), "notes.txt", "mine");
    assert!(run_in(tmp.path(), &["run", config, "--out", "done"]).status.success());
    for (dir, says) in [("theirs", "holds files but no run"), ("done", "already holds a run")] {
        for command in ["validate", "run"] {
            let o = run_in(tmp.path(), &[command, config, "--out", dir]);
            assert_eq!(o.status.code(), Some(2), "{command} {dir}: {}", stderr(&o));
            assert!(stderr(&o).contains(says), "{command} {dir}: {}", stderr(&o));
        }
    }
    assert!(run_in(tmp.path(), &["validate", config, "--out", "new"]).status.success());
}
