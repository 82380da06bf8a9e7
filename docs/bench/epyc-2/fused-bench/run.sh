#!/bin/bash
# alternate new (HEAD) and old (1805f8d) fused benches in one session
cd /tmp/w
ARGS="--fused --bootstrap 127.0.0.1:19092 --step-s 5 --warmup 1 --steady-s 8 --overload-s 0 --limit-s 0.5 --max-steps 8 --progress off"
for round in 1 2; do
  for v in new old; do
    if [ $v = old ]; then P=/tmp/old; else P=/work/main; fi
    (cd $P && PYTHONPATH=$P /work/main/.venv/bin/python -m pipeline.cli bench $ARGS --out /tmp/bench/fused-$v-$round.json > /tmp/bench/fused-$v-$round.txt 2>&1)
    echo "$v $round rc=$?" >> /tmp/bench/log
  done
done
