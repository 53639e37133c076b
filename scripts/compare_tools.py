"""The Optuna and Ray Tune sides of `scripts/compare`: each workload as
those tools' documentation recommends using them (an in-memory Optuna
study, a Ray Tune `Tuner`), printing one JSON object of results on its
last line of stdout. `scripts/compare.py` runs these and Gauntlet one after
another and writes docs/BENCHMARKS.md.

    python scripts/compare_tools.py noop  --tool optuna --trials 10000 --reports 0
    python scripts/compare_tools.py short --tool ray --trials 400 --concurrency 16
    python scripts/compare_tools.py fashion --tool optuna --seed 1 --budget 150 --log run.jsonl

Times are Unix seconds (time.time()), so that the caller can measure from
its own launch of the process: interpreter start-up and imports count, as a
Gauntlet command's start-up counts.
"""
import argparse
import gzip
import json
import os
import sys
import tempfile
import threading
import time
import warnings
import zlib

warnings.filterwarnings("ignore")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

DATA = "/usr/share/datasets/fashion-mnist"


def done(result):
    """Prints the figures with the time they were final: the process's exit
    after it (Ray's shutdown) is not counted against the tool."""
    result["ended"] = time.time()
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- Ray set-up

def ray_init(cpus):
    import ray
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             configure_logging=True)
    return ray


def ray_run_config(name, storage):
    from ray import tune
    return tune.RunConfig(name=name, storage_path=storage, verbose=0)


# ------------------------------------------------------ 1. bookkeeping, no-op

def noop(a):
    """No-op trials over the same four-dimensional space; with 0 reports the
    objective returns its value, with N it reports N intermediate values under
    successive halving (grace 1, reduction factor 3)."""
    started = time.time()
    if a.tool == "optuna":
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)

        def objective(trial):
            lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            trial.suggest_float("dropout", 0.0, 0.5)
            trial.suggest_int("units", 16, 512, log=True)
            trial.suggest_categorical("optimizer", ["adam", "sgd"])
            score = lr
            for epoch in range(1, a.reports + 1):
                score = lr * epoch
                trial.report(score, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            return score

        pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
                  if a.reports else optuna.pruners.NopPruner())
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=a.seed),
                                    pruner=pruner)
        t0 = time.time()
        study.optimize(objective, n_trials=a.trials, n_jobs=a.jobs)
        seconds = time.time() - t0
        trials = len(study.trials)
        version = optuna.__version__
    else:
        ray = ray_init(a.cpus)
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler

        def objective(config):
            score = config["lr"]
            if a.reports == 0:
                tune.report({"score": score})
                return
            for epoch in range(1, a.reports + 1):
                tune.report({"score": config["lr"] * epoch})

        space = {"lr": tune.loguniform(1e-4, 1e-1), "dropout": tune.uniform(0.0, 0.5),
                 "units": tune.lograndint(16, 513), "optimizer": tune.choice(["adam", "sgd"])}
        scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=a.reports, grace_period=1,
                                   reduction_factor=3) if a.reports else None)
        storage = tempfile.mkdtemp(prefix="gauntlet-compare-ray-")
        tuner = tune.Tuner(objective, param_space=space,
                           tune_config=tune.TuneConfig(num_samples=a.trials, metric="score", mode="max",
                                                       scheduler=scheduler),
                           run_config=ray_run_config("noop", storage))
        t0 = time.time()
        results = tuner.fit()
        seconds = time.time() - t0
        trials = len(results)
        version = ray.__version__
    done({"tool": a.tool, "version": version, "trials": trials, "seconds": seconds,
          "trials_per_s": trials / seconds, "process_s": time.time() - started})


# ------------------------------------------------------- 2. many short trials

