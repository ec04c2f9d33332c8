"""The aiohttp application: one handler per operation of :data:`shared.api.operations.OPERATIONS`."""

from __future__ import annotations

from aiohttp import web

from shared.contract.errors import ConfigurationError

from . import alerts, approvals, catalog, plans, runs, signin, streams, ui, workflows
from .context import GATEWAY, Gateway
from .http import Handler, on_prepare, pipeline

HANDLERS: dict[str, Handler] = {
    "health": catalog.health,
    "ready": catalog.ready,
    "openapi": catalog.openapi,
    "list_workflows": workflows.list_workflows,
    "apply_workflow": workflows.apply_workflow,
    "get_workflow": workflows.get_workflow,
    "delete_workflow": workflows.delete_workflow,
    "start_run": runs.start_run,
    "list_runs": runs.list_runs,
    "get_run": runs.get_run,
    "cancel_run": runs.cancel_run,
    "retry_run": runs.retry_run,
    "run_logs": streams.run_logs,
    "events": streams.events,
    "list_approvals": approvals.list_approvals,
    "get_approval": approvals.get_approval,
    "approve": approvals.approve,
    "reject": approvals.reject,
    "start_plan": plans.start_plan,
    "list_plans": plans.list_plans,
    "get_plan": plans.get_plan,
    "approve_plan": plans.approve_plan,
    "reject_plan": plans.reject_plan,
    "alertmanager_webhook": alerts.alertmanager,
    "list_triggers": alerts.triggers,
    "create_session": signin.create_session,
    "get_session": signin.get_session,
    "delete_session": signin.delete_session,
    "list_agents": catalog.list_agents,
    "audit": catalog.audit_log,
}


def build_app(gw: Gateway) -> web.Application:
    # Bodies are read by the handlers under gateway.max_body; aiohttp's own cap is only a backstop.
    app = web.Application(middlewares=[pipeline], client_max_size=gw.cfg.max_body_bytes + 1)
    app[GATEWAY] = gw
    missing = [op.operation_id for op in gw.operations.values() if op.operation_id not in HANDLERS]
    if missing:
        raise ConfigurationError(f"gateway: no handler for operations {', '.join(missing)}")
    for op in gw.operations.values():
        app.router.add_route(op.method, op.path, HANDLERS[op.operation_id], name=op.operation_id)
    ui.add_routes(app)
    app.on_response_prepare.append(on_prepare)
    return app
