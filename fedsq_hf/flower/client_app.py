"""The fedsq-hf `ClientApp`: every message (a query before round 1, a fit, an evaluation) runs at its site
through `Site`, on the library's client API. A `FedSQError` (the site's data, backbone or node config
is wrong) goes back to the server as the reply's error, which names the node."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from ..errors import FedSQError
from .records import SiteTask, update_content
from .run_config import parse_run_config
from .site import Site, SiteConfig

__all__ = ["app", "handle"]

logging.getLogger("fedsq_hf").setLevel(logging.INFO)
app = ClientApp()


def handle(message: Message, context: Context, act: Callable[[Site, SiteTask], RecordDict]) -> Message:
    """`act` on this node's site and the message's task; the reply, or an error reply for a `FedSQError`."""
    try:
        site = Site(parse_run_config(context.run_config), SiteConfig.from_node_config(context.node_config))
        content = act(site, SiteTask.read(message.content))
    except FedSQError as err:
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"FedSQError: {err}"),
                       reply_to=message)
    return Message(content, reply_to=message)


@app.query()
def query(message: Message, context: Context) -> Message:
    return handle(message, context, lambda site, task: RecordDict({"metrics": MetricRecord(site.query(task))}))


@app.train()
def train(message: Message, context: Context) -> Message:
    return handle(message, context, lambda site, task: update_content(site.fit(task)))


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return handle(message, context, lambda site, task: RecordDict({"metrics": MetricRecord(site.evaluate(task))}))
