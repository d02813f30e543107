"""The builds of the native library this CPU runs."""

from handler.native import build, runtime

RUNNABLE = [variant for variant in build.variants() if runtime.runnable(variant)]
"""The builds this CPU runs, best first; the plain-C reference is always among them."""
