"""One module per section of docs/performance.md; each has ``async def run(ctx) -> Section``."""
