"""Running the plan: the run folder, the asyncio pool, each conversation's turn loop, checks
and judges."""
