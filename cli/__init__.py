"""`embedfleet` command line: the composition root of the apps (gateway, Triton, store host, worker,
index client). The core (`services`) imports none of this."""
