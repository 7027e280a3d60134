"""The supernode: the scheduler service for its tasks and the seed that fetches from the origin."""
