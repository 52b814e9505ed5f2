"""Peak resident memory of the benchmark process, per configuration.

On Linux the kernel keeps the high-water mark ``VmHWM`` in ``/proc/self/status``; writing ``5`` to
``/proc/self/clear_refs`` resets it, so each configuration gets its own peak. Where that reset is
not allowed, the peak is the process's since it started and the results say so (an upper bound).
"""

from __future__ import annotations

__all__ = ["PeakRss"]


class PeakRss:
    """Peak resident memory of this process per configuration (Linux: VmHWM, reset via clear_refs)."""

    def __init__(self) -> None:
        self.resettable = self._reset()
        self.method = (
            "VmHWM, reset per configuration (/proc/self/clear_refs)"
            if self.resettable
            else "process peak since start: per-configuration peaks are upper bounds"
        )

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.resettable:
            self._reset()

    def peak_mb(self) -> float | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        try:
            import resource

            return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
        except (ImportError, OSError):
            return None
