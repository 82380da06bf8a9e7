#!/bin/bash
# adstream run (fused, the default), then three replays at 150/s; then the same for --three-hops
cd /tmp/w
export ADSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:19092
A=/work/main/.venv/bin/adstream
echo "# adstream run [--three-hops] (models in ./models, topics created), then three times: adstream loadtest replay req100.jsonl --rate 150 --arrival poisson --duration 20 --warmup 3 (100 candidates); Ctrl-C to adstream run after"
for flag in "" "--three-hops"; do
  $A run $flag --log-level warning > /tmp/bench/run150-worker.log 2>&1 &
  W=$!
  sleep 8
  for i in 1 2 3; do
    echo "== adstream run $flag, replay $i"
    $A loadtest replay /tmp/req100.jsonl --rate 150 --arrival poisson --duration 20 --warmup 3 --progress off 2>&1 | grep -E "latency|outcomes"
  done
  kill -INT $W; wait $W; echo "(adstream run exited $?)"
done
