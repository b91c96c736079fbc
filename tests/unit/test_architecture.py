"""The workflow's shape, checked in the code itself (the ``ast`` module)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from shop.orders.workflow import TaskName

SHOP = Path(__file__).resolve().parents[2] / "shop"


def modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SHOP.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def enclosing_functions(tree: ast.Module) -> dict[ast.AST, str]:
    """Each node mapped to the name of the function it sits in ("" at module level)."""
    owner: dict[ast.AST, str] = {}

    def visit(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef) else name
            owner[child] = inner
            visit(child, inner)

    visit(tree, "")
    return owner


def test_each_workflow_task_name_is_spelled_once() -> None:
    names = {task.value for task in TaskName}
    spelled: dict[str, list[str]] = {name: [] for name in names}
    for path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled[node.value].append(f"{path.relative_to(SHOP)}:{node.lineno}")
    assert {name: len(places) for name, places in spelled.items()} == dict.fromkeys(names, 1), \
        spelled
    assert all(places[0].startswith("orders/workflow.py") for places in spelled.values())


def test_compensation_is_one_function() -> None:
    """Only ``compensate`` gives back stock or enqueues an order's payment release."""
    undoing: list[str] = []
    for path, tree in modules():
        owner = enclosing_functions(tree)
        for node in ast.walk(tree):
            releases_stock = (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                              and node.func.id == "release_lines")
            declares_task = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                             and node.func.attr == "task")
            releases_payment = isinstance(node, ast.Call) and not declares_task and any(
                isinstance(k.value, ast.Attribute) and k.value.attr == "RELEASE_PAYMENT"
                for k in node.keywords if k.arg in ("name", "task"))
            if releases_stock or releases_payment:
                undoing.append(f"{path.relative_to(SHOP)}:{owner.get(node, '')}")
    assert sorted(set(undoing)) == ["orders/workflow.py:compensate"], undoing


def test_only_the_payments_domain_writes_payment_status() -> None:
    """Outside ``shop/payments`` nothing sets a payment's ``status``: no ``update(Payment)``,
    no ``Payment(status=…)``, no ``<payment>.status = …``."""
    writes: list[str] = []
    for path, tree in modules():
        if "payments" in path.relative_to(SHOP).parts:
            continue
        for node in ast.walk(tree):
            if _writes_payment_status(node):
                writes.append(f"{path.relative_to(SHOP)}:{getattr(node, 'lineno', 0)}")
    assert writes == []


def _writes_payment_status(node: ast.AST) -> bool:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id in ("update", "insert"):
            return any(isinstance(a, ast.Name) and a.id == "Payment" for a in node.args)
        if node.func.id == "Payment":
            return any(k.arg == "status" for k in node.keywords)
    if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(isinstance(t, ast.Attribute) and t.attr == "status"
                   and "payment" in ast.unparse(t.value).lower() for t in targets)
    return False
