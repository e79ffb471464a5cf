"""A tiny, real experiment: fit y = w.x by gradient descent on synthetic data (CPU, ~0.1 s).

It takes its hyper-parameters on the command line, as a real training script would, and
writes its metrics where gitqueue asks (GITQUEUE_RESULT_FILE), or prints them.

    python examples/experiment.py --lr 0.1 --bs 32 --depth 2 --seed 0
"""

import argparse
import json
import os
import random
import time


def train(lr: float, bs: int, depth: int, seed: int, steps: int = 200) -> dict:
    rng = random.Random(seed)
    dim = 4 * depth
    true_w = [rng.uniform(-1, 1) for _ in range(dim)]
    data = []
    for _ in range(512):
        x = [rng.gauss(0, 1) for _ in range(dim)]
        data.append((x, sum(a * b for a, b in zip(true_w, x, strict=True)) + rng.gauss(0, 0.1)))
    w = [0.0] * dim
    for _ in range(steps):
        batch = rng.sample(data, min(bs, len(data)))
        grad = [0.0] * dim
        for x, y in batch:
            err = sum(a * b for a, b in zip(w, x, strict=True)) - y
            for i in range(dim):
                grad[i] += 2 * err * x[i] / len(batch)
        w = [wi - lr * gi for wi, gi in zip(w, grad, strict=True)]
    loss = sum((sum(a * b for a, b in zip(w, x, strict=True)) - y) ** 2 for x, y in data) / len(data)
    return {"loss": round(loss, 6), "diverged": not loss < 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretend", type=float, default=0.0, help="extra seconds, as if training were longer")
    args = parser.parse_args()
    started = time.perf_counter()
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "cpu")
    print(f"[gpu {gpu}] training lr={args.lr} bs={args.bs} depth={args.depth} seed={args.seed}", flush=True)
    metrics = train(args.lr, args.bs, args.depth, args.seed)
    time.sleep(args.pretend)
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    metrics["gpu"] = gpu
    print(f"[gpu {gpu}] loss={metrics['loss']}", flush=True)
    target = os.environ.get("GITQUEUE_RESULT_FILE")
    if target:
        with open(target, "w") as out:
            json.dump(metrics, out)
    else:
        print(json.dumps(metrics))


if __name__ == "__main__":
    main()