def short(a):
    """Trials that each sleep `epochs` x `epoch_s` and report after each
    sleep, `concurrency` at once; every report's Unix time is logged."""
    reports = []
    lock = threading.Lock()
    if a.tool == "optuna":
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)

        def objective(trial):
            quality = trial.suggest_float("quality", 0.0, 0.99)
            for epoch in range(1, a.epochs + 1):
                time.sleep(a.epoch_s)
                trial.report(quality * epoch / a.epochs, epoch)
                with lock:
                    reports.append(time.time())
            return quality

        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=a.seed),
                                    pruner=optuna.pruners.NopPruner())
        study.optimize(objective, n_trials=a.trials, n_jobs=a.concurrency)
        trials = len(study.trials)
        version = optuna.__version__
    else:
        ray = ray_init(a.cpus)
        from ray import tune

        # Each trial appends its reports' times to one file (a line is one write).
        times = tempfile.mktemp(prefix="gauntlet-compare-ray-times-")

        def objective(config):
            for epoch in range(1, a.epochs + 1):
                time.sleep(a.epoch_s)
                tune.report({"score": config["quality"] * epoch / a.epochs})
                with open(times, "a") as f:
                    f.write(f"{time.time()}\n")

        storage = tempfile.mkdtemp(prefix="gauntlet-compare-ray-")
        # Enough CPU per trial for `concurrency` of them on this machine's cores.
        trainable = tune.with_resources(objective, {"cpu": a.cpus / a.concurrency})
        # Bounded: Ray stops itself at `--budget` seconds (then fewer trials finished).
        tuner = tune.Tuner(trainable, param_space={"quality": tune.uniform(0.0, 0.99)},
                           tune_config=tune.TuneConfig(num_samples=a.trials, metric="score", mode="max",
                                                       max_concurrent_trials=a.concurrency,
                                                       time_budget_s=max(1.0, a.launched + a.budget - time.time())),
                           run_config=ray_run_config("short", storage))
        results = tuner.fit()
        trials = sum(1 for r in results if r.metrics and r.metrics.get("training_iteration") == a.epochs)
        if os.path.exists(times):
            reports.extend(float(x) for x in open(times) if x.strip())
        version = ray.__version__
    if a.tool == "optuna":
        trials = sum(1 for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    done({"tool": a.tool, "version": version, "trials": trials, "first_report": min(reports),
          "last_report": max(reports), "reports": len(reports)})


# ------------------------------------------------- 3. Fashion-MNIST to a target

def load_fashion():
    import torch

    def images(name):
        raw = gzip.open(f"{DATA}/{name}-images-idx3-ubyte.gz").read()[16:]
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 784).float() / 255.0

    def labels(name):
        raw = gzip.open(f"{DATA}/{name}-labels-idx1-ubyte.gz").read()[8:]
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()

    x, y = images("train"), labels("train")
    val = int(round(len(y) * 0.1))  # validation_fraction = 0.1, as configs/quickstart.toml
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return (x[perm[val:]], y[perm[val:]], x[perm[:val]], y[perm[:val]], images("t10k"), labels("t10k"))


def mlp(layers, units, dropout):
    from torch import nn
    mods, width = [], 784
    for _ in range(layers):
        mods += [nn.Linear(width, units), nn.ReLU()]
        if dropout > 0:
            mods.append(nn.Dropout(dropout))
        width = units
    mods.append(nn.Linear(width, 10))
    return nn.Sequential(*mods)


def accuracy(net, x, y):
    import torch
    net.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(y), 4096):
            correct += int((net(x[s:s + 4096]).argmax(1) == y[s:s + 4096]).sum())
    return correct / len(y)


