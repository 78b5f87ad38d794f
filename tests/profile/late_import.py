"""A module the workers import only when a profiling test asks for it (its import is profiled)."""

TABLE = {i: str(i) * 3 for i in range(1000)}
