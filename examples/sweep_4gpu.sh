#!/usr/bin/env bash
# The motivating scenario: a 4 x 4 x 4 sweep on a machine with four (pretend) GPUs.
# One worker gives each (pretend) GPU the next experiment until none is left; meanwhile a person drops a
# pointless experiment, adds a promising one at the front of the line, and adds more.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
demo=$(mktemp -d "${TMPDIR:-/tmp}/gitqueue-sweep.XXXXXX")
export GITQUEUE_CACHE="$demo/cache"
cd "$demo"
echo "== working in $demo"

gitqueue init
gitqueue submit --grid lr=0.3,0.1,0.03,0.01 --grid bs=16,32,64,128 --grid depth=1,2,3,4 --tag sweep >/dev/null

gitqueue work --worker box --gpus 0,1,2,3 --log-dir logs -- \
  python "$here/experiment.py" --lr {lr} --bs {bs} --depth {depth} --pretend 0.3 \
  > worker.out 2>&1 &
pid=$!

# While the workers run, the plan changes without stopping anything.
gitqueue cancel "$(gitqueue ls --state pending --format ids | tail -n 1)"        # pointless: drop it
gitqueue submit lr=0.5 bs=64 depth=2 --priority 10 --tag promising            # a new one, runs next
gitqueue set "$(gitqueue ls --state pending --format ids | tail -n 2 | head -n 1)" priority=5  # move one up
gitqueue submit --grid lr=0.003 --grid bs=16,32 --grid depth=1,2 --tag sweep-more  # more of them
gitqueue status

wait "$pid"
echo "== done"
gitqueue status
echo "== per GPU:"
for gpu in 0 1 2 3; do echo "  gpu$gpu ran $(grep -c "on GPU $gpu\$" worker.out) tasks"; done
echo "== the promising task jumped the queue:"
git --git-dir=.gitqueue.git log --reverse --format='%B' | grep -oE '^submit [0-9]{6}-lr0.5[^ ]*|claim [0-9]{6}-[^ ]+' |
  awk '/^submit/ {at = n} /^claim/ {n++} /^claim .*lr0.5/ {print "  it was the " n - at ". claim after its submit, ahead of the sweep still waiting"}'
gitqueue results --format csv > results.csv && echo "== $(($(wc -l < results.csv) - 1)) rows in $demo/results.csv"
