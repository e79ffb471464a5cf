"""``python -m bench``: run the benchmark set, write bench/results/latest.md and print it.

The quick set (default) takes a few minutes on a 2-core machine; ``--full`` adds the drains
over git daemon and smart HTTP, the 100,000-task queue, the same drain out of 1,000 and
100,000 tasks (h; alone: ``--parts h``, about a minute) and the Labtasker comparison; (i), a
fleet's launch, is in both.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import cycle, drain, fleet, scale, startup
from bench.env import TRANSPORTS, compile_gitqueue, machine, sandbox, transport
from bench.report import Report, Section, median, ms

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = "abcdefghi"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="gitqueue benchmarks, each beside raw git measured in the same run (see bench/README.md).",
    )
    p.add_argument("--full", action="store_true", help="everything: all transports, 100,000 tasks, Labtasker")
    p.add_argument("--parts", default=None, help=f"which parts, e.g. 'ab' or 'c,d' (of {PARTS}; b implies a)")
    p.add_argument("--transports", default=None, help="for (a)-(c): path,daemon,http")
    p.add_argument("--workers", default="1,4,16", help="worker counts for (c) [1,4,16]")
    p.add_argument("--tasks", type=int, default=500, help="tasks per drain in (c) [500]")
    p.add_argument("--sizes", default=None, help="queue sizes for (d) [1000,10000; --full adds 100000]")
    p.add_argument("--cycles", type=int, default=None, help="cycles per loop in (a)/(b) [20; --full 100]")
    p.add_argument("--grid", type=int, default=100, help="(e) submits a SIDE x SIDE grid [100]")
    p.add_argument(
        "--caches", default="shared,own", help="(c) with several workers: 'shared' (one machine) and/or 'own' [both]"
    )
    p.add_argument("--delay", type=float, default=0.040, help="(g), (h) one-way latency of the forge, seconds [0.040]")
    p.add_argument("--scenarios", default=None, help=f"(g) which, of {','.join(fleet.SCENARIOS)} [16x1; --full: all]")
    p.add_argument("--scale-sizes", default="1000,100000", help="(h) queue sizes drained from [1000,100000]")
    p.add_argument("--scale-drain", type=int, default=500, help="(h) tasks drained out of each queue [500]")
    p.add_argument("--scale-workers", type=int, default=4, help="(h) `gitqueue work` processes, one cache [4]")
    p.add_argument("--labtasker-venv", type=Path, help="(f) reuse or create Labtasker's venv here")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.md", help="Markdown output [bench/results/latest.md]")
    p.add_argument("--no-profile", action="store_true", help="skip cProfile of the one-worker cycle")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (repositories, logs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    parts = set((opts.parts or (PARTS if opts.full else "abcdegi")).replace(",", ""))
    if "b" in parts:
        parts.add("a")
    transports = (opts.transports or ",".join(TRANSPORTS)).split(",")
    drain_transports = (opts.transports or (",".join(TRANSPORTS) if opts.full else "path")).split(",")
    sizes = [int(s) for s in (opts.sizes or ("1000,10000,100000" if opts.full else "1000,10000")).split(",")]
    cycles = opts.cycles or (100 if opts.full else 20)
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    report = Report(machine=machine(), command=command.strip())
    report.machine["load"] = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    profile = None if opts.no_profile else RESULTS / "profile-cycle.txt"
    if profile:
        profile.unlink(missing_ok=True)
    started = time.monotonic()
    compile_gitqueue()
    with sandbox(keep=opts.keep) as root:
        steps: list[tuple[str, Callable[[], None]]] = []
        if "a" in parts:
            steps.append(("(a)/(b) cycles", lambda: part_cycles(report, root, transports, cycles, profile)))
        if "c" in parts:
            workers = [int(w) for w in opts.workers.split(",")]
            steps.append(("(c) drains", lambda: part_drains(report, root, drain_transports, workers, opts)))
        if "d" in parts:
            steps.append(("(d) scale", lambda: part_scale(report, root, sizes, opts.full)))
        if "h" in parts:
            steps.append(("(h) drain by size", lambda: part_size_drains(report, root, opts)))
        if "e" in parts:
            steps.append(("(e) grid", lambda: part_grid(report, root, opts.grid)))
        if "g" in parts:
            steps.append(("(g) fleet", lambda: part_fleet(report, root, opts, labtasker="f" in parts)))
        if "i" in parts:
            steps.append(("(i) startup", lambda: part_startup(report, root, opts)))
        if "f" in parts:
            steps.append(("(f) labtasker", lambda: part_labtasker(report, root, opts)))
        for name, step in steps:
            t0 = time.monotonic()
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            try:
                step()
            except Exception as exc:  # one broken part must not hide the others' figures
                traceback.print_exc()
                report.failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"bench: {name} took {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
    report.machine["load"] += " → {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    report.machine["took"] = f"{time.monotonic() - started:.0f}s"
    text = report.markdown()
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(text)
    print(text)
    print(f"bench: wrote {opts.out}", file=sys.stderr)
    return 1 if report.failures else 0


# ---------------------------------------------------------------- (a) and (b)


def part_cycles(report: Report, root: Path, transports: list[str], cycles: int, profile: Path | None) -> None:
    raw = report.section(
        "(a) Raw-git ceiling: fetch, build a one-file-move commit with git plumbing, push (one client)",
        ["transport", "build", "cycles/s", "cycle", "fetch", "build", "push", "cycles"],
    )
    ours = report.section(
        "(b) gitqueue, one worker, Python API (per task; ratio to the raw ceiling of the same transport)",
        ["transport", "loop", "per task", "tasks/s", "x raw cycle", "x raw per commit", "pushes/task",
         "fetches/task", "fetch/task", "push/task", "rest/task"],
    )  # fmt: skip
    results = []
    for kind in transports:
        with transport(kind, root / "srv" / f"cycles-{kind}") as t:
            res = cycle.measure(
                t, root, tasks=max(200, 2 * cycles + 20), cycles=cycles, budget=60.0,
                profile=profile if kind == "path" else None,
            )  # fmt: skip
        results.append(res)
        for how, p in res.raw.items():
            c = median(p.cycle)
            raw.add(kind, how, 1 / c, ms(c), ms(median(p.fetch)), ms(median(p.build)), ms(median(p.push)), len(p.cycle))
        best_how, best = res.raw_best()
        for how, q in res.gitqueue.items():
            n = len(q.per_task)
            per = median(q.per_task)
            commits = 2 if how == "claim+done" else 1
            ours.add(
                kind, how, ms(per), 1 / per, per / best, per / (best * commits), q.pushes / n, q.fetches / n,
                ms(q.fetch / n), ms(q.push / n), ms(q.other() / n),
            )  # fmt: skip
        ratio = median(res.gitqueue["finish+claim"].per_task) / best
        report.target(
            f"one worker's cycle ≤ 1.25x raw plumbing cycle ({kind})",
            f"finish+claim {ms(median(res.gitqueue['finish+claim'].per_task))} vs raw ({best_how}) {ms(best)}: "
            f"{ratio:.2f}x; claim+done {median(res.gitqueue['claim+done'].per_task) / best:.2f}x (2 commits)",
            ratio <= 1.25,
        )
    raw.notes.append(
        "Medians. `index`: temporary index (read-tree, update-index, write-tree) + commit-tree; "
        "`mktree`: ls-tree/mktree of the changed trees + commit-tree. The ceiling is the faster of the two. "
        "Pure rename (same blob); fetch with protocol v0 like gitqueue."
    )
    ours.notes.append(
        "`claim+done`: q.claim() then run.done() (2 commits per task). `finish+claim`: q.finish(report, "
        "then_claim={}) (1 commit per task, what `gitqueue work` does). `x raw per commit` divides by "
        "commits per task. `rest` = per-task time minus git fetch and push: choosing, YAML, objects."
    )
    if cycle.phases_profile:
        where = report.section(
            "Where the time goes: one worker's cycle on a path remote (cProfile, cumulative per task)",
            ["loop", "function", "per task", "calls/task"],
        )
        for how, points in cycle.phases_profile.items():
            for label, seconds, calls in points:
                where.add(how, label, ms(seconds), calls)
        path_res = next((r for r in results if r.transport == "path"), None)
        if path_res:
            for how, p in path_res.raw.items():
                where.notes.append(
                    f"Raw git ({how}) on the same remote: fetch {ms(median(p.fetch))}, build {ms(median(p.build))}, "
                    f"push {ms(median(p.push))} per cycle."
                )
        where.notes.append("cProfile slows Python code; the full listing is in bench/results/profile-cycle.txt.")
    if "path" in transports and profile is not None:
        with transport("path", root / "srv" / "worker-loop") as t:
            per_task, points = cycle.worker_loop(t, root, tasks=cycles)
        loop = report.section(
            "Where the time goes: `gitqueue work -- true`'s loop in-process, path remote (cProfile per task)",
            ["function", "per task", "calls/task"],
        )
        for label, seconds, calls in points:
            loop.add(label, ms(seconds), calls)
        loop.notes.append(
            f"Unprofiled, the same loop takes {ms(per_task)} per task ({1 / per_task:.1f} tasks/s) in one process; "
            "compare the API's finish+claim above and the 1-worker drain in (c), which adds process start-up."
        )


# ---------------------------------------------------------------- (c)


def part_drains(
    report: Report, root: Path, transports: list[str], workers: list[int], opts: argparse.Namespace
) -> None:
    section = report.section(
        f"(c) Draining {opts.tasks} trivial tasks with `gitqueue work -- true` processes",
        ["transport", "workers", "caches", "tasks/s", "tasks/s (wall)", "vs 1 worker", "push attempts/task",
         "rejected/task", "landed commits/task", "backing off", "exactly once", "time"],
    )  # fmt: skip
    caches = [c.strip() for c in opts.caches.split(",") if c.strip()]
    budget = 300.0 if opts.full else 120.0
    for kind in transports:
        base: float | None = None
        with transport(kind, root / "srv" / f"drain-{kind}") as t:
            for n in workers:
                for shared in [False] if n == 1 else [c == "shared" for c in caches]:
                    r = drain.drain(t, root, workers=n, tasks=opts.tasks, budget=budget, shared_cache=shared)
                    _drain_row(report, section, kind, r, base)
                    base = r.tasks_per_s if n == 1 else base
    section.notes.append(
        "tasks/s: from the first worker ready (queue opened) to the last worker's exit; (wall) also counts "
        "process start-up. caches: `shared`, one cache for all the workers, as on one machine (the default "
        "there): they take turns, each building on the last push landed from it; `own`, one cache each, as on "
        "separate machines: their pushes race. Push attempts, rejections and backoff come from each worker's "
        "GITQUEUE_STATS_FILE (backing off: share of all the workers' time spent asleep after lost races); landed "
        "commits and the exactly-once check from the remote's branch (`git log`, `git ls-tree`): every task in "
        "done/ once, no id in two folders, one claim per task unless retried."
    )


def _drain_row(report: Report, section: Section, kind: str, r: drain.DrainResult, base: float | None) -> None:
    rel = r.tasks_per_s / base if base else float("nan")
    done = "" if r.finished else " (timed out)"
    section.add(
        kind, r.workers, r.caches if r.workers > 1 else "-", r.tasks_per_s, r.wall_tasks_per_s, rel,
        r.pushes / r.tasks, r.rejected / r.tasks, r.check.commits / r.tasks, f"{r.backoff_share:.0%}",
        r.check.summary(), f"{r.wall:.1f}s{done}",
    )  # fmt: skip
    if not r.check.ok:
        report.failures.append(f"(c) {kind} {r.workers} workers: exactly-once check {r.check.summary()}")
    if r.workers == 1:
        report.target(
            f"at most one push per task, one worker ({kind})",
            f"{r.pushes / r.tasks:.3f} push attempts/task, {r.check.commits / r.tasks:.3f} landed",
            r.pushes / r.tasks <= 1.0 + 2 / r.tasks,  # the last finish and the final empty claim
        )
    elif r.workers == 16 and base:
        where = "one machine: shared cache" if r.shared_cache else "own caches, as on 16 machines"
        report.target(
            f"16 workers ≥ 0.8x one worker's tasks/s ({kind}; {where})",
            f"{r.tasks_per_s:.1f} vs {base:.1f} tasks/s: {rel:.2f}x; {r.pushes / r.tasks:.3f} push attempts/task "
            f"({r.rejected / r.tasks:.3f} rejected), {r.check.commits / r.tasks:.3f} landed",
            rel >= 0.8,
        )


# ---------------------------------------------------------------- (d) and (e)


def part_scale(report: Report, root: Path, sizes: list[int], full: bool) -> None:
    results = []
    with transport("path", root / "srv" / "scale") as t:
        for n in sizes:
            budget = 600.0 if n >= 100_000 else 180.0
            print(f"bench:   {n:,} tasks", file=sys.stderr, flush=True)
            results.append(scale.measure(t, root, tasks=n, claims=20, budget=budget))
    section = report.section(
        "(d) Scale: one queue of N pending tasks on a local bare remote", ["figure", *(f"{r.tasks:,}" for r in results)]
    )

    def row(label: str, get: Callable[[scale.ScaleResult], object]) -> None:
        section.add(label, *(get(r) for r in results))

    def secs(v: float) -> str:
        return f"> {-v:.0f} s (timed out)" if v < 0 else f"{v:.2f} s"

    row("build the queue: one submit of N tasks (API)", lambda r: secs(r.build))
    row("raw-git cycle at this size (mktree)", lambda r: ms(r.raw_cycle))
    row("claim, warm worker (median)", lambda r: ms(r.claim))
    row("finish + next claim, one commit (median)", lambda r: ms(r.finish_claim))
    row("claim ÷ raw cycle", lambda r: r.claim / r.raw_cycle)
    row("git's connectivity walk in every push received (part of both)", lambda r: ms(r.connectivity))
    row("new worker (fresh cache): open + first fetch", lambda r: secs(r.first_fetch))
    row("new worker (fresh cache): open until its first claim landed", lambda r: secs(r.first_ready))
    row("packed bytes per state change (repack -ad)", lambda r: f"{r.packed_per_change:,.0f} B")
    row("loose bytes per state change on the server", lambda r: f"{r.loose_per_change:,.0f} B")
    row("largest folder (entries)", lambda r: f"{r.largest_folder[1]:,} ({r.largest_folder[0]})")
    for name in results[0].cli if results else []:
        row(f"`gitqueue {name}`", lambda r, name=name: secs(r.cli.get(name, float("nan"))))
    row(
        "`gitqueue work` peak RSS (own / with git children)",
        lambda r: f"{r.worker_rss_mb:.0f} / {r.worker_tree_rss_mb:.0f} MB",
    )
    section.notes.append(
        "State changes for the growth figures: the claims measured here (claim, finish+claim, finish), "
        "counted on the remote. CLI times include Python start-up; `status`/`ls`/`results` after one run "
        "warmed the CLI's cache. RSS: VmHWM of the worker process (10 tasks, fresh cache)."
    )
    if not results:
        return
    small, big = results[0], results[-1]
    at = f"at {big.tasks:,}"
    final = big.tasks >= 100_000
    note = "" if final else " (not measured: 100,000 is in --full)"

    def judge(ok: bool) -> bool | None:
        return ok if final else None

    ratio = big.claim / small.claim
    report.target(
        f"claim at 100,000 ≤ 1.5x claim at 1,000{note}",
        f"{ms(big.claim)} {at} vs {ms(small.claim)} at {small.tasks:,}: {ratio:.2f}x (raw git's cycle: "
        f"{big.raw_cycle / small.raw_cycle:.2f}x; git's connectivity walk in the push alone adds "
        f"{ms(big.connectivity - small.connectivity)})",
        judge(ratio <= 1.5),
    )
    report.target(
        f"≤ 2 KB packed per state change{note}",
        f"{big.packed_per_change:,.0f} B {at}",
        judge(big.packed_per_change <= 2048),
    )
    report.target(
        f"no folder over 1,000 entries{note}", f"{big.largest_folder[1]:,} {at}", judge(big.largest_folder[1] <= 1000)
    )
    report.target(
        f"new worker ready < 10 s{note}",
        f"{big.first_ready:.2f} s {at} to its first claim (first fetch {big.first_fetch:.2f} s)",
        judge(0 <= big.first_ready < 10),
    )
    status = big.cli.get("status", float("nan"))
    cold = big.cli.get("status (fresh cache)", float("nan"))
    report.target(f"`status` < 2 s{note}", f"{status:.2f} s {at} (fresh cache {cold:.2f} s)", judge(0 <= status < 2))
    report.target(f"worker memory < 150 MB{note}", f"{big.worker_rss_mb:.0f} MB {at}",
                  judge(big.worker_rss_mb < 150))  # fmt: skip


def part_size_drains(report: Report, root: Path, opts: argparse.Namespace) -> None:
    sizes = [int(s) for s in opts.scale_sizes.split(",")]
    results = []
    with transport("daemon", root / "srv" / "size-drains") as t:
        for n in sizes:
            print(f"bench:   drain {opts.scale_drain} of {n:,} tasks", file=sys.stderr, flush=True)
            r = scale.drain_at_size(
                t, root, tasks=n, drained=opts.scale_drain, workers=opts.scale_workers, budget=300.0
            )
            results.append(r)
            if not r.check.ok:
                report.failures.append(f"(h) {n:,} tasks: exactly-once check {r.check.summary()}")
    section = report.section(
        f"(h) The same drain out of queues of different sizes: {opts.scale_drain} tasks, {opts.scale_workers} "
        "`gitqueue work -- true` processes sharing one cache, `git daemon` on 127.0.0.1",
        ["pending tasks", "seed (fast-import)", "warm-up `status`", "tasks/s", "vs smallest", "push attempts/task",
         "rejected/task", "exactly once", "time"],
    )  # fmt: skip
    base = results[0].tasks_per_s if results else float("nan")
    for r in results:
        done = "" if r.finished else " (timed out)"
        section.add(
            f"{r.tasks:,}", f"{r.seed:.1f}s", f"{r.warm:.1f}s", r.tasks_per_s, r.tasks_per_s / base,
            r.pushes / r.drained, r.rejected / r.drained, r.check.summary(), f"{r.steady:.1f}s{done}",
        )  # fmt: skip
    section.notes.append(
        "Each queue is seeded in one commit by `git fast-import` (the files one submit writes), then one "
        "`gitqueue status` fills the machine's cache (a machine already working on the queue; a new worker's first "
        "look is in (d)); then the workers, sharing that cache, each run `--max-tasks` their part of the drain. "
        "tasks/s: from the first worker ready to the last one's exit (as (c)). Exactly once: the remote's tree and "
        "history (the drained tasks done once each, every other task still pending)."
    )
    if len(results) >= 2:
        small, big = results[0], results[-1]
        ratio = big.tasks_per_s / small.tasks_per_s
        report.target(
            f"a drain's tasks/s at {big.tasks:,} tasks ≥ 0.67x the same drain at {small.tasks:,} (issue 12)",
            f"{big.tasks_per_s:.1f} vs {small.tasks_per_s:.1f} tasks/s: {ratio:.2f}x",
            ratio >= 0.67 if big.tasks >= 100_000 else None,
        )


def part_grid(report: Report, root: Path, side: int) -> None:
    with transport("path", root / "srv" / "grid") as t:
        g = scale.grid(t, root, side=side, budget=300.0)
    section = report.section(
        f"(e) Submitting a {g.tasks:,}-task grid with the CLI (local bare remote)",
        ["what", "seconds", "tasks/s", "commits"],
    )
    section.add(f"`gitqueue submit --grid a=… --grid b=…` ({side}x{side})", g.cli, g.tasks / g.cli, g.commits)
    section.add("raw git: fast-import of the same files + push", g.raw, g.tasks / g.raw, 1)
    section.notes.append(f"gitqueue ÷ raw git: {g.cli / g.raw:.1f}x. The CLI time includes Python start-up.")


# ---------------------------------------------------------------- (g)


def part_fleet(report: Report, root: Path, opts: argparse.Namespace, *, labtasker: bool) -> None:
    rtt = f"{2 * opts.delay * 1000:.0f} ms"
    section = report.section(
        f"(g) A fleet: machines with a cache each, `git daemon` behind a proxy adding {rtt} per round trip",
        fleet.COLUMNS,
    )
    names = opts.scenarios.split(",") if opts.scenarios else (fleet.FULL if opts.full else fleet.QUICK)
    mode = fleet.slots_mode()
    budget = 400.0 if opts.full or opts.scenarios else 120.0  # the quick set's drain is bounded as (c)'s is
    for name in names:
        s = fleet.SCENARIOS[name]
        print(f"bench:   {name}: {s.describe}", file=sys.stderr, flush=True)
        r = fleet.run(root, s, delay=opts.delay, budget=budget, mode=mode)
        section.add(*fleet.row(r))
        if not r.ok:
            report.failures.append(f"(g) {name}: exactly-once check {r.check.summary()}, {r.ran_twice} ran twice")
        _fleet_targets(report, r)
        if labtasker:
            from bench import labtasker_compare as lc

            venv = opts.labtasker_venv or root / "labtasker-venv"
            lab = lc.fleet_row(venv, root, s, delay=opts.delay, budget=budget)
            section.add(*lc.fleet_cells(lab, r))
    section.notes.append(
        "efficiency = (tasks x seconds / (machines x slots)) / drain, the drain from launching the first worker "
        "to the last one's exit (1.0: the queue costs nothing). Each machine has a cache of its own; `slots by`: "
        "`--slots` (one `gitqueue work --slots S` per machine) or `processes` (S `gitqueue work` processes "
        "sharing the machine's cache, where the CLI has no --slots). Pushes per minute are landed pushes counted "
        "on the server by a reference-transaction hook (one push = one receive-pack), per drain minute; attempts "
        "and rejections come from the workers' stats. Tasks per machine count starts (retries included). "
        "Exactly once: the remote's tree and history, and every task's command started once (its start file). "
        "`shared16` is over `git daemon` without the proxy; its tasks only append to the start file."
    )


def _fleet_targets(report: Report, r: fleet.FleetResult) -> None:
    """Issue 12's targets for the scenarios that have one."""
    name = r.scenario.name
    if name == "16x1":
        report.target("16 x 1, 256 tasks of 1 s: efficiency ≥ 0.85 (issue 12)", f"{r.efficiency:.2f}",
                      r.efficiency >= 0.85)  # fmt: skip
        report.target("16 machines all running within 2 s of launch (issue 12)", f"{r.first_run_all:.1f} s",
                      r.first_run_all <= 2.0)  # fmt: skip
    elif name == "4x4":
        report.target("4 x 4 slots, 256 tasks of 1 s: efficiency ≥ 0.85 (issue 12)", f"{r.efficiency:.2f}",
                      r.efficiency >= 0.85)  # fmt: skip
    elif name == "16x1-5s":
        report.target(
            "16 x 1, 64 tasks of 5 s: efficiency ≥ 0.85, every machine within one task of fair (issue 12)",
            f"{r.efficiency:.2f}, tasks per machine {r.spread}",
            r.efficiency >= 0.85 and r.max_deviation <= 1,
        )
    elif name == "shared16" and r.base_tasks_per_s:
        ratio = r.tasks_per_s / r.base_tasks_per_s
        report.target("16 workers sharing a cache ≥ 0.8x one worker's tasks/s (issue 12)", fleet.headline(r),
                      ratio >= 0.8)  # fmt: skip
    elif name == "budget":
        per_min = r.per_min(r.pushes.total)
        report.target("push_budget 12/min: the fleet's pushes of every kind stay within it (issue 12)",
                      f"{per_min:.1f} pushes/min", per_min <= 12.0)  # fmt: skip


