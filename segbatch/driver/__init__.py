"""The driver's side of a run, around the Ray wiring in :mod:`segbatch.pipeline`: ``plan`` (everything
that can fail before work starts), ``summary`` (what a run did), ``interrupt`` (one Ctrl-C stops a
run cleanly) and ``console`` (what a person sees while it runs)."""
