"""The sans-IO core shared by the live runtime (``dfnet``) and the simulator (``dfsim``):
plain state machines that never import asyncio, aiohttp or simpy, never do I/O, and take time
as an argument ``now`` (float seconds). Its modules: ``task`` (task identity from a normalised
URL, Dragonfly 1's piece-size rule, the piece grid), ``tokenbucket`` (rate-limit arithmetic
with debt for large reads), ``swarm`` (who holds which pieces of a task) and ``scheduler``
(the scheduling loop that picks pieces and parents through the policy interfaces).
"""

from dfnet.core.task import Task, TaskError, piece_size_for, task_id
from dfnet.core.tokenbucket import TokenBucket

__all__ = ["Task", "TaskError", "task_id", "piece_size_for", "TokenBucket"]
