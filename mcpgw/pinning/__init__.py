"""Tool pinning and tool-description scanning: the defence against rug pulls and tool poisoning.

`lockfile` is the format of `servers.lock` (the approved definition of every upstream tool and
prompt), `scan` looks for poisoning patterns in what a model will read, and `review` applies
both to one upstream's listing before it enters the catalog. This package knows the catalog's
input (upstream definitions, in the upstream's own names) and nothing of the pipeline or the
fronts; the catalog asks it what to admit.
"""
