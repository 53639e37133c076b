"""Gauntlet side by side with Optuna and Ray Tune, one tool after another in
one invocation on this machine; writes docs/BENCHMARKS.md (figures, ratios,
the machine, versions, commands, caveats) and docs/benchmarks.csv (raw).
Run it through `scripts/compare [--quick]`, which installs the tools first.

Workloads:
 1. bookkeeping: no-op trials, random search, one four-dimensional space,
    with 0 reports and with 10 reports under successive halving;
 2. many short trials: 400 trials that sleep 0.5 s in 5 reports, 16 at once;
 3. Fashion-MNIST: the configs/quickstart.toml MLP space to a target accuracy;
 4. training throughput alone: the same MLP and CNN epoch in tch and PyTorch.
"""
import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAUNTLET = os.path.join(ROOT, "target", "release", "gauntlet")
PY = sys.executable
TOOLS = os.path.join(ROOT, "scripts", "compare_tools.py")
DATA = "/usr/share/datasets/fashion-mnist"
TARGETS = [0.85, 0.87, 0.88]

rows = []       # the raw CSV: workload, case, tool, seed, metric, value
failures = []   # tools that did not run: "what: why"
commands = []   # every command run, for the report
caveats = []


def record(workload, case, tool, seed, metric, value):
    rows.append({"workload": workload, "case": case, "tool": tool, "seed": seed, "metric": metric,
                 "value": "" if value is None else value})


class Clock:
    """The invocation's overall bound: each step gets what is left."""

    def __init__(self, seconds):
        self.deadline = time.time() + seconds

    def left(self):
        return max(0.0, self.deadline - time.time())


class OutOfTime(Exception):
    """The invocation's bound is reached: what is left does not run."""


LAUNCHED = "{launched}"


