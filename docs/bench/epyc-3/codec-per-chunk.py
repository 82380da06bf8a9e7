# python docs/bench/epyc-3/codec-per-chunk.py: CPU us per 256-row chunk of the scorer codec (timeit)
import timeit, numpy as np
from schemas.messages import FeatureChunk, ScoreChunk, encode, decode
rows=256
dense=np.random.rand(rows,13).astype(np.float32); sparse=np.random.randint(0,1<<40,(rows,26)).astype(np.int64)
c=FeatureChunk(request_id="r1", chunk=0, n_chunks=1, n_candidates=rows, top_k=10, reply_to=None, deadline_ms=None, ad_id=np.arange(rows,dtype=np.int64), bid=np.ones(rows,np.float32), dense=dense, sparse=sparse)
b=encode(c); print(len(b))
n=20000
t=timeit.timeit(lambda: decode(b, FeatureChunk, max_bytes=1<<26), number=n)/n*1e6; print("decode", t)
d=decode(b, FeatureChunk)
sc=np.zeros(rows,np.float32)
def out():
    return encode(ScoreChunk(request_id=d.request_id, chunk=d.chunk, n_chunks=d.n_chunks, n_candidates=d.n_candidates, top_k=d.top_k, reply_to=d.reply_to, deadline_ms=d.deadline_ms, status="ok", ad_id=d.ad_id, bid=d.bid, score=sc, model="ctr", model_version=1))
t=timeit.timeit(out, number=n)/n*1e6; print("encode score", t)
from schemas.messages import first_nonfinite_row
t=timeit.timeit(lambda: first_nonfinite_row(d.dense), number=n)/n*1e6; print("finite", t)