def train_trial(config, data, report, seed, save_best):
    """configs/quickstart.toml's MLP and training loop in PyTorch eager:
    `report(epoch, val_accuracy)` after each epoch returns False to stop."""
    import torch
    from torch import nn
    tx, ty, vx, vy = data[:4]
    torch.manual_seed(seed)
    net = mlp(config["hidden_layers"], config["hidden_units"], config["dropout"])
    if config["optimizer"] == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=config["lr"])
    else:
        opt = torch.optim.SGD(net.parameters(), lr=config["lr"], momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    best = -1.0
    for epoch in range(1, 16):
        net.train()
        order = torch.randperm(len(ty))
        for s in range(0, len(ty), config["batch_size"]):
            idx = order[s:s + config["batch_size"]]
            opt.zero_grad()
            loss = loss_fn(net(tx.index_select(0, idx)), ty.index_select(0, idx))
            loss.backward()
            opt.step()
        acc = accuracy(net, vx, vy)
        if acc > best:
            best = acc
            save_best(net, acc)
        if not report(epoch, acc):
            return


def fashion(a):
    """The quickstart MLP space, trained in PyTorch, until `budget` seconds:
    Optuna TPE with its successive-halving pruner, or Ray Tune ASHA. Every
    validation result goes to `--log` as a JSON line with its Unix time."""
    import torch
    torch.set_num_threads(a.threads)
    data = load_fashion()
    deadline = a.launched + a.budget
    log = open(a.log, "a", buffering=1)
    lock = threading.Lock()
    best = {"acc": -1.0, "state": None, "config": None}

    def keeper(config):
        def save(net, acc):
            with lock:
                if acc > best["acc"]:
                    best.update(acc=acc, state={k: v.clone() for k, v in net.state_dict().items()}, config=config)
        return save

    def write(trial, epoch, acc):
        with lock:
            log.write(json.dumps({"trial": trial, "epoch": epoch, "val_accuracy": acc, "at": time.time()}) + "\n")

    if a.tool == "optuna":
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)

        def objective(trial):
            config = {
                "hidden_layers": trial.suggest_int("hidden_layers", 1, 2),
                "hidden_units": trial.suggest_int("hidden_units", 32, 512, log=True),
                "dropout": trial.suggest_float("dropout", 0.0, 0.4),
                "optimizer": trial.suggest_categorical("optimizer", ["adam", "sgd"]),
                "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
                "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
            }
            last = {"acc": 0.0}

            def report(epoch, acc):
                write(trial.number, epoch, acc)
                last["acc"] = acc
                trial.report(acc, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
                return time.time() < deadline

            train_trial(config, data, report, a.seed * 100003 + trial.number, keeper(config))
            return last["acc"]

        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=a.seed),
            pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
        study.optimize(objective, n_jobs=a.concurrency, timeout=max(1.0, deadline - time.time()))
        version = optuna.__version__
        trials = len(study.trials)
        best_state, best_config = best["state"], best["config"]
    else:
        ray = ray_init(a.cpus)
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search import BasicVariantGenerator
        saved = tempfile.mkdtemp(prefix="gauntlet-compare-ray-best-")

        def objective(config, local):
            torch.set_num_threads(a.threads)
            ctx = tune.get_context()
            name = ctx.get_trial_id()
            path = os.path.join(saved, f"{name}.pt")

            def save(net, acc):
                torch.save({"acc": acc, "state": net.state_dict(), "config": config}, path)

            def report(epoch, acc):
                tune.report({"val_accuracy": acc})
                with open(a.log, "a") as f:  # a line is one write
                    f.write(json.dumps({"trial": name, "epoch": epoch, "val_accuracy": acc, "at": time.time()}) + "\n")
                return time.time() < deadline

            train_trial(config, local, report, a.seed * 100003 + zlib.crc32(name.encode()) % 100003, save)

        space = {
            "hidden_layers": tune.randint(1, 3),
            "hidden_units": tune.lograndint(32, 513),
            "dropout": tune.uniform(0.0, 0.4),
            "optimizer": tune.choice(["adam", "sgd"]),
            "lr": tune.loguniform(1e-4, 1e-1),
            "batch_size": tune.choice([64, 128, 256]),
        }
        # The data set goes through Ray's object store, as Ray's docs recommend.
        trainable = tune.with_resources(tune.with_parameters(objective, local=data[:4]),
                                        {"cpu": a.cpus / a.concurrency})
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                metric="val_accuracy", mode="max", num_samples=-1, max_concurrent_trials=a.concurrency,
                time_budget_s=max(1.0, deadline - time.time()),
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=15, grace_period=1,
                                        reduction_factor=3),
                search_alg=BasicVariantGenerator(random_state=a.seed)),
            run_config=ray_run_config("fashion", tempfile.mkdtemp(prefix="gauntlet-compare-ray-")))
        results = tuner.fit()
        version = ray.__version__
        trials = len(results)
        best_state, best_config = None, None
        for f in os.listdir(saved):
            d = torch.load(os.path.join(saved, f))
            if d["acc"] > best["acc"]:
                best.update(acc=d["acc"])
                best_state, best_config = d["state"], d["config"]
    test = None
    if best_state is not None:
        net = mlp(best_config["hidden_layers"], best_config["hidden_units"], best_config["dropout"])
        net.load_state_dict(best_state)
        test = accuracy(net, data[4], data[5])
    done({"tool": a.tool, "version": version, "trials": trials, "best_val": best["acc"], "test_accuracy": test,
          "best_config": best_config})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["noop", "short", "fashion"])
    p.add_argument("--tool", choices=["optuna", "ray"], required=True)
    p.add_argument("--trials", type=int, default=10000)
    p.add_argument("--reports", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="Optuna's n_jobs (noop)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--epoch-s", type=float, default=0.1)
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=600)
    p.add_argument("--launched", type=float, default=time.time(), help="the caller's launch time (Unix s)")
    p.add_argument("--log", default=os.devnull)
    a = p.parse_args()
    {"noop": noop, "short": short, "fashion": fashion}[a.workload](a)
    sys.stdout.flush()
    if "ray" in sys.modules:
        # Ray's local cluster (raylet, GCS, workers) must not outlive this
        # process and share the CPU with the next measurement.
        sys.modules["ray"].shutdown()
    os._exit(0)  # libtorch's teardown is not part of any figure


if __name__ == "__main__":
    main()
