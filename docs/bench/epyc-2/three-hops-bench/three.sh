#!/bin/bash
# three-hop benches: new (HEAD) then old (1805f8d), alternating, one session
cd /tmp/w
ARGS="--bootstrap 127.0.0.1:19092 --step-s 5 --warmup 1 --steady-s 8 --overload-s 0 --limit-s 0.5 --max-steps 8 --progress off"
for round in 1; do
  for v in new old; do
    if [ $v = old ]; then P=/tmp/old; else P=/work/main; fi
    (cd $P && PYTHONPATH=$P /work/main/.venv/bin/python -m pipeline.cli bench $ARGS --out /tmp/bench/three-$v-$round.json > /tmp/bench/three-$v-$round.txt 2>&1)
    echo "$v $round rc=$?" >> /tmp/bench/three.log
  done
done
