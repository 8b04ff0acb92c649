# ---------------------------------------------------------------------------
# Runtime: the same in every export (edgejoin's gateway/src/export/spark_runtime.py).
# ---------------------------------------------------------------------------
import argparse
import json
import os
import sys
import tempfile
from decimal import Decimal

try:
    import xxhash
except ImportError:  # checked in main(), with the fix
    xxhash = None

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

# The end-of-input flush: one event per stream at this time (9000-01-01) in micro-batches of their
# own after the recording (FLUSH_BATCHES of them), so every watermark passes all data (edgejoin's replay does the same at
# the end of its input). Its key never reaches the output.
FLUSH_KEY = "\u0000edgejoin-flush"
FLUSH_TS = 221845392000000
# edgejoin refuses timestamps beyond year 9999 either way (decode.rs MAX_ABS_TS_MS).
MAX_ABS_TS_MS = 253402300799999

# stream name -> Kafka topic (from --topic); empty when reading a recording
STREAM_SOURCES = {}


# ---- results, byte for byte as edgejoin writes them (engine/src/output.rs) ----

def rust_num(v):
    """A number as edgejoin writes it: Rust's shortest round-trip digits, never an exponent."""
    if v is None:
        return "null"
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        return "null"
    s = format(Decimal(repr(v)), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def jstr(s):
    """A JSON string as edgejoin's writer escapes it."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20:
            out.append("\\u%04x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def jvalues(names, vals, skip_absent):
    parts = []
    for name, v in zip(names, vals):
        if skip_absent and v is None:
            continue
        parts.append(jstr(name) + ":" + rust_num(v))
    return "{" + ",".join(parts) + "}"


def jside(spec, s):
    """One side of a join row; spec = ("stream", name, value names) or ("window", name, agg names)."""
    if s is None:
        return "null"
    kind, name, names = spec
    if kind == "stream":
        return ('{"stream":' + jstr(name) + ',"ts":' + str(s["ts"]) + ',"values":'
                + jvalues(names, s["vals"], True) + "}")
    return ('{"window":' + jstr(name) + ',"start":' + str(s["start"]) + ',"end":' + str(s["end"])
            + ',"count":' + str(s["n"]) + ',"values":' + jvalues(names, s["vals"], False) + "}")


def finish(body, emitted_ms):
    """Appends emitted_ms and the id: xxh3-64 of the row without emitted_ms (SPEC §13.7)."""
    h = xxhash.xxh3_64_intdigest(body.encode("utf-8"))
    return body + ',"emitted_ms":' + str(emitted_ms) + ',"id":"%016x"}' % h


def topic_of(template, name, key):
    """The result's MQTT topic, as the gateway renders it (engine/src/topic.rs)."""
    def clean(s):
        return s.replace("+", "_").replace("#", "_").replace("\u0000", "_")
    t = template.replace("{join}", clean(name)).replace("{window}", clean(name))
    t = t.replace("{stream}", clean(name)).replace("{gateway}", clean(GATEWAY))
    return TOPIC_PREFIX + "/" + t.replace("{key}", clean(key))


ROW = T.StructType([T.StructField("topic", T.StringType()), T.StructField("value", T.StringType())])


def window_rows(df, name, agg_names, template):
    """Window results -> (topic, value) in edgejoin's format."""
    def render(r):
        if r["key"] == FLUSH_KEY:
            return None
        body = ('{"window":' + jstr(name) + ',"key":' + jstr(r["key"]) + ',"start":' + str(r["start"])
                + ',"end":' + str(r["end"]) + ',"count":' + str(r["n"]) + ',"values":'
                + jvalues(agg_names, r["vals"], False))
        return (topic_of(template, name, r["key"]), finish(body, r["emitted_ms"]))
    udf = F.udf(render, ROW)
    cols = F.struct("key", "start", "end", "n", F.array(*agg_cols(len(agg_names))).alias("vals"),
                    F.unix_millis(F.current_timestamp()).alias("emitted_ms"))
    return unflushed(df.select(udf(cols).alias("r")))


def join_rows(df, name, left, right, template):
    """Join results (columns l_*, r_*) -> (topic, value) in edgejoin's format."""
    def render(r):
        if r["key"] == FLUSH_KEY:
            return None
        body = ('{"join":' + jstr(name) + ',"key":' + jstr(r["key"]) + ',"left":' + jside(left, r["l"])
                + ',"right":' + jside(right, r["r"]))
        return (topic_of(template, name, r["key"]), finish(body, r["emitted_ms"]))
    udf = F.udf(render, ROW)
    cols = F.struct(F.col("l_key").alias("key"), side_struct("l", left), side_struct("r", right),
                    F.unix_millis(F.current_timestamp()).alias("emitted_ms"))
    return unflushed(df.select(udf(cols).alias("r")))


def unflushed(rendered):
    """Drops the flush's own rows. The test is on the UDF's result on purpose: a filter on the key
    would be pushed below the watermark and hide the flush from it."""
    return rendered.where(F.col("r").isNotNull()).select("r.topic", "r.value")


def agg_cols(n):
    return [F.col("a%d" % i).cast("double") for i in range(n)]


def side_struct(p, spec):
    kind, _, names = spec
    if kind == "stream":
        s = F.struct(F.col(p + "_ts").alias("ts"),
                     F.array(*[F.col("%s_v%d" % (p, i)) for i in range(len(names))]).alias("vals"))
    else:
        s = F.struct(F.col(p + "_start").alias("start"), F.col(p + "_end").alias("end"),
                     F.col(p + "_n").alias("n"),
                     F.array(*[F.col("%s_a%d" % (p, i)).cast("double") for i in range(len(names))]).alias("vals"))
    # an unmatched side (left outer) is null
    return F.when(F.col(p + "_key").isNotNull(), s).alias(p)


# ---- decoding payloads (engine/src/decode.rs) ----

def time_ms(text, unit):
    """A time field's text -> ms since the epoch, floored; null when it is not a time."""
    scale = {"s": "* 1000", "ms": "", "us": "/ 1000", "ns": "/ 1000000"}
    rfc = F.floor(F.unix_micros(F.expr("try_to_timestamp(%s)" % text)) / 1000).cast("long")
    if unit == "rfc3339":
        numeric = F.lit(None).cast("long")
    else:
        numeric = F.expr("cast(floor(try_cast(%s as decimal(38,12)) %s) as long)" % (text, scale[unit]))
    # a JSON number's text (a string's text would be its content: "2023-11-14T…")
    is_number = F.expr(text).rlike(r"^-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$")
    return F.when(is_number, numeric).otherwise(rfc)


def number(text):
    """A value field's text -> a finite double, or null (missing or not a number)."""
    c = F.expr(text)
    v = (F.when(c == "true", F.lit(1.0)).when(c == "false", F.lit(0.0))
         .otherwise(F.expr("try_cast(trim(%s) as double)" % text)))
    return F.when(F.isnan(v) | (F.abs(v) == float("inf")), F.lit(None).cast("double")).otherwise(v)


def device_time(ts, max_future_ms):
    """clock = "device": a timestamp more than max_future ahead of its receive time is clamped."""
    return F.when(ts > F.col("recv_ms") + F.lit(max_future_ms), F.col("recv_ms")).otherwise(ts)


def decode(raw, stream, matched, key, ts, values, lateness_ms):
    """One stream's events: key, ts (ms), recv_ms, v0.., et (its event time, watermarked)."""
    src = STREAM_SOURCES.get(stream)
    if src is not None:
        matched = matched & (F.col("source") == F.lit(src))
    flush = F.col("flush")
    ev = raw.where(flush | matched).select(
        F.when(flush, F.lit(FLUSH_KEY)).otherwise(key).alias("key"),
        F.when(flush, F.col("recv_ms")).otherwise(ts).alias("ts"),
        F.col("recv_ms"),
        *[F.when(flush, F.lit(None).cast("double")).otherwise(v).alias("v%d" % i) for i, v in enumerate(values)])
    ev = ev.where(F.col("key").isNotNull() & F.col("ts").isNotNull() & (F.abs("ts") <= MAX_ABS_TS_MS))
    ev = ev.withColumn("et", F.timestamp_millis("ts"))
    return ev.withWatermark("et", "%d milliseconds" % lateness_ms)


# ---- windows and aggregates (engine/src/window.rs, aggregate.rs) ----

def first_by_time(v):
    """first(): the value with the earliest event time; ties: the earlier arrival."""
    return F.min_by(v, F.when(F.col(v).isNotNull(), F.struct("ts", "recv_ms")))


def last_by_time(v):
    """last(): the value with the latest event time; ties: the later arrival."""
    return F.max_by(v, F.when(F.col(v).isNotNull(), F.struct("ts", "recv_ms")))


def values_of(v, by_time):
    """The present values, as edgejoin folds them: in arrival order; for a rollup's records in the
    order their windows closed, which for one key is by start (Spark's order of a rollup's input
    is its state store's, so those are sorted)."""
    if not by_time:
        return "collect_list(%s)" % v
    return "transform(array_sort(filter(collect_list(struct(ts, %s AS v)), x -> x.v IS NOT NULL)), x -> x.v)" % v


def sum_in_order(v, by_time):
    """sum(): 0 + each value in order (a sum of doubles depends on the order)."""
    if not by_time:
        return F.sum(v)
    return F.expr("aggregate(%s, CAST(NULL AS DOUBLE), (s, x) -> coalesce(s, 0D) + x)" % values_of(v, True))


def mean_in_order(v, by_time):
    """mean(): the in-order sum over the count."""
    if not by_time:
        return F.avg(v)
    return F.expr("aggregate(%s, named_struct('n', 0D, 's', 0D), (a, x) -> named_struct('n', a.n + 1D, 's', a.s + x), "
                  "a -> CASE WHEN a.n > 0 THEN a.s / a.n END)" % values_of(v, True))


def stddev_welford(v, by_time):
    """Sample standard deviation by Welford's update, in edgejoin's order, as edgejoin computes it."""
    return F.expr(
        "aggregate(%s, named_struct('n', 0D, 'a', 0D, 'b', 0D), "
        "(s, x) -> named_struct('n', s.n + 1D, 'a', s.a + (x - s.a) / (s.n + 1D), "
        "'b', s.b + (x - s.a) * (x - (s.a + (x - s.a) / (s.n + 1D)))), "
        "s -> CASE WHEN s.n >= 2 THEN sqrt(greatest(s.b, 0D) / (s.n - 1D)) END)" % values_of(v, by_time))


def fixed_window(size_ms, slide_ms, offset_ms, shift_us):
    """window(): [offset + k*slide, + size), over an event time shifted by shift_us (rollups)."""
    slide_us = slide_ms * 1000
    return F.window("et", "%d microseconds" % (size_ms * 1000), "%d microseconds" % slide_us,
                    "%d microseconds" % ((offset_ms * 1000 + shift_us) % slide_us))


def aggregate(ev, window, aggs, shift_us):
    """Groups by key and window: key, start, end (ms, unshifted), a0.., n, et = window_time."""
    out = ev.groupBy("key", window.alias("w")).agg(
        *[a.alias("a%d" % i) for i, a in enumerate(aggs)], F.count(F.lit(1)).alias("n"))
    return out.select(
        "key",
        ((F.unix_micros("w.start") - F.lit(shift_us)) / 1000).cast("long").alias("start"),
        ((F.unix_micros("w.end") - F.lit(shift_us)) / 1000).cast("long").alias("end"),
        *["a%d" % i for i in range(len(aggs))], "n",
        F.window_time("w").alias("et"))


def records(win, n_aggs):
    """A window's results as a rollup's input (SPEC §13.10): fields = aggregates by name + count.
    Spark's event time of a result is window_time (end - 1 µs); the rollup's windows are shifted
    to match, so a record still falls in the window its start falls in."""
    return win.select(
        "key", F.col("start").alias("ts"), F.lit(None).cast("long").alias("recv_ms"),
        *[F.col("a%d" % i).cast("double").alias("v%d" % i) for i in range(n_aggs)],
        F.col("n").cast("double").alias("v%d" % n_aggs), "et")


# ---- joins (engine/src/join/) ----

def prefixed(df, p):
    return df.select(*[F.col(c).alias(p + "_" + c) for c in df.columns])


def interval_us(us):
    return F.expr("INTERVAL '%d' MICROSECOND" % us) if us >= 0 else -F.expr("INTERVAL '%d' MICROSECOND" % -us)


def et_between(lo_us, hi_us):
    """r_et - l_et within [lo, hi]: the bound Spark needs to know when a row can no longer match."""
    return (F.col("r_et") >= F.col("l_et") + interval_us(lo_us)) & (F.col("r_et") <= F.col("l_et") + interval_us(hi_us))


def opaque(cond):
    """A join condition Spark must not read as a range (it can only solve ranges over the event-time
    columns; on others Spark 4.3 fails at run time): evaluated as a filter on each candidate pair."""
    return F.coalesce(cond, F.lit(False))


def spark_join(left, right, cond, kind):
    l = prefixed(left, "l")
    r = prefixed(right, "r")
    return l.join(r, (F.col("l_key") == F.col("r_key")) & cond, "leftOuter" if kind == "left_outer" else "inner")


def asof_join(left, right, tolerance_ms, kind):
    """The right event with the greatest ts <= left.ts (ties: the later arrival) within tolerance.
    Spark has no streaming as-of join: a range join gives every candidate, then a streaming
    aggregation per left event keeps the greatest (ts, recv_ms) with max_by."""
    cond = et_between(-tolerance_ms * 1000, 0)
    j = spark_join(left, right, cond, "left_outer")
    lcols = [c for c in j.columns if c.startswith("l_")]
    rstruct = F.struct(*[F.col(c) for c in j.columns if c.startswith("r_")])
    out = j.groupBy(*lcols).agg(F.max_by(rstruct, F.when(F.col("r_key").isNotNull(),
                                                        F.struct("r_ts", "r_recv_ms"))).alias("m"))
    out = out.select(*lcols, "m.*")
    if kind == "inner":
        out = out.where(F.col("r_key").isNotNull())
    return out


# ---- sources and sinks ----

RECORDING = "recv_ms long, topic string, payload string, payload_b64 string, flush boolean"


def read_recording(spark, path, work):
    """The replay format, one file per micro-batch in order, then the flush batch."""
    stage = os.path.join(work, "input")
    os.makedirs(stage, exist_ok=True)
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    files = [f for f in files if os.path.isfile(f) and not os.path.basename(f).startswith((".", "_"))]
    newest = 0
    for i, f in enumerate(files):
        dst = os.path.join(stage, "%06d-%s" % (i, os.path.basename(f)))
        if not os.path.exists(dst):
            os.symlink(os.path.abspath(f), dst)
        newest = max(newest, os.stat(f).st_mtime)
    # one flush micro-batch per stateful operator on the longest path: each passes what the
    # previous one released on to the next (Spark runs no batch after the last file)
    for i in range(FLUSH_BATCHES):
        flush = os.path.join(stage, "999999-flush-%d.jsonl" % i)
        with open(flush, "w") as out:
            out.write(json.dumps({"recv_ms": FLUSH_TS + i, "topic": "", "payload": "", "flush": True}) + "\n")
        os.utime(flush, (newest + 10 + i, newest + 10 + i))
    raw = spark.readStream.schema(RECORDING).option("maxFilesPerTrigger", 1).json(stage)
    # binary payloads (payload_b64) are not decoded here: their streams use formats the export refuses
    return raw.select("recv_ms", "topic", "payload", F.coalesce("flush", F.lit(False)).alias("flush"),
                      F.lit(None).cast("string").alias("source"),
                      F.from_json("payload", "map<string,string>").alias("fields"))


def read_kafka(spark, args):
    """One Kafka topic per stream; a record's key is its MQTT topic, its timestamp the receive time."""
    raw = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", args.kafka_bootstrap)
           .option("subscribe", ",".join(sorted(set(STREAM_SOURCES.values()))))
           .option("startingOffsets", args.starting_offsets).load())
    return raw.select(F.unix_millis("timestamp").alias("recv_ms"), F.col("key").cast("string").alias("topic"),
                      F.col("value").cast("string").alias("payload"), F.lit(False).alias("flush"),
                      F.col("topic").alias("source"),
                      F.from_json(F.col("value").cast("string"), "map<string,string>").alias("fields"))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="a recording in the replay format (a file, or a directory of them)")
    p.add_argument("--output", help="directory: result rows as JSON lines, one subdirectory per output")
    p.add_argument("--kafka-bootstrap", metavar="HOST:PORT", help="read the streams from Kafka")
    p.add_argument("--topic", action="append", default=[], metavar="STREAM=KAFKA_TOPIC",
                   help="the Kafka topic of a stream (one per stream)")
    p.add_argument("--output-topic", metavar="T", help="write result rows to this Kafka topic (key: the MQTT topic)")
    p.add_argument("--starting-offsets", default="earliest", help="Kafka startingOffsets (default earliest)")
    p.add_argument("--checkpoint", help="checkpoint directory (default: a new temporary directory)")
    p.add_argument("--max-session", default=MAX_SESSION_MS, type=int, metavar="MS",
                   help="session joins: longest session, in ms, that still finds its partner (default %(default)s)")
    p.add_argument("--master", default=None, help="Spark master when run with python3 (default local[*])")
    a = p.parse_args(argv)
    if (a.input is None) == (a.kafka_bootstrap is None):
        p.error("give either --input FILE or --kafka-bootstrap HOST:PORT")
    if (a.output is None) == (a.output_topic is None):
        p.error("give either --output DIR or --output-topic T")
    if a.kafka_bootstrap is not None:
        for t in a.topic:
            stream, sep, kt = t.partition("=")
            if not sep or stream not in STREAMS or not kt:
                p.error("--topic %r: expected STREAM=KAFKA_TOPIC with STREAM one of %s" % (t, ", ".join(STREAMS)))
            STREAM_SOURCES[stream] = kt
        missing = [s for s in STREAMS if s not in STREAM_SOURCES]
        if missing:
            p.error("no --topic for stream(s) %s" % ", ".join(missing))
    return a


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if xxhash is None:
        sys.exit("this job needs the xxhash package (pip install xxhash) on the driver and the executors")
    builder = SparkSession.builder.appName("edgejoin-" + GATEWAY)
    if args.master or "SPARK_HOME" not in os.environ:
        builder = builder.master(args.master or "local[*]")
    spark = (builder.config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.ansi.enabled", "false")
             .config("spark.sql.shuffle.partitions", os.environ.get("EDGEJOIN_SPARK_PARTITIONS", "4"))
             .config("spark.sql.streaming.multipleWatermarkPolicy", "min")
             .getOrCreate())
    spark.sparkContext.setLogLevel(os.environ.get("EDGEJOIN_SPARK_LOG", "WARN"))
    work = args.checkpoint or tempfile.mkdtemp(prefix="edgejoin-spark-")
    raw = read_recording(spark, args.input, work) if args.input else read_kafka(spark, args)
    queries = []
    for name, rows in outputs(raw, args).items():
        ck = os.path.join(work, "checkpoints", name)
        if args.output:
            w = (rows.select("value").writeStream.format("text")
                 .option("path", os.path.join(args.output, name)))
        else:
            w = (rows.select(F.col("topic").alias("key"), "value").writeStream.format("kafka")
                 .option("kafka.bootstrap.servers", args.kafka_bootstrap).option("topic", args.output_topic))
        w = w.option("checkpointLocation", ck).queryName(name).outputMode("append")
        if args.input:
            w = w.trigger(availableNow=True)
        queries.append(w.start())
    for q in queries:
        q.awaitTermination()
    return 0

