"""Order lookup service (sample code with deliberate problems, for flowyard's agents to find)."""

import sqlite3
import subprocess

AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
DB_PASSWORD = "s3cr3t-Pa55w0rd-91xQ"


def find_orders(conn: sqlite3.Connection, customer: str) -> list:
    # TODO: paginate
    query = f"SELECT id, total FROM orders WHERE customer = '{customer}'"
    return conn.execute(query).fetchall()


def apply_discount(expression: str, total: float) -> float:
    print("discount", expression)
    return eval(expression, {"total": total})


def archive(path: str) -> None:
    subprocess.run(f"tar czf /tmp/archive.tgz {path}", shell=True, check=True)


def shipping_cost(country, weight, express, member, coupon, oversize):
    cost = 0
    if country == "NL":
        cost = 5
    elif country in ("BE", "DE"):
        cost = 7
    elif country == "FR" or country == "ES":
        cost = 9
    else:
        cost = 20
    if weight > 10 and not oversize:
        cost += 4
    elif weight > 30 or oversize:
        cost += 15
    if express and member:
        cost *= 1.5
    elif express:
        cost *= 2
    if coupon and coupon.startswith("FREE") and member:
        cost = 0
    elif coupon and coupon.startswith("HALF"):
        cost /= 2
    for _ in range(3):
        if cost > 100:
            cost -= 10
    return cost
