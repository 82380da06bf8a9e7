#!/bin/bash
# fused worker CPU per request at a fixed rate, old (1805f8d) and new (HEAD) alternating
RATE=${RATE:-500}; DUR=${DUR:-20}; ROUNDS=${ROUNDS:-3}
cd /tmp/w
export ADSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:19092
for round in $(seq $ROUNDS); do
  for v in old new; do
    if [ $v = old ]; then P=/tmp/old; else P=/work/main; fi
    PYTHONPATH=$P /work/main/.venv/bin/python -m pipeline.cli worker fused --set scorer.model_repo=/tmp/w/models --log-level warning > /tmp/bench/worker-$v-$round.log 2>&1 &
    W=$!
    sleep 6
    PYTHONPATH=$P /work/main/.venv/bin/python -m pipeline.cli loadtest replay /tmp/req100.jsonl --rate 60 --duration 3 --progress off > /dev/null 2>&1
    a=$(awk '{print $14+$15}' /proc/$W/stat)
    PYTHONPATH=$P /work/main/.venv/bin/python -m pipeline.cli loadtest replay /tmp/req100.jsonl --rate $RATE --arrival poisson --duration $DUR --warmup 2 --progress off --out /tmp/bench/run-$v-$round.json > /tmp/bench/replay-$v-$round.txt 2>&1
    b=$(awk '{print $14+$15}' /proc/$W/stat)
    kill -INT $W; wait $W
    n=$(python3 -c "import json;d=json.load(open('/tmp/bench/run-$v-$round.json'));print(d.get('sent') or d.get('requests') or d['counts'])" 2>/dev/null)
    echo "$v $round ticks=$((b-a)) $(grep -E 'latency' /tmp/bench/replay-$v-$round.txt | head -1)" >> /tmp/bench/cpu.log
  done
done
