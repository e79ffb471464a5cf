#!/usr/bin/env bash
# gitqueue in one minute: an embedded local queue, a 3 x 2 sweep, two workers, the results.
# Runs in a fresh temporary folder and leaves your own folders alone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
demo=$(mktemp -d "${TMPDIR:-/tmp}/gitqueue-quickstart.XXXXXX")
export GITQUEUE_CACHE="$demo/cache"
cd "$demo"
echo "== working in $demo"

gitqueue init                                   # an embedded bare repository: .gitqueue.git
gitqueue submit --grid lr=0.3,0.1,0.01 --grid bs=16,64 --tag quickstart
gitqueue status

echo "== draining with two workers"
for w in 0 1; do
  CUDA_VISIBLE_DEVICES=$w gitqueue work --worker "demo/$w" -- \
    python "$here/experiment.py" --lr {lr} --bs {bs} &
done
wait

gitqueue status
gitqueue results
echo "== the queue's history, one commit per state change:"
git --git-dir=.gitqueue.git log --format='  %h %s' | head -n 12
