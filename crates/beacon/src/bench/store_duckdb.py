# The reference engine for `beacon bench store`: DuckDB over the same Parquet
# segment files. Reads {"glob", "runs", "questions"} as JSON on stdin; prints,
# per question, the milliseconds of each timed run (after one untimed run).
import json
import sys
import time

import duckdb

request = json.load(sys.stdin)
con = duckdb.connect()
con.execute("SET threads = 2")
# A view cannot take a parameter: the glob is quoted as an SQL string.
glob = request["glob"].replace("'", "''")
con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{glob}')")
timings = []
for sql in request["questions"]:
    con.execute(sql).fetchall()
    runs = []
    for _ in range(request["runs"]):
        started = time.perf_counter()
        con.execute(sql).fetchall()
        runs.append((time.perf_counter() - started) * 1000.0)
    timings.append(runs)
json.dump(timings, sys.stdout)
