"""Source lines the unit tests point stalls at: the line numbers matter."""
import hashlib
import time


def sync_orders(redis, cursor):
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    redis.get('orders')
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    cursor.execute('SELECT 1')
    pass
    pass
    pass
    hashlib.pbkdf2_hmac('sha256', b'pw', b'salt', 10_000_000)
    pass
    pass
    pass
    time.perf_counter()
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
    pass
