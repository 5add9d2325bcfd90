"""Stand-in for the Clawdie agent on the rig: keeps a pid file and writes messages.

Usage: python fake_agent.py ROOT [INTERVAL]. Exits cleanly on SIGTERM, removing its pid file.
"""
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

root = Path(sys.argv[1])
interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.2
pidfile = root / "store" / "clawdie.pid"
running = True


def stop(*_):
    global running
    running = False


signal.signal(signal.SIGTERM, stop)
pidfile.write_text(str(os.getpid()))
con = sqlite3.connect(root / "store" / "messages.db", timeout=30)
con.execute("PRAGMA journal_mode=WAL")
n = 0
try:
    while running:
        n += 1
        con.execute("INSERT OR REPLACE INTO router_state VALUES ('agent_tick', ?)", (str(n),))
        con.commit()
        time.sleep(interval)
finally:
    con.close()
    pidfile.unlink(missing_ok=True)
