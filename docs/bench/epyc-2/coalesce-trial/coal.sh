#!/bin/bash
RATE=${RATE:-800}; DUR=${DUR:-20}; ROUNDS=${ROUNDS:-2}
cd /tmp/w
export ADSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:19092
for round in $(seq $ROUNDS); do
  for v in off on; do
    if [ $v = off ]; then PP=/work/main:/tmp/nocoal; else PP=/work/main; fi
    PYTHONPATH=$PP /work/main/.venv/bin/python -m pipeline.cli worker fused --set scorer.model_repo=/tmp/w/models --log-level warning > /tmp/bench/coal-worker-$v-$round.log 2>&1 &
    W=$!
    sleep 6
    /work/main/.venv/bin/python -m pipeline.cli loadtest replay /tmp/req100.jsonl --rate 60 --duration 3 --progress off > /dev/null 2>&1
    a=$(awk '{print $14+$15}' /proc/$W/stat)
    /work/main/.venv/bin/python -m pipeline.cli loadtest replay /tmp/req100.jsonl --rate $RATE --arrival poisson --duration $DUR --warmup 2 --progress off --out /tmp/bench/coal-$v-$round.json > /tmp/bench/coal-$v-$round.txt 2>&1
    b=$(awk '{print $14+$15}' /proc/$W/stat)
    kill -INT $W; wait $W
    echo "coalesce=$v $round rate=$RATE worker_cpu_s=$(( (b-a) ))e-2 $(grep -E 'latency' /tmp/bench/coal-$v-$round.txt | head -1)" >> /tmp/bench/coal.log
  done
done