# ---------------------------------------------------------------- (f)


def part_startup(report: Report, root: Path, opts: argparse.Namespace) -> None:
    r = startup.measure(root, workers=16, delay=opts.delay)
    startup.add_sections(report, r)
    last = max(r.first_task)
    report.target(
        "16 launched at once: every one runs its first task within 2 s of the launch (issue 12)",
        f"{last:.2f} s for the last (the machine's floor: {startup.floor_seconds(r):.2f} s)",
        last <= 2.0,
    )


def part_labtasker(report: Report, root: Path, opts: argparse.Namespace) -> None:
    from bench import labtasker_compare as lc

    bin_dir = lc.ensure_venv(opts.labtasker_venv or root / "labtasker-venv")
    lab = lc.drain_labtasker(bin_dir, root / "labtasker", tasks=opts.tasks, workers=4, budget=300.0)
    with transport("path", root / "srv" / "labtasker-gq") as t:
        ours = drain.drain(t, root, workers=4, tasks=opts.tasks, budget=300.0, shared_cache=True)
    section = report.section(
        f"(f) Labtasker {lc.VERSION} beside gitqueue: {opts.tasks} trivial tasks, 4 workers, same run",
        ["system", "tasks/s (wall)", "time", "done", "exactly once"],
    )
    section.add(
        f"Labtasker {lc.VERSION} (SQLite server, Unix socket; `labtasker loop -- true`)",
        lab.tasks_per_s,
        f"{lab.wall:.1f}s",
        lab.succeeded,
        "ok" if lab.exactly_once else f"attempts {lab.attempts}",
    )
    section.add("gitqueue (local bare remote; `gitqueue work -- true`)", ours.wall_tasks_per_s, f"{ours.wall:.1f}s",
                ours.check.done, ours.check.summary())  # fmt: skip
    section.notes.append(
        "Both timed from launching the 4 workers to the last one's exit (start-up included). The gitqueue "
        "workers share one cache, as 4 workers on one machine do by default."
    )
    ratio = ours.wall_tasks_per_s / lab.tasks_per_s
    measured = f"{ours.wall_tasks_per_s:.1f} vs {lab.tasks_per_s:.1f} tasks/s: {ratio:.2f}x"
    report.target("4 workers on a local bare remote ≥ Labtasker 2.8", measured, ratio >= 1.0)


if __name__ == "__main__":
    raise SystemExit(main())
