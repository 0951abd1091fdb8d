"""How many CPUs this process may keep busy: its affinity mask, capped by its cgroup's CPU quota.

A Kubernetes pod with `limits.cpu: 2` on a 64-core node sees 64 CPUs in its affinity mask, but the
kernel's CFS quota lets it run only two cores' worth: thread pools sized by the mask (XNNPACK's, whose
threads wait for each other at every op) then spend most of their time throttled. Both cgroup layouts
are read: v2 (`cpu.max`) and v1 (`cpu/cpu.cfs_quota_us` over `cpu/cpu.cfs_period_us`).

    python -c "from distillery import cpus; print(cpus.available_cpus(), cpus.cgroup_cpu_limit())"
"""

from __future__ import annotations

import os

CGROUP_ROOT = "/sys/fs/cgroup"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpu_limit(root: str = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period), or None when there is none (or no
    cgroup file can be read, or what it holds does not parse)."""
    unified = _read(os.path.join(root, "cpu.max"))  # v2: "max 100000" or "200000 100000"
    if unified is not None:
        fields = unified.split()
        if len(fields) == 2 and fields[0] != "max":
            return _ratio(fields[0], fields[1])
        return None
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):  # v1: quota -1 = none
        quota = _read(os.path.join(root, folder, "cpu.cfs_quota_us"))
        period = _read(os.path.join(root, folder, "cpu.cfs_period_us"))
        if quota is not None and period is not None:
            return _ratio(quota, period)
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_value, period_value = int(quota), int(period)
    except ValueError:
        return None
    if quota_value <= 0 or period_value <= 0:
        return None
    return quota_value / period_value


def available_cpus(root: str = CGROUP_ROOT) -> int:
    """CPUs this process may use: the affinity mask (every CPU where the OS has none), at most the cgroup
    quota rounded down (at least 1: a quota of 0.5 CPU still runs one thread)."""
    if hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, int(limit))
    return max(1, count)
