#!/bin/bash
# on the submitted code (HEAD): adstream bench --fused, adstream bench (three hops), adstream run at 150/s
cd /work/main
ARGS="--bootstrap 127.0.0.1:19092 --step-s 5 --warmup 1 --steady-s 8 --overload-s 0 --limit-s 0.5 --max-steps 8 --progress off"
.venv/bin/adstream bench --fused $ARGS --out /tmp/bench/final-fused.json > /tmp/bench/final-fused.txt 2>&1
.venv/bin/adstream bench $ARGS --out /tmp/bench/final-three.json > /tmp/bench/final-three.txt 2>&1
cd /tmp/w && sed -i 's/for flag in "" "--three-hops"; do/for flag in ""; do/' /tmp/bench/run150.sh && /tmp/bench/run150.sh > /tmp/bench/final-run150.txt 2>&1
echo done > /tmp/bench/final.done
