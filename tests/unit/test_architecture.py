"""The workflow's shape, checked in the code itself (the ``ast`` module)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from shop.orders.workflow.table import TaskName

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
    assert all(places[0].startswith("orders/workflow/table.py") for places in spelled.values())


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
    assert sorted(set(undoing)) == ["orders/flow.py:compensate"], undoing


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


DOMAINS = ("orders", "payments", "notifications", "reports")


def imported_modules(tree: ast.Module) -> Iterator[tuple[ast.AST, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node, node.module
            for alias in node.names:
                yield node, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name


def test_no_domain_imports_the_celery_app() -> None:
    """Tasks are ``shared_task``s; the app sits at the top of the house and finds them."""
    offenders = [f"{path.relative_to(SHOP)}:{node.lineno}"  # type: ignore[attr-defined]
                 for path, tree in modules()
                 if path.relative_to(SHOP).parts[0] in DOMAINS
                 for node, name in imported_modules(tree)
                 if name == "shop.celery" or name.startswith("shop.celery.")]
    assert offenders == []


def test_nothing_imports_inside_a_function_except_the_clis_commands() -> None:
    """Imports sit at the top of a module: none hides a cycle inside a function. The
    ``shop`` command's handlers import lazily so that ``shop --help`` stays fast."""
    inside: list[str] = []
    for path, tree in modules():
        if path.relative_to(SHOP).parts[:1] == ("cli",):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                inside.extend(f"{path.relative_to(SHOP)}:{inner.lineno}"
                              for inner in ast.walk(node)
                              if isinstance(inner, ast.Import | ast.ImportFrom))
    assert inside == []


def test_every_workflow_task_route_give_up_and_sweep_comes_from_the_step_table() -> None:
    from shop.celery import ROUTES, app
    from shop.orders.workflow import giving_up, sweeper, table

    app.loader.import_default_modules()  # what a worker imports as it starts
    declared = {name for name in app.tasks if name.startswith(("shop.orders.", "shop.payments."))}
    assert declared == {spec.task.value for spec in table.STEPS}
    for spec in table.STEPS:
        task = app.tasks[spec.task.value]
        assert (task.soft_time_limit, task.time_limit) == (spec.limits.soft, spec.limits.hard)
        assert ROUTES[spec.task.value] == spec.queue
        if spec.give_up is table.GiveUp.FAIL:
            assert spec.fails_as is not None
            assert spec.stage is not None
        if spec.give_up is table.GiveUp.FLAG:
            assert spec.flags is not None
    # Give-ups and the sweeper read the table, and spell no step of their own.
    for module in (giving_up, sweeper):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        spelled = {node.attr for node in ast.walk(tree)
                   if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                   and node.value.id == "TaskName"}
        assert spelled <= {"SEND_CONFIRMATION", "REQUEST_FULFILLMENT", "RELEASE_PAYMENT"}, spelled
    assert table.follows(table.TaskName.CAPTURE_PAYMENT) == (
        table.TaskName.SEND_CONFIRMATION, table.TaskName.REQUEST_FULFILLMENT)
    assert table.follows(table.TaskName.CHECK_INVENTORY) == (table.TaskName.CHARGE_PAYMENT,)


def test_the_root_holds_only_entry_points_and_the_ground_floor() -> None:
    loose = sorted(p.name for p in SHOP.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "api.py", "celery.py", "config.py", "db.py",
                     "exceptions.py", "logs.py", "metrics.py", "migrate.py", "models.py"]


MONEY_MOVES = {"authorize", "capture", "release", "cancel", "adopt", "record",
               "record_dispute", "mark_verified", "refund", "record_refund", "release_refund"}
PROVIDER_WRITES = {"create_intent", "confirm", "capture", "cancel", "refund"}


def test_one_convergence_path_writes_payment_state_and_moves_money() -> None:
    """Outside ``orders/provider/converge.py`` nothing calls the payments domain's
    writers (``payments.record``, the one writer of payment state) or the calls that move
    money (authorize, capture, release, cancel); and only ``payments/service.py`` calls
    the gateway's methods that change an intent."""
    callers: set[str] = set()
    gateway_writers: set[str] = set()
    for path, tree in modules():
        where = str(path.relative_to(SHOP))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func.value
            if (isinstance(target, ast.Name) and target.id == "payments"
                    and node.func.attr in MONEY_MOVES):
                callers.add(where)
            if (isinstance(target, ast.Name) and target.id == "gateway"
                    and node.func.attr in PROVIDER_WRITES):
                gateway_writers.add(where)
    assert callers == {"orders/provider/converge.py"}
    assert gateway_writers <= {"payments/service.py"}, gateway_writers
