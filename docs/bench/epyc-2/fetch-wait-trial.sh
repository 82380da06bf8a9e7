#!/bin/bash
# fused worker (HEAD) CPU per request at a fixed rate under different worker configs
RATE=${RATE:-500}; DUR=${DUR:-20}; ROUNDS=${ROUNDS:-2}; CONFIGS=${CONFIGS:-"none fetch"}
cd /tmp/w
export ADSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:19092
P=/work/main
for round in $(seq $ROUNDS); do
  for v in $CONFIGS; do
    PYTHONPATH=$P /work/main/.venv/bin/python -m pipeline.cli worker fused --config /tmp/w/$v.toml --set scorer.model_repo=/tmp/w/models --log-level warning > /tmp/bench/worker-$v-$round.log 2>&1 &
    W=$!
    sleep 6
    PYTHONPATH=$P /work/main/.venv/bin/python -m pipeline.cli loadtest replay /tmp/req100.jsonl --rate 60 --duration 3 --progress off > /dev/null 2>&1
    a=$(awk '{print $14+$15}' /proc/$W/stat)
    PYTHONPATH=$P /work/main/.venv/bin/python -m pipeline.cli loadtest replay /tmp/req100.jsonl --rate $RATE --arrival poisson --duration $DUR --warmup 2 --progress off --out /tmp/bench/cfg-$v-$round.json > /tmp/bench/cfg-$v-$round.txt 2>&1
    b=$(awk '{print $14+$15}' /proc/$W/stat)
    kill -INT $W; wait $W
    echo "$v $round rate=$RATE worker_cpu_s=$(( (b-a) ))e-2 $(grep -E 'latency' /tmp/bench/cfg-$v-$round.txt | head -1)" >> /tmp/bench/cfg.log
  done
done
