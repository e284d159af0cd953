"""Source of ``rss_kib()`` for the memory-peak scripts that the hostile-input tests run in a fresh process."""
import textwrap

RSS_KIB_SOURCE = textwrap.dedent("""
    import os, resource, sys

    def rss_kib():
      # Linux: VmRSS now and VmHWM, the peak of this address space. ru_maxrss is no good there: across fork + exec
      # it keeps the parent's (pytest's) size. Elsewhere: ru_maxrss (bytes on macOS) for both.
      if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as f:
          fields = dict(line.split(":", 1) for line in f)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
      peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
      return peak, peak
""")
