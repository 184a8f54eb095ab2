"""Run a command and report the peak memory of its whole process tree: one JSON line on stderr.

``/usr/bin/time`` reports the largest single process; a command with worker processes
(``leadscore train``, ``leadscore score``) uses the sum. Usage::

    .venv/bin/python benchmarks/peak_rss.py leadscore train --data DIR --workdir WORK

The RSS of the command and of all its descendants is sampled every 0.25 s (a peak shorter
than that can be missed: compare with ``/usr/bin/time``'s figure for the largest process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    child = subprocess.Popen(argv)
    proc = psutil.Process(child.pid)
    peak_tree = peak_main = 0
    while child.poll() is None:
        try:
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            break
        rss = []
        for p in procs:
            try:
                rss.append(p.memory_info().rss)
            except psutil.Error:
                rss.append(0)
        peak_tree, peak_main = max(peak_tree, sum(rss)), max(peak_main, rss[0])
        time.sleep(0.25)
    child.wait()
    print(json.dumps({
        "command": " ".join(argv[:2]), "rc": child.returncode,
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_tree_rss_gb": round(peak_tree / 2**30, 2), "peak_main_rss_gb": round(peak_main / 2**30, 2),
        "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }), file=sys.stderr)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
