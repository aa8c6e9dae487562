"""hpo's gRPC proxy: Optuna's storage service with hpo's own beside it on the same port, and
the client that talks to both."""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

# gRPC without its fork handlers (unless ``$GRPC_ENABLE_FORK_SUPPORT`` says otherwise), set
# before it is imported: they run in a child forked with a ``preexec_fn`` (the launcher starts
# its workers so) or without exec (DataLoader workers) while other threads call gRPC, and
# there abort the child now and then (SIGABRT, "epoll_wait error: Bad file descriptor"). No
# child of hpo uses its parent's channel.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
import grpc  # noqa: E402
import optuna  # noqa: E402
from optuna.storages import GrpcStorageProxy  # noqa: E402

from hpo.store._optuna._heartbeat import OwnHeartbeat  # noqa: E402
from hpo.store._optuna._store import STORAGE_CALLS  # noqa: E402
from hpo.store._optuna._trials import (  # noqa: E402
    BudgetTaken,
    claim_template,
    claimed,
)
from hpo.store.outage import first_line  # noqa: E402

if TYPE_CHECKING:
    from grpc import ServicerContext, UnaryUnaryMultiCallable

log = logging.getLogger("hpo")


# The gRPC proxy: Optuna's ``StorageService`` for everything Optuna does, and hpo's own
# service beside it on the same port for what hpo adds (a call: JSON in, JSON out), run by
# the proxy on hpo's RDB storage, in one transaction each as they are without the proxy.


GRPC_SERVICE = "hpo.Storage"
_GRPC_METHOD = f"/{GRPC_SERVICE}/Call"


def grpc_server(
    storage: Any, host: str, port: int, threads: int, hello: dict[str, Any]
) -> tuple[Any, int]:
    """A started gRPC server of ``storage`` (hpo's RDB storage): Optuna's proxy service on
    Optuna's cache of it, and hpo's.

    Returns:
        The server and the port it listens on (``port`` 0: a free one).

    Raises:
        OSError: the address cannot be bound.
    """
    from concurrent.futures import ThreadPoolExecutor

    import optuna
    from optuna.storages import _CachedStorage
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    cached = _CachedStorage(storage)

    def known(study_id: int, trial_id: int) -> None:
        # Optuna's cache must know a trial before it writes its params: a trial claimed here
        # may not have been read through it yet (the proxy restarted since the worker read).
        if trial_id not in cached._trial_id_to_study_id_and_number:
            cached.get_all_trials(study_id, deepcopy=False)

    def create_trial(study_id: int, attrs: dict[str, Any], budget: int | None) -> int:
        return cached.create_new_trial(study_id, claim_template(attrs, budget))

    def claim(study_id: int, trial_id: int, attrs: dict[str, Any], budget: int | None) -> bool:
        took = storage.claim_trial(study_id, trial_id, attrs, budget)
        if took:
            known(study_id, trial_id)
        return took

    operations = {
        "hello": lambda: hello,
        "create_trial": create_trial,
        "claim_trial": claim,
        "set_trial_user_attrs": storage.set_trial_user_attrs,
        "create_study_with_attrs": lambda directions, name, attrs: storage.create_study_with_attrs(
            [optuna.study.StudyDirection(d) for d in directions], name, attrs
        ),
        "record_heartbeat": storage.record_heartbeat,
        "stale_trial_ids": storage.stale_trial_ids,
    }

    def call(request: bytes, context: ServicerContext) -> bytes:
        asked = json.loads(request)
        operation = operations.get(asked.get("op"))
        if operation is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no operation {asked.get('op')!r}")
        try:
            reply = {"result": operation(**asked.get("args", {}))}
        except (
            BudgetTaken,
            optuna.exceptions.DuplicatedStudyError,
            optuna.exceptions.UpdateFinishedTrialError,
            KeyError,
        ) as e:
            reply = {"raise": type(e).__name__, "message": str(e)}
        return json.dumps(reply).encode()

    import socket

    # A clear line for an address in use or not this machine's, before gRPC would log the
    # same failure in its own words.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As gRPC binds: a restarted proxy takes its port back from connections closing.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host.strip("[]"), port))
    # Not gRPC's default SO_REUSEPORT: a second proxy on the port would take half the calls.
    server = grpc.server(
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="proxy"),
        options=[("grpc.so_reuseport", 0)],
    )
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(cached), server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                GRPC_SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(call)}
            ),
        )
    )
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:  # grpc >= 1.60 raises where older ones returned 0
        raise OSError(first_line(e)) from None
    if not bound:
        raise OSError("gRPC could not bind it")
    server.start()
    return server, bound


