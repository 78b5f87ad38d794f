"""Graph checks on task dependencies."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping


def find_cycle(dependencies: Mapping[Hashable, Iterable[Hashable]]) -> list | None:
    """A cycle in ``{node: [dependencies]}`` as a list ``[a, b, ..., a]``, or None.

    Iterative depth-first search: O(nodes + edges), no recursion limit.
    """
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(dependencies, WHITE)
    for root in dependencies:
        if color[root] != WHITE:
            continue
        stack = [(root, iter(dependencies[root]))]
        color[root] = GREY
        path = [root]
        while stack:
            node, edges = stack[-1]
            for dep in edges:
                state = color.get(dep, BLACK)  # unknown nodes are checked elsewhere
                if state == GREY:
                    return path[path.index(dep):] + [dep]
                if state == WHITE:
                    color[dep] = GREY
                    stack.append((dep, iter(dependencies[dep])))
                    path.append(dep)
                    break
            else:
                color[node] = BLACK
                stack.pop()
                path.pop()
    return None
