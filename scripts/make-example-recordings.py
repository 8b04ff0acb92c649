#!/usr/bin/env python3
"""Regenerates the small hand-designed recordings in config/examples/.

Each recording is a few dozen messages chosen so that its results can be
checked by hand (gateway/tests/examples.rs does). Deterministic: running it
again writes the same bytes. Usage: python3 scripts/make-example-recordings.py
"""
import datetime
import json
import math
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "config" / "examples"
T0 = 1699999800000  # 2023-11-14T22:10:00Z, on a 5-minute boundary
S = 1000
M = 60 * S


def write(name, rows):
    """rows: (recv_ms, topic, payload object or str[, truth])"""
    rows = sorted(rows, key=lambda r: r[0])
    with open(OUT / name, "w") as f:
        for r in rows:
            payload = r[2] if isinstance(r[2], str) else json.dumps(r[2])
            line = {"recv_ms": r[0], "topic": r[1], "payload": payload}
            if len(r) > 3:
                line["truth"] = r[3]
            f.write(json.dumps(line, separators=(",", ":")) + "\n")


def iso(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sliding():
    # machine, minute, rms, delay ms (arrival order follows recv)
    ev = [("m1", 1, 1.0, 200), ("m2", 1.5, 2.0, 200), ("m1", 4, 3.0, 200), ("m1", 6, 5.0, 200), ("m1", 5.5, 4.0, 45000),
          ("m2", 8, 6.0, 200), ("m1", 12, 2.0, 200), ("m1", 4.5, 9.0, 480000), ("m2", 16, 1.0, 200), ("m1", 21, 7.0, 200)]
    write("sliding.jsonl", [(T0 + int(t * M) + d, f"plant/{m}/vibration", {"ts": T0 + int(t * M), "rms": v}) for m, t, v, d in ev])


def misaligned():
    ev = [("web1", 0.5, 10), ("web1", 1.5, 20), ("web1", 2.5, 30), ("web2", 3, 50), ("web1", 4, 40), ("web1", 6.5, 60),
          ("web2", 7.5, 70), ("web1", 9, 80), ("web1", 12, 90)]
    write("misaligned.jsonl", [(T0 + int(t * M) + 150, f"srv/{h}/metrics", {"time": iso(T0 + int(t * M)), "cpu": c}) for h, t, c in ev])


def sessions():
    ev = [("u1", 0, 3, 100), ("u1", 2, 4, 100), ("u2", 1, 10, 100), ("u1", 6, 5, 100), ("u1", 12, 1, 100), ("u2", 20, 2, 100),
          ("u1", 9, 7, 700000), ("u1", 13.5, 2, 100)]
    write("sessions.jsonl", [(T0 + int(t * M) + dl, "web/clicks", {"user": u, "t": (T0 + int(t * M)) / 1000, "dwell": d}) for u, t, d, dl in ev])


def rollup():
    ev = [("ann", s, c, l) for s, c, l in [(5, 1, 100), (40, 2, 120), (70, 1, 90), (130, 3, 200), (250, 1, 80), (290, 2, 60),
                                          (310, 4, 150), (370, 1, 50), (620, 2, 70)]]
    ev += [("bob", s, c, l) for s, c, l in [(10, 5, 30), (200, 1, 40), (330, 2, 20)]]
    ev.sort(key=lambda e: e[1])
    write("rollup.jsonl", [(T0 + s * S + 80, f"app/{u}/activity", {"ts": T0 + s * S, "clicks": c, "latency": l}) for u, s, c, l in ev])


def tolerance():
    rows = []
    orders = [("o-1", 0, 12.5, [(30, 12.5)]), ("o-2", 10, 40.0, [(150, 40.0)]), ("o-3", 20, 7.0, [(95, 3.5), (100, 3.5)]),
              ("o-4", 40, 99.0, []), ("o-5", 60, 5.0, [(50, 5.0)]), ("o-6", 200, 15.0, [(260, 15.0)]), ("o-7", 250, 8.0, []),
              ("o-8", 380, 20.0, [(400, 20.0)])]
    for oid, t, a, pays in orders:
        rows.append((T0 + t * S + 100, "shop/s1/orders", {"order_id": oid, "ts": T0 + t * S, "amount": a}))
        for pt, pa in pays:
            rows.append((T0 + pt * S + 400, "shop/s1/payments", {"order_id": oid, "ts": T0 + pt * S, "amount": pa}))
    # o-7's payment callback arrives after the payments watermark passed it: late
    rows.append((T0 + 420 * S, "shop/s1/payments", {"order_id": "o-7", "ts": T0 + 255 * S, "amount": 8.0}))
    write("tolerance.jsonl", rows)


def asof():
    rows = [(T0 + t * S + 50, "plant/m1/vibration", {"ts": T0 + t * S, "rms": round(0.5 + (t % 70) / 100, 2)}) for t in range(0, 360, 10)]
    rows += [(T0 + t * S + 300, "plant/m1/temperature", {"ts": T0 + t * S, "celsius": c}) for t, c in [(30, 21.0), (150, 21.5), (270, 22.5)]]
    rows += [(T0 + t * S + 50, "plant/m2/vibration", {"ts": T0 + t * S, "rms": 0.9}) for t in [5, 65]]
    write("asof.jsonl", rows)


def bucket():
    rows = [(T0 + m * M + 200, "home/kitchen/indoor", {"ts": T0 + m * M, "celsius": 20 + m % 3}) for m in range(15)]
    rows += [(T0 + m * M + 900, "home/kitchen/outdoor", {"ts": T0 + m * M, "celsius": 5 + m / 2}) for m in range(0, 15, 2)]
    write("bucket.jsonl", rows)


def overlap():
    rows = [(T0 + t * S + 100, "web/shop/activity", {"ts": T0 + t * S, "clicks": (t // 20) % 4}) for t in range(0, 720, 20)]
    rows += [(T0 + t * S + 500, "web/shop/metrics", {"ts": T0 + t * S, "cpu": 40 + (t // 30) % 5 * 10}) for t in range(180, 720, 30)]
    write("overlap.jsonl", rows)


def session_join():
    rows = [(T0 + t * S + 100, "game/ann/actions", {"ts": T0 + t * S, "score": sc}) for t, sc in [(0, 1), (40, 2), (100, 3), (180, 4), (600, 5), (660, 6)]]
    rows += [(T0 + t * S + 100, "game/ann/server", {"ts": T0 + t * S, "lag_ms": lag}) for t, lag in [(320, 80), (350, 120), (1200, 40)]]
    rows += [(T0 + t * S + 100, "game/bob/actions", {"ts": T0 + t * S, "score": 1}) for t in [30, 90]]
    write("session_join.jsonl", rows)


def skewed():
    # the fridge's clock is a day behind and 200 ppm fast; the door sensor
    # counts from its boot 3 days earlier, runs 300 ppm slow and reboots halfway
    rnd = random.Random(7)
    rows = []
    boot = T0 - 3 * 86_400_000 - 4_321_000
    for dev in ["fridge", "door"]:
        for i in range(240):  # every 5 s for 20 minutes
            t = T0 + 2500 + i * 5000 + rnd.randint(-200, 200)
            if dev == "fridge":
                d = T0 - 86_400_000 + (t - T0) * (1 + 200e-6)
            else:
                if i == 120:
                    boot = t - 1500
                d = (t - boot) * (1 - 300e-6)
            delay = 15 + 2 * math.exp(0.8 * rnd.gauss(0, 1)) + (rnd.uniform(1000, 3000) if rnd.random() < 0.03 else 0)
            c = 4.0 + 0.5 * math.sin(i / 20) if dev == "fridge" else 19.0 + (i % 7) * 0.1
            rows.append((int(t + delay), f"home/{dev}/temperature", {"ts": int(d), "celsius": round(c, 2)},
                         {"ts": int(t), "device": dev, "offset_ms": int(d) - int(t)}))
    write("skewed.jsonl", rows)


if __name__ == "__main__":
    for f in [sliding, misaligned, sessions, rollup, tolerance, asof, bucket, overlap, session_join, skewed]:
        f()
