"""dfsim: the SimPy simulator around the shared core."""
import dfnet  # noqa: F401  (first: it chooses compiled or source for dfsim.network, see dfnet.native)
