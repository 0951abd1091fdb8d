"""distillery.cpus: the CPU count honours the cgroup quota (a pod's limits.cpu), in both cgroup layouts.

    .venv/bin/python -m pytest tests/test_cpus.py -q -p no:xdist
"""

import os

from distillery import cpus


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _affinity():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_a_cgroup_v2_quota_caps_the_count(tmp_path):
    _write(tmp_path / "cpu.max", "150000 100000\n")  # limits.cpu: 1500m
    assert cpus.cgroup_cpu_limit(str(tmp_path)) == 1.5
    assert cpus.available_cpus(str(tmp_path)) == 1  # rounded down: 2 threads would be throttled
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert cpus.cgroup_cpu_limit(str(tmp_path)) is None
    assert cpus.available_cpus(str(tmp_path)) == _affinity()


def test_a_cgroup_v1_quota_caps_the_count(tmp_path):
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "50000\n")
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cpus.cgroup_cpu_limit(str(tmp_path)) == 0.5
    assert cpus.available_cpus(str(tmp_path)) == 1  # never 0
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")  # v1's "no quota"
    assert cpus.cgroup_cpu_limit(str(tmp_path)) is None


def test_a_quota_above_the_affinity_mask_changes_nothing(tmp_path):
    _write(tmp_path / "cpu.max", f"{100000 * (_affinity() + 7)} 100000\n")
    assert cpus.available_cpus(str(tmp_path)) == _affinity()


def test_unreadable_or_odd_cgroup_files_mean_no_quota(tmp_path):
    assert cpus.cgroup_cpu_limit(str(tmp_path / "absent")) is None
    _write(tmp_path / "cpu.max", "lots of cpus\n")
    assert cpus.cgroup_cpu_limit(str(tmp_path)) is None
    _write(tmp_path / "cpu.max", "100000 0\n")
    assert cpus.cgroup_cpu_limit(str(tmp_path)) is None
    assert cpus.available_cpus(str(tmp_path)) == _affinity()