def run(cmd, timeout, cwd=None, env=None, stdout_file=None):
    """Runs a command; (launched, ended, stdout, returncode). A timeout kills
    it and is returned as code None; no time left at all raises OutOfTime.
    An argument LAUNCHED becomes the launch's Unix time, taken after the
    pause and the warm-up, just before the command starts."""
    if timeout < 5:
        raise OutOfTime(" ".join(cmd[:4]))
    commands.append(" ".join(shlex.quote(c) for c in cmd))
    settle()
    warm_up(cmd)
    launched = time.time()
    cmd = [str(launched) if c == LAUNCHED else c for c in cmd]
    out = open(stdout_file, "w") if stdout_file else subprocess.PIPE
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.PIPE, text=True,
                           timeout=max(1, timeout))
        code, text, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        code, text, err = None, "", (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else ""
    ended = time.time()
    if stdout_file:
        out.close()
        text = open(stdout_file).read()
    if code != 0:
        tail = (err or "").strip().splitlines()[-5:]
        print(f"compare: {'timed out' if code is None else f'exit {code}'}: {commands[-1]}\n  " + "\n  ".join(tail),
              file=sys.stderr)
    return launched, ended, text or "", code


def settle(seconds=60):
    """Waits until no process of Ray's is left (its cluster winding down
    must not share the CPU with the next measurement), then a second more."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        busy = False
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if b"ray/core/src/ray" in cmd or cmd.startswith(b"ray::") or b"ray/_private/" in cmd:
                busy = True
                break
        if not busy:
            break
        time.sleep(0.5)
    time.sleep(1)


def warm_up(cmd):
    """Loads what a measured command is about to load, just before it: this
    VM pages out file cache no process maps within seconds (DAMON pageout),
    so a run that starts after a pause reads libtorch (or Python's packages)
    from disk again, 2 to 10 s that say nothing of the tool. The same for
    every tool: Gauntlet's binary, or the Python tool's imports."""
    if cmd[0] == GAUNTLET:
        warm = [GAUNTLET, "--version"]
    elif cmd[0] == PY and len(cmd) > 3 and cmd[1] == TOOLS:
        tool = cmd[cmd.index("--tool") + 1] if "--tool" in cmd else "optuna"
        warm = [PY, "-c", "import torch, optuna" if tool == "optuna" else "import torch, ray, ray.tune"]
    else:
        return
    subprocess.run(warm, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def say(msg):
    print(f"compare [{datetime.datetime.now():%H:%M:%S}]: {msg}", file=sys.stderr, flush=True)


def iso_seconds(at):
    return datetime.datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def results_jsonl(run_dir):
    out = []
    with open(os.path.join(run_dir, "results.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "at" in r:
                out.append(r)
    return out


# --------------------------------------------------------------- workload 1

def noop_config(trials, reports, workers):
    scheduler = ('kind = "asha"\ngrace_epochs = 1\nreduction_factor = 3' if reports else 'kind = "fifo"')
    return f"""# scripts/compare: no-op trials through worker processes
[experiment]
name = "noop"
max_trials = {trials}
concurrency = {workers}
seed = 1
[model]
kind = "sleep"
epoch_ms = 0
quality = {{ uniform = [0.0, 0.5] }}
[train]
lr = {{ loguniform = [1e-4, 1e-1] }}
batch_size = {{ int = [16, 512], log = true }}
optimizer = {{ choice = ["adam", "sgd"] }}
max_epochs = {max(1, reports)}
[scheduler]
{scheduler}
[fault]
checkpoint_every = 1000000
"""


def bookkeeping(a, clock, work):
    cores = os.cpu_count()
    trials, ray_trials = a.noop_trials, a.ray_noop_trials
    for reports in [0, 10]:
        case = f"{reports} reports" + (" + successive halving" if reports else "")
        say(f"bookkeeping, {case}")
        scheduler = "asha" if reports else "fifo"
        for slots in sorted({1, cores}):
            _, _, out, code = run(["cargo", "bench", "--quiet", "--bench", "engine_overhead", "--", "--csv",
                                   "--trials", str(trials), "--reports", str(reports), "--slots", str(slots),
                                   "--scheduler", scheduler], clock.left(), cwd=ROOT)
            line = [l for l in out.strip().splitlines() if l.count(",") == 6]
            if code != 0 or not line:
                failures.append(f"Gauntlet in-process (bookkeeping, {case}): exit {code}")
                continue
            f = line[-1].split(",")
            record(1, case, f"gauntlet in-process, {slots} slot(s)", "", "trials_per_s", float(f[5]))
        # Worker processes: the real binary, a journal, loopback.
        workers = 2 * cores
        cfg = os.path.join(work, f"noop-{reports}.toml")
        open(cfg, "w").write(noop_config(trials, reports, workers))
        out_dir = os.path.join(work, f"noop-{reports}")
        launched, ended, out, code = run([GAUNTLET, "run", cfg, "--out", out_dir, "--json"], clock.left())
        if code == 0:
            ts = [iso_seconds(r["at"]) for r in results_jsonl(out_dir)]
            record(1, case, f"gauntlet, {workers} worker processes", "", "trials_per_s", trials / (ended - launched))
            if len(ts) > 1:
                record(1, case, f"gauntlet, {workers} worker processes (steady state)", "", "trials_per_s",
                       trials / (max(ts) - min(ts)))
        else:
            failures.append(f"Gauntlet worker processes (bookkeeping, {case}): exit {code}")
        for jobs in sorted({1, cores}) if "optuna" in a.tools else []:
            _, _, out, code = run([PY, TOOLS, "noop", "--tool", "optuna", "--trials", str(trials), "--reports",
                                   str(reports), "--jobs", str(jobs)], clock.left())
            r = last_json(out)
            if code != 0 or not r:
                failures.append(f"Optuna (bookkeeping, {case}): exit {code}")
                continue
            record(1, case, f"optuna in-memory, n_jobs={jobs}", "", "trials_per_s", r["trials_per_s"])
            versions["optuna"] = r["version"]
        if "ray" not in a.tools:
            continue
        _, _, out, code = run([PY, TOOLS, "noop", "--tool", "ray", "--trials", str(ray_trials), "--reports",
                               str(reports)], min(clock.left(), a.ray_noop_timeout))
        r = last_json(out)
        if code != 0 or not r:
            failures.append(f"Ray Tune (bookkeeping, {case}): {'timed out' if code is None else f'exit {code}'}")
        else:
            record(1, case, f"ray tune ({ray_trials} trials)", "", "trials_per_s", r["trials_per_s"])
            versions["ray"] = r["version"]


# --------------------------------------------------------------- workload 2

SHORT_CONFIG = """# scripts/compare: many short trials
[experiment]
name = "short"
max_trials = {trials}
concurrency = {concurrency}
seed = 1
[model]
kind = "sleep"
epoch_ms = {epoch_ms}
quality = {{ uniform = [0.0, 0.99] }}
[train]
max_epochs = {epochs}
[scheduler]
kind = "fifo"
[fault]
checkpoint_every = 1000000
"""


def split(launched, first_report, last_report, ended, epoch_s):
    """Start-up (launch to the first trial's start), steady state, wind-down."""
    first_start = first_report - epoch_s
    return first_start - launched, last_report - first_start, ended - last_report


def many_short(a, clock, work):
    trials, conc, epochs, epoch_s = a.short_trials, 16, 5, 0.1
    ideal = trials * epochs * epoch_s / conc
    case = f"{trials} x {epochs * epoch_s:g} s, {conc} at once"
    say(f"many short trials, {case}")
    cfg = os.path.join(work, "short.toml")
    open(cfg, "w").write(SHORT_CONFIG.format(trials=trials, concurrency=conc, epoch_ms=int(epoch_s * 1000),
                                             epochs=epochs))
    for attempt in range(a.short_repeats if "gauntlet" in a.tools else 0):
        out_dir = os.path.join(work, f"short-{attempt}")
        launched, ended, out, code = run([GAUNTLET, "run", cfg, "--out", out_dir, "--json"], clock.left())
        if code != 0:
            failures.append(f"Gauntlet (many short trials): exit {code}")
            break
        ts = [iso_seconds(r["at"]) for r in results_jsonl(out_dir)]
        put_short(case, "gauntlet, 16 worker processes", attempt, launched, ended, min(ts), max(ts), epoch_s, ideal,
                  len({r["trial"] for r in results_jsonl(out_dir) if r["epoch"] == epochs}))
    for tool, label, n, timeout in [
            ("optuna", "optuna, n_jobs=16 threads", trials, clock.left()),
            ("ray", "ray tune, 16 concurrent" + ("" if a.ray_short_trials == trials else
                                                 f" ({a.ray_short_trials} trials)"),
             a.ray_short_trials, min(clock.left(), a.ray_short_timeout))]:
        if tool not in a.tools:
            continue
        for attempt in range(a.short_repeats if tool == "optuna" else 1):
            # The tool stops itself 30 s before the timeout (Ray Tune's time_budget_s), so that a
            # tool too slow to finish still gives its figures: how many trials it finished, and when.
            launched, ended, out, code = run([PY, TOOLS, "short", "--tool", tool, "--trials", str(n), "--concurrency",
                                              str(conc), "--epochs", str(epochs), "--epoch-s", str(epoch_s),
                                              "--launched", LAUNCHED, "--budget", str(max(10, timeout - 30))], timeout)
            r = last_json(out)
            if code != 0 or not r:
                failures.append(f"{tool} (many short trials): {'timed out' if code is None else f'exit {code}'}")
                break
            put_short(case, label, attempt, launched, r.get("ended", ended), r["first_report"], r["last_report"], epoch_s,
                      n * epochs * epoch_s / conc, r.get("trials", n))
            if r.get("trials", n) < n:
                caveats.append(f"{label} finished {r['trials']} of its {n} trials before its {timeout - 30:.0f} s "
                               "bound in workload 2: its wall time is a lower bound, its steady state covers only "
                               "those trials.")
    return ideal


def put_short(case, tool, attempt, launched, ended, first, last, epoch_s, ideal, finished):
    up, steady, down = split(launched, first, last, ended, epoch_s)
    wall = ended - launched
    for metric, value in [("wall_s", wall), ("startup_s", up), ("steady_s", steady), ("winddown_s", down),
                          ("over_ideal", wall / ideal - 1), ("finished", finished)]:
        record(2, case, tool, attempt, metric, value)


# --------------------------------------------------------------- workload 3

def fashion_config(search, scheduler, seed, budget, concurrency, threads):
    sched = {"asha": 'kind = "asha"', "asha-promotion": 'kind = "asha"\npromotion = true',
             "hyperband": 'kind = "hyperband"'}[scheduler]
    # Optuna's TPESampler defaults, for a like-for-like diagnostic: one density per dimension, no liar.
    algorithm = {"tpe-univariate": 'algorithm = "tpe"\nmultivariate = false\nconstant_liar = false'}.get(
        search, f'algorithm = "{search}"')
    return f"""# scripts/compare: configs/quickstart.toml's space, sampler and scheduler varied
[experiment]
name = "fashion-{search}-{scheduler}"
metric = "val_accuracy"
mode = "max"
seed = {seed}
max_trials = 100000
concurrency = {concurrency}
threads_per_trial = {threads}
time_budget = "{int(budget)}s"
[data]
source = "fashion-mnist"
validation_fraction = 0.1
[model]
kind = "mlp"
hidden_layers = {{ int = [1, 2] }}
hidden_units = {{ int = [32, 512], log = true }}
dropout = {{ uniform = [0.0, 0.4] }}
[train]
optimizer = {{ choice = ["adam", "sgd"] }}
lr = {{ loguniform = [1e-4, 1e-1] }}
momentum = 0.9
weight_decay = 0.0
batch_size = {{ choice = [64, 128, 256] }}
max_epochs = 15
[search]
{algorithm}
[scheduler]
{sched}
grace_epochs = 1
reduction_factor = 3
[fault]
max_restarts = 3
checkpoint_every = 1
"""


def curve_figures(workload_case, tool, seed, launched, points, budget):
    """points: (unix time, val_accuracy). Time to each target, best within the budget."""
    points = sorted(points)
    for target in TARGETS:
        hit = next((t - launched for t, acc in points if acc >= target), None)
        record(3, workload_case, tool, seed, f"time_to_{target}", hit if hit is not None and hit <= budget else None)
    inside = [acc for t, acc in points if t - launched <= budget]
    record(3, workload_case, tool, seed, "best_val", max(inside) if inside else None)


def test_labels():
    import gzip
    raw = gzip.open(f"{DATA}/t10k-labels-idx1-ubyte.gz").read()[8:]
    return list(raw)


def gauntlet_test_accuracy(run_dir, work, labels):
    pred = os.path.join(work, "pred.csv")
    _, _, _, code = run([GAUNTLET, "predict", "--model", os.path.join(run_dir, "best"), "--input",
                         f"{DATA}/t10k-images-idx3-ubyte.gz", "--output", pred], 300)
    if code != 0:
        return None
    with open(pred) as f:
        reader = csv.reader(f)
        header = next(reader)
        probs = [i for i, h in enumerate(header) if h.startswith("p_")]
        correct = total = 0
        for row, label in zip(reader, labels):
            guess = max(range(len(probs)), key=lambda k: float(row[probs[k]]))
            correct += int(guess == label)
            total += 1
    return correct / total if total else None


FASHION_METHODS = [("random-asha", "gauntlet random + ASHA", "random", "asha"),
                   ("tpe-asha", "gauntlet TPE + ASHA", "tpe", "asha"),
                   ("random-hyperband", "gauntlet random + Hyperband", "random", "hyperband"),
                   ("tpe-asha-promotion", "gauntlet TPE + ASHA, promotion form", "tpe", "asha-promotion"),
                   ("tpe-univariate-asha", "gauntlet TPE univariate, no liar (Optuna's defaults) + ASHA",
                    "tpe-univariate", "asha")]


def fashion_case(budget):
    return f"Fashion-MNIST MLP, {int(budget)} s budget, 2 trials at once, 1 thread each"


def fashion(a, clock, work, started):
    budget, seeds = a.budget, a.seeds
    case = fashion_case(budget)
    labels = test_labels()
    methods = [(label, search, scheduler) for key, label, search, scheduler in FASHION_METHODS if key in a.methods]
    for seed in range(a.first_seed, a.first_seed + seeds):
        for label, search, scheduler in methods if "gauntlet" in a.tools else []:
            say(f"Fashion-MNIST seed {seed}: {label}")
            cfg = os.path.join(work, f"fashion-{search}-{scheduler}-{seed}.toml")
            open(cfg, "w").write(fashion_config(search, scheduler, seed, budget, 2, 1))
            out_dir = os.path.join(work, f"fashion-{search}-{scheduler}-{seed}")
            launched, ended, out, code = run([GAUNTLET, "run", cfg, "--out", out_dir, "--json"],
                                             min(clock.left(), budget + 300))
            if code != 0:
                failures.append(f"{label} (Fashion-MNIST seed {seed}): exit {code}")
                continue
            points = [(iso_seconds(r["at"]), r["val_accuracy"]) for r in results_jsonl(out_dir)
                      if "val_accuracy" in r]
            curve_figures(case, label, seed, launched, points, budget)
            record(3, case, label, seed, "trials", len({r["trial"] for r in results_jsonl(out_dir)}))
            record(3, case, label, seed, "test_accuracy", gauntlet_test_accuracy(out_dir, work, labels))
        for tool, label in [("optuna", "optuna TPE + successive halving"), ("ray", "ray tune random + ASHA")]:
            if tool not in a.tools:
                continue
            say(f"Fashion-MNIST seed {seed}: {label}")
            log = os.path.join(work, f"fashion-{tool}-{seed}.jsonl")
            launched, ended, out, code = run([PY, TOOLS, "fashion", "--tool", tool, "--seed", str(seed), "--budget",
                                              str(budget), "--concurrency", "2", "--threads", "1", "--launched",
                                              LAUNCHED, "--log", log], min(clock.left(), budget + 300))
            r = last_json(out)
            if code != 0 or not r:
                failures.append(f"{label} (Fashion-MNIST seed {seed}): {'timed out' if code is None else code}")
                continue
            points = []
            if os.path.exists(log):
                for line in open(log):
                    p = json.loads(line)
                    points.append((p["at"], p["val_accuracy"]))
            curve_figures(case, label, seed, launched, points, budget)
            record(3, case, label, seed, "trials", r["trials"])
            record(3, case, label, seed, "test_accuracy", r["test_accuracy"])
    return case


# --------------------------------------------------------------- workload 4

def throughput(a, clock):
    say("training throughput, tch against PyTorch eager")
    env = dict(os.environ, GAUNTLET_BENCH_REPEATS=str(a.train_repeats), GAUNTLET_BENCH_EPOCHS=str(a.train_epochs),
               GAUNTLET_BENCH_SAMPLES=str(a.train_samples))
    _, _, out, code = run(["bash", os.path.join(ROOT, "scripts", "bench-vs-pytorch"), "1", "128"],
                          clock.left(), cwd=ROOT, env=env)
    if code != 0:
        failures.append(f"training throughput (scripts/bench-vs-pytorch): exit {code}")
        return
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4 and f[0] in ("mlp", "cnn"):
            record(4, f"{f[0].upper()}, 1 thread, batch 128", "gauntlet (tch)", "", "images_per_s", float(f[1]))
            record(4, f"{f[0].upper()}, 1 thread, batch 128", "pytorch eager", "", "images_per_s", float(f[2]))


# ------------------------------------------------------------------ report

versions = {}


def machine():
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores ({model}), {mem / 1024:.0f} GiB, Linux {platform.release()}"


def tool_versions():
    v = {"python": platform.python_version()}
    out = subprocess.run([GAUNTLET, "--version"], capture_output=True, text=True).stdout.strip()
    v["gauntlet"] = out.split()[-1] if out else "?"
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    v["gauntlet commit"] = rev.stdout.strip() or "?"
    for mod in ["torch", "optuna", "ray"]:
        r = subprocess.run([PY, "-c", f"import {mod}; print({mod}.__version__)"], capture_output=True, text=True)
        v[mod] = r.stdout.strip().split("\n")[-1] if r.returncode == 0 else "not installed"
    v.update(versions)
    return v


def values(workload, case, tool, metric):
    return [r["value"] for r in rows if r["workload"] == workload and r["case"] == case and r["tool"] == tool
            and r["metric"] == metric and r["value"] != ""]


def fmt(x, digits=0):
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def med(xs):
    return statistics.median(xs) if xs else None


def write_report(a, path, started, ideal, fashion_case):
    lines = []
    w = lines.append
    v = tool_versions()
    w("# Benchmarks: Gauntlet, Optuna and Ray Tune side by side")
    w("")
    w(f"Written by `scripts/compare{' --quick' if a.quick else ''}` on {datetime.date.today()}, "
      f"in {(time.time() - started) / 60:.0f} minutes: every tool on the same machine, one after another, "
      "in one invocation. Raw figures: [benchmarks.csv](benchmarks.csv).")
    w("")
    w(f"- **Machine**: {machine()}.")
    w("- **Versions**: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".")
    w("- Optuna and Ray Tune are the latest on PyPI, installed by `scripts/compare` into the venv of "
      "`scripts/setup`; PyTorch is that venv's.")
    w("")
    # 1
    w("## 1. Bookkeeping: no-op trials")
    w("")
    w(f"{a.noop_trials:,} trials of random search over one space (uniform, log-uniform, int, choice). "
      "\"0 reports\": the trial's only result is its final value (an Optuna objective's return; one report "
      "in Gauntlet). \"10 reports\": ten intermediate values under successive halving (grace 1 epoch, "
      "reduction factor 3: Gauntlet's ASHA, Optuna's SuccessiveHalvingPruner, Ray Tune's ASHAScheduler). "
      "Trials per second, higher is better.")
    w("")
    for case in ["0 reports", "10 reports + successive halving"]:
        tools = []
        for r in rows:
            if r["workload"] == 1 and r["case"] == case and r["tool"] not in tools:
                tools.append(r["tool"])
        optuna1 = med(values(1, case, "optuna in-memory, n_jobs=1", "trials_per_s"))
        w(f"**{case}**")
        w("")
        w("| tool | trials/s | x Optuna (n_jobs=1) |")
        w("|---|---:|---:|")
        for t in tools:
            x = med(values(1, case, t, "trials_per_s"))
            w(f"| {t} | {fmt(x, 1 if x is not None and x < 10 else 0)} | "
              f"{fmt(x / optuna1, 2) if x is not None and optuna1 else '—'} |")
        w("")
    # 2
    w("## 2. Many short trials")
    w("")
    case2 = next((r["case"] for r in rows if r["workload"] == 2), None)
    if case2:
        w(f"{case2}: the ideal is {ideal:.1f} s. Wall time from the command's launch to its exit, split into "
          "start-up (launch to the first trial's start), steady state (first start to last report) and "
          "wind-down (last report to exit). Median over the runs; \"over ideal\" is wall / ideal - 1.")
        w("")
        w("| tool | runs | trials finished | wall s | over ideal | start-up s | steady s | wind-down s |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        tools = []
        for r in rows:
            if r["workload"] == 2 and r["tool"] not in tools:
                tools.append(r["tool"])
        for t in tools:
            walls = values(2, case2, t, "wall_s")
            w(f"| {t} | {len(walls)} | {fmt(med(values(2, case2, t, 'finished')))} | {fmt(med(walls), 2)} | {fmt(100 * med(values(2, case2, t, 'over_ideal')), 1)}% | "
              f"{fmt(med(values(2, case2, t, 'startup_s')), 2)} | {fmt(med(values(2, case2, t, 'steady_s')), 2)} | "
              f"{fmt(med(values(2, case2, t, 'winddown_s')), 2)} |")
        w("")
    # 3
    w("## 3. A real sweep to a target: Fashion-MNIST")
    w("")
    if fashion_case:
        w(f"{fashion_case}. The space, epochs (15), threads and pruning of `configs/quickstart.toml` "
          "(successive halving, reduction factor 3, grace 1 epoch); Optuna and Ray Tune train the same MLP in "
          "PyTorch eager on the same 54,000/6,000 split sizes of Debian's Fashion-MNIST. Time is from the "
          f"command's launch; a target not reached within the budget shows as —. Seeds: {a.seeds} ("
          f"{a.first_seed} to {a.first_seed + a.seeds - 1}); median "
          "[min–max].")
        w("")
        w("| method | trials | s to 0.85 | s to 0.87 | s to 0.88 | best val in budget | test acc of best |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        tools = []
        for r in rows:
            if r["workload"] == 3 and r["tool"] not in tools:
                tools.append(r["tool"])

        def cell(t, metric, digits):
            all_seeds = [r for r in rows if r["workload"] == 3 and r["tool"] == t and r["metric"] == metric]
            xs = [r["value"] for r in all_seeds if r["value"] != ""]
            if not all_seeds:
                return "—"
            missed = len(all_seeds) - len(xs)
            if not xs:
                return "—"
            text = f"{med(xs):.{digits}f} [{min(xs):.{digits}f}–{max(xs):.{digits}f}]"
            return text + (f" ({missed} missed)" if missed else "")

        for t in tools:
            w(f"| {t} | {cell(t, 'trials', 0)} | {cell(t, 'time_to_0.85', 0)} | {cell(t, 'time_to_0.87', 0)} | "
              f"{cell(t, 'time_to_0.88', 0)} | {cell(t, 'best_val', 4)} | {cell(t, 'test_accuracy', 4)} |")
        w("")
    # 4
    w("## 4. Training throughput alone")
    w("")
    w(f"`scripts/bench-vs-pytorch 1 128`: the same models, Adam, batches and data ({a.train_samples:,} "
      f"Fashion-MNIST images, 90% for training), {a.train_epochs} epochs of which the first is warm-up, "
      f"training images per second, median of {a.train_repeats} alternating repeats.")
    w("")
    w("| model | gauntlet (tch) | pytorch eager | ratio |")
    w("|---|---:|---:|---:|")
    for case in ["MLP, 1 thread, batch 128", "CNN, 1 thread, batch 128"]:
        g, p = med(values(4, case, "gauntlet (tch)", "images_per_s")), med(values(4, case, "pytorch eager",
                                                                               "images_per_s"))
        w(f"| {case} | {fmt(g)} | {fmt(p)} | {fmt(g / p, 2) if g and p else '—'} |")
    w("")
    w("## Targets")
    w("")
    w(TARGETS_TEXT_PLACEHOLDER)
    w("")
    w("## Caveats")
    w("")
    for c in caveats:
        w(f"- {c}")
    if failures:
        w("")
        w("## What did not run")
        w("")
        for f in failures:
            w(f"- {f}")
    w("")
    w("## Commands")
    w("")
    w("```")
    for c in commands:
        w(c)
    w("```")
    text = "\n".join(lines) + "\n"
    return text


TARGETS_TEXT_PLACEHOLDER = "<!-- targets -->"


def targets_text(ideal):
    """The issue's targets against this run's figures, met or missed."""
    out = []

    def ratio(case, tool, base):
        x, y = med(values(1, case, tool, "trials_per_s")), med(values(1, case, base, "trials_per_s"))
        return (x / y) if x and y else None

    cores = os.cpu_count()
    for case, want in [("0 reports", 10), ("10 reports + successive halving", 20)]:
        for slots in sorted({1, cores}):
            r = ratio(case, f"gauntlet in-process, {slots} slot(s)", "optuna in-memory, n_jobs=1")
            if r is None:
                continue
            out.append(f"- In-process no-op, {case}, {slots} slot(s): **{r:.1f}x** Optuna (target {want}x): "
                       f"{'met' if r >= want else 'missed'}.")
    case2 = next((r["case"] for r in rows if r["workload"] == 2), None)
    walls = values(2, case2, "gauntlet, 16 worker processes", "wall_s") if case2 else []
    if walls:
        over = med(walls) / ideal - 1
        out.append(f"- {case2} through worker processes: **{med(walls):.2f} s**, {100 * over:.1f}% over the ideal "
                   f"{ideal:.1f} s (target within 5%): {'met' if over <= 0.05 else 'missed'}.")
    for reports in ["0 reports"]:
        xs = values(1, reports, f"gauntlet, {2 * cores} worker processes (steady state)", "trials_per_s")
        if xs:
            out.append(f"- Worker-process dispatch over loopback ({2 * cores} workers, no-op trials, one report, "
                       f"steady state): **{med(xs):,.0f} trials/s** (target 2,000): "
                       f"{'met' if med(xs) >= 2000 else 'missed'}.")
    t88 = {}
    for r in rows:
        if r["workload"] == 3 and r["metric"] == "time_to_0.88":
            t88.setdefault(r["tool"], []).append(r["value"])
    if t88:
        def median_time(xs):
            # A seed that never reached the target counts as never (infinity); with an even number of
            # seeds the mean of the middle two, as in the tables (infinite if either is).
            vals = [float("inf") if x == "" else x for x in xs]
            return statistics.median(vals) if vals else float("inf")

        ours = {t: median_time(xs) for t, xs in t88.items() if t.startswith("gauntlet")}
        best = min(ours, key=ours.get) if ours else None
        optuna = median_time(t88.get("optuna TPE + successive halving", []))
        if best is not None:
            b = ours[best]
            if b == float("inf"):
                out.append(f"- Fashion-MNIST: no Gauntlet method reached 0.88 in the median seed: **missed**.")
            elif optuna == float("inf"):
                out.append(f"- Fashion-MNIST: {best} reached 0.88 in a median {b:.0f} s; Optuna TPE + SH did not "
                           "reach it in the median seed: met (at least 2x sooner).")
            else:
                out.append(f"- Fashion-MNIST: {best} reached 0.88 in a median **{b:.0f} s** against Optuna's "
                           f"{optuna:.0f} s: **{optuna / b:.2f}x** sooner (target 2x): "
                           f"{'met' if optuna / b >= 2 else 'missed'}.")
        bv = {}
        for r in rows:
            if r["workload"] == 3 and r["metric"] == "best_val" and r["value"] != "":
                bv.setdefault(r["tool"], []).append(r["value"])
        if best in bv and "optuna TPE + successive halving" in bv:
            g, o = med(bv[best]), med(bv["optuna TPE + successive halving"])
            out.append(f"- Fashion-MNIST, best within the budget: {best} {g:.4f} against Optuna's {o:.4f} "
                       f"(target: at least as good): {'met' if g >= o else 'missed'}.")
    return "\n".join(out) if out else "(no figures)"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="a smaller run, under 10 minutes")
    p.add_argument("--only", default="1,2,3,4", help="workloads to run, e.g. 1,2")
    p.add_argument("--budget", type=float, help="Fashion-MNIST budget per run, seconds")
    p.add_argument("--seeds", type=int)
    p.add_argument("--first-seed", type=int, default=1,
                   help="workload 3's seeds are this one and those after it (default 1), so that a later "
                        "invocation can draw seeds no earlier one drew")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    p.add_argument("--limit-minutes", type=float, help="the invocation's bound")
    p.add_argument("--tools", default="gauntlet,optuna,ray",
                   help="which tools run (comma list of gauntlet, optuna, ray); workload 1 always runs Gauntlet, "
                        "workload 4 compares tch with PyTorch whatever this says")
    p.add_argument("--methods", default="random-asha,tpe-asha,random-hyperband",
                   help="which Gauntlet methods run workload 3 (default the first three; comma list of " +
                   ", ".join(k for k, _, _, _ in FASHION_METHODS) + ")")
    a = p.parse_args()
    a.tools = set(a.tools.split(","))
    a.methods = [m for m in a.methods.split(",") if m]
    unknown = [m for m in a.methods if m not in {k for k, _, _, _ in FASHION_METHODS}]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)}; expected some of "
                f"{', '.join(k for k, _, _, _ in FASHION_METHODS)}")
    quick = a.quick
    a.noop_trials = 2000 if quick else 10000
    a.ray_noop_trials = 10 if quick else 60
    a.ray_noop_timeout = 120 if quick else 400
    a.ray_short_timeout = 150 if quick else 420
    a.short_trials = 400
    a.short_repeats = 1 if quick else 3
    a.budget = a.budget or (30.0 if quick else 120.0)
    a.seeds = a.seeds or (1 if quick else 3)
    a.train_repeats = 1 if quick else 3
    a.train_epochs = 2 if quick else 3
    a.train_samples = 6000 if quick else 10000
    a.ray_short_trials = 64 if quick else 400
    limit = (a.limit_minutes or (10 if quick else 60)) * 60
    clock = Clock(limit - 30)
    only = {int(x) for x in a.only.split(",") if x}
    if only & {1, 4} and "LIBTORCH_USE_PYTORCH" not in os.environ:
        p.error("workloads 1 and 4 build Gauntlet's benchmarks with cargo, which needs scripts/env.sh: "
                "run scripts/compare (it sources it), or `. scripts/env.sh` first")
    started = time.time()
    caveats.extend([
        f"Ray Tune runs {a.ray_noop_trials} no-op trials, not {a.noop_trials:,}: at under one trial per second "
        "on this machine (each trial is a Ray actor with its own result directory), the full count would take "
        "hours. Its figure is a rate all the same.",
        "Every Python process ends with os._exit once its figures are out: Ray's shutdown and libtorch's teardown "
        "(seconds for Ray) are not counted against them. Gauntlet ends the same way, without static destructors.",
        "Gauntlet's runs journal every event to disk (fsync in groups) and, in workload 3, checkpoint every epoch "
        "(the quickstart's fault settings); Optuna's study is in memory and Ray Tune writes its own result files.",
        "This VM pages out file cache that no process maps within seconds (DAMON pageout): a Gauntlet run "
        "started after a pause read libtorch from disk again, 2.5 to 3.5 s of start-up in workload 2 (up to 10 s "
        "for the first call). So just before each measured command, the same tool is loaded once unmeasured: "
        "`gauntlet --version`, or `python -c 'import torch, optuna'` (ray for Ray Tune).",
        "Gauntlet in-process is the library (`Sweep::run_blocking`) with no journal; worker processes are "
        "`gauntlet run` with its journal, local workers, loopback.",
        "Gauntlet splits Fashion-MNIST with its own seeded shuffle, the Python tools with torch.randperm(seed 0): "
        "the same sizes, not the same images; test accuracy is on the 10,000 test images for all.",
        "In workload 3 each tool stops proposing at the budget; a figure counts only results reported within it. "
        "Gauntlet's and Optuna's running trials stop at their next epoch; Ray Tune's at its time_budget_s.",
    ])
    if quick:
        caveats.append("This is a --quick run: fewer trials, one seed and a short budget; its figures are noisier "
                       "than a default run's.")
    if a.budget < 600:
        caveats.append(f"The Fashion-MNIST budget is {a.budget:.0f} s per run, not the 10 minutes of the issue, so "
                       "that 5 methods x the seeds fit the default 60-minute bound; `scripts/compare --budget 600` "
                       "runs the 10-minute version (about 2.7 hours).")
    work = tempfile.mkdtemp(prefix="gauntlet-compare-")
    ideal, fcase = 0.0, None
    try:
        if 1 in only:
            bookkeeping(a, clock, work)
        if 2 in only:
            ideal = many_short(a, clock, work)
        if 4 in only:
            throughput(a, clock)
        if 3 in only:
            fcase = fashion(a, clock, work, started)
    except OutOfTime as e:
        failures.append(f"the {limit / 60:.0f}-minute bound was reached before `{e}`; what follows it did not run")
    if 3 in only and any(r["workload"] == 3 for r in rows):
        fcase = fashion_case(a.budget)
    if 2 in only and not ideal:
        ideal = a.short_trials * 0.5 / 16
    text = write_report(a, a.out, started, ideal, fcase)
    text = text.replace(TARGETS_TEXT_PLACEHOLDER, targets_text(ideal))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    open(a.out, "w").write(text)
    with open(os.path.splitext(a.out)[0].replace("BENCHMARKS", "benchmarks") + ".csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["workload", "case", "tool", "seed", "metric", "value"])
        wr.writeheader()
        wr.writerows(rows)
    say(f"wrote {a.out} in {(time.time() - started) / 60:.1f} minutes")
    if failures:
        say("these did not run: " + "; ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
