"""RabbitMQ broker with the RPC result backend (results as messages)."""

from celery import Celery

from ._tasks import register

app = Celery("backends.rpc_app", broker="amqp://guest:guest@127.0.0.1:5672//", backend="rpc://")
register(app)
