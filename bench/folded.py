"""Summarise py-spy's raw (folded) profiles: ``python -m bench.folded FILE...``.

Each line of a raw profile is one stack, outermost frame first, ``;``-separated, then
a sample count. Printed: the samples, the share whose stack passes through each of a
few places (a stack may count under several), and the frames most often on top.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

PLACES = {
    "waiting on PostgreSQL (psycopg wait)": ("psycopg/connection.py", "psycopg/waiting.py"),
    "SQLAlchemy": ("sqlalchemy/",),
    "AMQP (kombu, amqp)": ("kombu/", "amqp/"),
    "shop's own code": ("shop/",),
    "pydantic": ("pydantic",),
    "celery and billiard": ("celery/", "billiard/"),
    "uvicorn, starlette, fastapi": ("uvicorn/", "starlette/", "fastapi/"),
}


def load(paths: list[Path]) -> Counter[str]:
    stacks: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] += int(count)
    return stacks


def summary(stacks: Counter[str], top: int = 15) -> str:
    total = sum(stacks.values()) or 1
    lines = [f"{total} samples"]
    for place, marks in PLACES.items():
        n = sum(c for s, c in stacks.items() if any(m in s for m in marks))
        lines.append(f"  {100 * n / total:5.1f} %  {place}")
    steps: Counter[str] = Counter()
    for stack, count in stacks.items():
        named = [f.split(" (", 1)[0] for f in stack.split(";")
                 if "shop/orders/workflow/tasks.py" in f or "shop/orders/provider/tasks.py" in f
                 or "shop/orders/router.py" in f]
        steps[named[-1] if named else "(outside the steps)"] += count
    lines.append("by step (task or route):")
    lines += [f"  {100 * c / total:5.1f} %  {name}" for name, c in steps.most_common(top)]
    tops: Counter[str] = Counter()
    for stack, count in stacks.items():
        tops[stack.rsplit(";", 1)[-1]] += count
    lines.append("frames on top:")
    lines += [f"  {100 * c / total:5.1f} %  {frame}" for frame, c in tops.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(load([Path(p) for p in sys.argv[1:]])))