_RAISED_TYPES: dict[str, type[Exception]] = {
    "BudgetTaken": BudgetTaken,
    "DuplicatedStudyError": optuna.exceptions.DuplicatedStudyError,
    "UpdateFinishedTrialError": optuna.exceptions.UpdateFinishedTrialError,
    "KeyError": KeyError,
}
"""What hpo's service of the proxy raised, by name: raised again in the client."""


class HpoGrpcStorage(GrpcStorageProxy, OwnHeartbeat):
    """Optuna's ``GrpcStorageProxy`` with hpo's claims, heartbeats (recorded by the database
    behind the proxy, by its clock) and study creation through hpo's service of the proxy
    (``grpc_server``); every call waits for a proxy that does not answer (a restart) as a
    database call does (``$HPO_OUTAGE_SECONDS``)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        heartbeat_stale_trial_callback: Any = None,
    ) -> None:
        # Checked first: a bad value opens no file and no channel.
        self._set_heartbeat(heartbeat_interval, grace_period, heartbeat_stale_trial_callback)
        super().__init__(host=host, port=port)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["_hpo"]  # a call on the channel: made again with it (``_setup``)
        return state

    def _setup(self) -> None:
        super()._setup()
        self._hpo: UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(_GRPC_METHOD)

    def hpo_call(self, op: str, **args: Any) -> Any:
        """An operation of hpo's service of the proxy."""
        reply = json.loads(self._hpo(json.dumps({"op": op, "args": args}).encode()))
        if "raise" in reply:
            raise _RAISED_TYPES[reply["raise"]](reply["message"])
        return reply["result"]

    def hello(self) -> dict[str, Any]:
        return self.hpo_call("hello")

    def create_new_trial(self, study_id: int, template_trial: Any = None) -> int:
        claim = claimed(template_trial)
        if claim is None:
            return super().create_new_trial(study_id, template_trial)
        attrs, budget = claim
        return self.hpo_call("create_trial", study_id=study_id, attrs=attrs, budget=budget)

    def claim_trial(
        self, study_id: int, trial_id: int, attrs: dict[str, Any], budget: int | None = None
    ) -> bool:
        return self.hpo_call(
            "claim_trial", study_id=study_id, trial_id=trial_id, attrs=attrs, budget=budget
        )

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        self.hpo_call("set_trial_user_attrs", trial_id=trial_id, attrs=attrs)

    def create_study_with_attrs(
        self, directions: list[Any], name: str, attrs: dict[str, Any]
    ) -> int:
        return self.hpo_call(
            "create_study_with_attrs",
            directions=[int(d) for d in directions],
            name=name,
            attrs=attrs,
        )

    def record_heartbeat(self, trial_id: int) -> None:
        self.hpo_call("record_heartbeat", trial_id=trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_seconds()
        return self.hpo_call("stale_trial_ids", study_id=study_id, grace_period=grace)


def _waiting(method: Any) -> Any:
    """``method`` waiting through a proxy outage (``_through_proxy_outage``)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_grpc_inside, "depth", 0):
            return method(self, *args, **kwargs)
        _grpc_inside.depth = 1
        try:
            return _through_proxy_outage(lambda: method(self, *args, **kwargs), self, grpc)
        finally:
            _grpc_inside.depth = 0

    return call


_grpc_inside = threading.local()
_GRPC_RETRIED = STORAGE_CALLS + ("hello",)


for _name in _GRPC_RETRIED:
    setattr(HpoGrpcStorage, _name, _waiting(getattr(HpoGrpcStorage, _name)))


class ProxyUnavailable(ConnectionError):
    """The gRPC storage proxy did not answer for the outage window."""


def _through_proxy_outage(call: Any, storage: Any, grpc: Any) -> Any:
    """``call``; while the proxy does not answer (a restart), wait and try again for up to
    ``$HPO_OUTAGE_SECONDS`` from the first failure, as a database call does."""
    import time

    from hpo.store.outage import outage_seconds, pause_unless_stopping, stop_requested

    deadline, delay = None, 0.5
    while True:
        try:
            return call()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + outage_seconds()
            where = f"the storage proxy grpc://{storage._host}:{storage._port}"
            if stop_requested():  # the worker is stopping: it waits for no proxy
                raise ProxyUnavailable(f"{where} does not answer: {e.details()}") from None
            if now >= deadline:
                raise ProxyUnavailable(
                    f"{where} did not answer for {outage_seconds():g}s: {e.details()}"
                ) from None
            log.warning("storage proxy unavailable (%s); retrying in %.1fs", e.details(), delay)
            if not pause_unless_stopping(min(delay, max(0.0, deadline - now))):
                raise ProxyUnavailable(f"{where} does not answer: {e.details()}") from None
            delay = min(delay * 2, 5.0)
