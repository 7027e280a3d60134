"""The live testbed (issue 7): a scenario built for real on one machine, and its gap to dfsim.

Modules, top to bottom: `compare` (simulator vs testbed, the figure), `runner` (one run:
build, distribute, measure, clean up), `plan` (scenario -> hosts, addresses, draws), `clients`
(a host's timed download), `procs` (node processes in namespaces), `netns` (namespaces, veths,
bridges, tc), `origin` (the origin HTTP server with a byte counter).

It sits in `experiments` because it reaches both bodies: it reads dfsim's scenarios and bounds
and runs dfnet's nodes as processes; neither imports it.
"""
