"""The core figures: 5,000 connect/SELECT 1/close cycles at 1 and 8 threads over TCP (no
shim, shim, one connection kept per thread) and MySQLdb in a 16-thread pool, with and
without the shim; 3 interleaved repetitions, physical connections from the server.

Usage (server from PS_TEST_*, e.g. `source DIR/env` after scripts/server start DIR):
    /usr/bin/python3 bench/core_figures.py"""
import os, subprocess, statistics, MySQLdb
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B=os.environ.get("PS_BUILD", os.path.join(ROOT, "build")); LIB=B+"/libpoolshim.so"; CY=B+"/bench/cycle"
a=MySQLdb.connect(host=os.environ["PS_TEST_HOST"],port=int(os.environ["PS_TEST_PORT"]),user=os.environ["PS_TEST_ROOT_USER"],passwd=os.environ["PS_TEST_ROOT_PASSWORD"])
def conns():
    c=a.cursor(); c.execute("SHOW GLOBAL STATUS LIKE 'Connections'"); return int(c.fetchone()[1])
V=[]
for t in (1,8):
    base=[CY,"--threads",str(t),"--cycles","5000"]
    V+= [(f"C {t} thr","no shim",base,{}),(f"C {t} thr","shim",base,{"LD_PRELOAD":LIB}),(f"C {t} thr","kept",base+["--kept"],{})]
py=["/usr/bin/python3",os.path.join(ROOT,"bench","mysqldb_pool.py"),"5000","16"]
V+= [("MySQLdb 16 thr","no shim",py,{}),("MySQLdb 16 thr","shim",py,{"LD_PRELOAD":LIB})]
R={i:[] for i in range(len(V))}
for rep in range(3):
    for i,(g,n,cmd,env) in enumerate(V):
        e=dict(os.environ); e.update(env); b=conns()
        out=subprocess.run(cmd,env=e,capture_output=True,text=True).stdout
        f=dict(kv.split("=") for kv in out.split() if "=" in kv); R[i].append((float(f["seconds"]),conns()-b,int(f["errors"])))
print("| workload | variant | wall time (s), median of 3 | physical connections (server) | errors |\n|---|---|---:|---:|---:|")
for i,(g,n,cmd,env) in enumerate(V):
    print(f"| {g}, 5000 cycles | {n} | {statistics.median(r[0] for r in R[i]):.3f} | {max(r[1] for r in R[i])} | {sum(r[2] for r in R[i])} |")
