from celery import Celery

app = Celery(
    "drivers",
    broker="memory://",
    include=[
        "drivers.pg2",
        "drivers.pg2_two_queries",
        "drivers.pg3",
        "drivers.mysqlclient",
        "drivers.pure_mysql",
        "drivers.redis_blpop",
    ],
)
