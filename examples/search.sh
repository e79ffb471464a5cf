#!/usr/bin/env bash
# Search beyond grids on an embedded local queue: seeded random samples with repeats, then an
# Optuna study whose only storage is the queue. Needs `pip install 'gitqueue[tune]'`.
# Runs in a fresh temporary folder and leaves your own folders alone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
demo=$(mktemp -d "${TMPDIR:-/tmp}/gitqueue-search.XXXXXX")
export GITQUEUE_CACHE="$demo/cache"
cd "$demo"
echo "== working in $demo"
gitqueue init

echo "== random search: 2 depths x 4 samples x 2 repeats, in one commit"
gitqueue submit --grid depth=1,2 --sample lr=loguniform:1e-3:0.3 --sample bs=choice:16,64 \
  --samples 4 --seed 0 --repeat 2 --tag random
gitqueue work --worker demo/0 -- python "$here/experiment.py" --lr {lr} --bs {bs} --depth {depth} --seed {seed}
gitqueue results --where '"random" in tags'

echo "== Optuna: the tuner keeps 2 trials in the queue, two workers run them"
for w in 0 1; do
  gitqueue work --worker "demo/$w" --idle-timeout 10 -- \
    python "$here/experiment.py" --lr {lr} --bs {bs} --depth {depth} --seed {seed} > "worker$w.log" 2>&1 &
done
gitqueue tune "$here/search.yaml" --poll 1
wait
gitqueue tune "$here/search.yaml" --best
