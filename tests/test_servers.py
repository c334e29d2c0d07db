"""The throwaway test servers themselves: MariaDB answers SQL, Redis loses its data on restart."""

from __future__ import annotations

import pymysql
import redis

from tests.conftest import MySQLParams
from tests.servers import RedisServer


def test_mariadb_fixture_runs_parametrized_sql(mysql_params: MySQLParams) -> None:
    conn = pymysql.connect(host=mysql_params.host, port=mysql_params.port, user=mysql_params.user,
                           password=mysql_params.password, database=mysql_params.database,
                           connect_timeout=5, read_timeout=5)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE t (name VARCHAR(64) CHARACTER SET utf8mb4)")
        cur.execute("INSERT INTO t VALUES (%s)", ("张三'; DROP TABLE t; --",))
        cur.execute("SELECT name FROM t")
        assert cur.fetchall() == (("张三'; DROP TABLE t; --",),)


def test_redis_server_restart_loses_data(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("k", "v")
    redis_server.stop()
    redis_server.start()
    assert client.get("k") is None
    client.close()
