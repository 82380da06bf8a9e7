import asyncio, os, sys, time, resource
R=int(sys.argv[2]); B=int(sys.argv[3]) if len(sys.argv)>3 else 1; D=8; N=R*D; SIZE=18000; BS="127.0.0.1:19092"
payload=os.urandom(SIZE)
def cpu(): r=resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime+r.ru_stime
async def pace(i,t0):
    d=t0+i/R-time.monotonic()
    if d>0: await asyncio.sleep(d)
async def aio(topic):
    from aiokafka import AIOKafkaProducer
    p=AIOKafkaProducer(bootstrap_servers=BS, acks="all", enable_idempotence=True, linger_ms=0, max_batch_size=1<<20)
    await p.start(); await p.send_and_wait(topic,b"x")
    c0=cpu(); t0=time.monotonic(); futs=[]
    for i in range(N):
        if i%B==0: await pace(i,t0)
        futs.append(await p.send(topic, payload, key=b"k%d"%(i%64), headers=[("h",b"v")]))
    await asyncio.gather(*futs)
    print("aiokafka paced produce us/rec", (cpu()-c0)/N*1e6)
    await p.stop()
async def ck(topic):
    import confluent_kafka as ck
    p=ck.Producer({"bootstrap.servers":BS,"acks":"all","enable.idempotence":True,"linger.ms":float(sys.argv[3])})
    p.produce(topic,b"x"); p.flush()
    c0=cpu(); t0=time.monotonic(); done=[0]
    def cb(err,msg): done[0]+=1
    for i in range(N):
        await pace(i,t0)
        p.produce(topic, payload, key=b"k%d"%(i%64), headers=[("h",b"v")], on_delivery=cb)
        p.poll(0)
    p.flush()
    print("confluent paced produce us/rec", (cpu()-c0)/N*1e6, done[0])
t=sys.argv[1]+str(int(time.time()))
from confluent_kafka.admin import AdminClient, NewTopic
a=AdminClient({"bootstrap.servers":BS}); [f.result() for f in a.create_topics([NewTopic(t,4,1)]).values()]; time.sleep(1)
import uvloop
uvloop.run(aio(t) if sys.argv[1]=="aio" else ck(t))
