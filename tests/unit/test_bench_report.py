"""bench.common.Report: the JSON is on disk after every row, so a bench cut short keeps what it finished."""

import argparse
import json

from bench import common as B


def _args(out) -> argparse.Namespace:
    return argparse.Namespace(smoke=True, quick=False, out=str(out))


def test_each_row_is_on_disk_before_the_next_starts(tmp_path):
    rep = B.Report("unit", _args(tmp_path), {"k": 1})
    first = json.loads(open(rep.path, encoding="utf-8").read())
    assert first["status"] == "running" and first["rows"] == [] and first["settings"] == {"k": 1}
    rep.add({"row": "a", "s": 1.5})
    mid = json.loads(open(rep.path, encoding="utf-8").read())
    assert mid["status"] == "running" and mid["rows"] == [{"row": "a", "s": 1.5}]  # survives a kill here
    rep.set_rows([{"row": "a", "s": 1.0}, {"row": "b", "s": 2.0}])
    assert rep.close() == rep.path
    done = json.loads(open(rep.path, encoding="utf-8").read())
    assert done["status"] == "done" and [r["row"] for r in done["rows"]] == ["a", "b"]
    assert done["wall_s"] >= 0 and done["process_cpu_s"] >= 0


def test_machine_state_says_whether_a_core_was_free():
    a = {"time": 0.0, "loadavg_1m": 0.2, "jiffies": (1000, 500)}
    idle = B.machine_state(a, {"time": 1.0, "loadavg_1m": 0.9, "jiffies": (1200, 560)}, threads=1)
    assert idle["idle_cores"] == (60 / 200) * idle["cores"]
    busy = B.machine_state(a, {"time": 1.0, "loadavg_1m": 3.0, "jiffies": (1200, 501)}, threads=1)
    assert busy["core_free"] is False and "NO core was free" in B.describe_machine(busy)
    half = B.machine_state(a, {"time": 1.0, "loadavg_1m": 1.0, "jiffies": (1200, 500 + 200)}, threads=1)
    assert half["core_free"] is True and "a core was free" in B.describe_machine(half)
    # without /proc/stat: the load average at the start must leave the bench its threads
    no_stat = B.machine_state({**a, "jiffies": None}, {"time": 1.0, "loadavg_1m": 1.0, "jiffies": None}, 1)
    assert no_stat["core_free"] is (0.2 + 1 <= no_stat["cores"])


def test_spread_gives_median_and_range():
    sp = B.spread([3.0, 1.0, 2.0, 10.0])
    assert sp["median"] == 2.5 and sp["min"] == 1.0 and sp["max"] == 10.0 and sp["n"] == 4
