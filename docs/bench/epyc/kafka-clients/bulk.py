import asyncio, os, sys, time, resource
N=int(sys.argv[2]); SIZE=int(os.environ.get("SIZE","2000")); BS="127.0.0.1:19092"
payload=os.urandom(SIZE)
def cpu(): r=resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime+r.ru_stime
async def aio(topic):
    from aiokafka import AIOKafkaProducer, AIOKafkaConsumer
    p=AIOKafkaProducer(bootstrap_servers=BS, acks="all", enable_idempotence=True, linger_ms=0, max_batch_size=1<<20)
    await p.start()
    c0=cpu(); t0=time.time()
    futs=[]
    for i in range(N):
        futs.append(await p.send(topic, payload, key=b"k%d"%(i%64), headers=[("h",b"v")]))
        if i%50==49: await asyncio.sleep(0)  # bursts of 50
    await asyncio.gather(*futs)
    print("aiokafka produce us/rec", (cpu()-c0)/N*1e6, "wall", time.time()-t0)
    await p.stop()
    c=AIOKafkaConsumer(topic, bootstrap_servers=BS, auto_offset_reset="earliest", group_id=None, enable_auto_commit=False)
    await c.start(); c0=cpu(); n=0
    while n<N:
        b=await c.getmany(timeout_ms=1000, max_records=10000)
        for tp,rs in b.items():
            for r in rs: n+=1; _=r.value, dict(r.headers)
    print("aiokafka consume us/rec", (cpu()-c0)/N*1e6)
    await c.stop()
def ck(topic):
    import confluent_kafka as ck
    p=ck.Producer({"bootstrap.servers":BS,"acks":"all","enable.idempotence":True,"linger.ms":0})
    c0=cpu(); t0=time.time(); done=[0]
    def cb(err,msg): done[0]+=1
    for i in range(N):
        p.produce(topic, payload, key=b"k%d"%(i%64), headers=[("h",b"v")], on_delivery=cb)
        if i%50==49: p.poll(0)
    p.flush()
    print("confluent produce us/rec", (cpu()-c0)/N*1e6, "wall", time.time()-t0, done[0])
    c=ck.Consumer({"bootstrap.servers":BS,"group.id":"mb"+topic,"auto.offset.reset":"earliest","enable.auto.commit":False})
    c.subscribe([topic]); c0=cpu(); n=0
    while n<N:
        for m in c.consume(10000, 1.0):
            if m.error(): continue
            n+=1; _=m.value(), dict(m.headers() or ())
    print("confluent consume us/rec", (cpu()-c0)/N*1e6)
    c.close()
t=sys.argv[1]+str(int(time.time()))
from confluent_kafka.admin import AdminClient, NewTopic
a=AdminClient({"bootstrap.servers":BS}); [f.result() for f in a.create_topics([NewTopic(t,4,1)]).values()]; time.sleep(1)
if sys.argv[1]=="aio": asyncio.run(aio(t))
else: ck(t)
