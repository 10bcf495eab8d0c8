#!/usr/bin/env python3
"""The assertions of deploy/live-test.sh, against a Prometheus that scrapes a real ferroserve.

  live_check.py data --prom URL [--allow-missing FAMILY,...]
      Every recording rule of deploy/prometheus/*.yml (each rule, selected by its name and labels) and every
      Grafana panel query returns at least one series. A rule or query that reads a metric family named in
      --allow-missing (or reads a rule that does) is reported and skipped instead: for a server that predates
      the family.
  live_check.py p99 --prom URL --report RUN.json --window SECONDS
      Prometheus' p99 of ferroserve_request_latency_seconds over the run agrees with ferroserve-loadtest's
      within one bucket: the buckets holding the two are the same or neighbours.
"""

import argparse
import json
import math
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check import panel_queries, series_names  # noqa: E402

DEPLOY = Path(__file__).resolve().parent


def query(prom, expr):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.load(answer)
    if body["status"] != "success":
        raise SystemExit(f"query refused: {expr}: {body}")
    return [(series["metric"], float(series["value"][1])) for series in body["data"]["result"]]


def rules():
    """(file, name, labels, expr) of every recording rule."""
    for path in sorted((DEPLOY / "prometheus").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    yield path.name, rule["record"], rule.get("labels", {}), rule["expr"]


def selector(name, labels):
    matchers = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{matchers}}}" if matchers else name


def data(args):
    missing = {m for m in args.allow_missing.split(",") if m}
    all_rules = list(rules())
    # A rule reads a missing family directly, or through a rule of the same SLO (slo_id) that does.
    tainted_ids = {labels.get("slo_id") for _, _, labels, expr in all_rules if series_names(expr) & missing} - {None}

    def tainted(labels, expr):
        return bool(series_names(expr) & missing) or labels.get("slo_id") in tainted_ids

    tainted_records = {name for _, name, labels, expr in all_rules if tainted(labels, expr)}
    failures, skipped, count = [], [], 0

    def check(what, expr, allowed):
        nonlocal count
        count += 1
        result = query(args.prom, expr)
        if result:
            nan = [metric for metric, value in result if math.isnan(value)]
            note = f" ({len(nan)} of {len(result)} NaN)" if nan else ""
            print(f"  ok    {what}: {len(result)} series{note}")
        elif allowed:
            skipped.append(what)
            print(f"  SKIP  {what}: no data; it reads a family the server lacks ({', '.join(sorted(missing))})")
        else:
            failures.append(what)
            print(f"  FAIL  {what}: no data from {expr}")

    print("recording rules:")
    for file, name, labels, expr in all_rules:
        check(f"{file} {selector(name, labels)}", selector(name, labels), tainted(labels, expr))
    print("dashboard panels:")
    dashboard = json.loads((DEPLOY / "grafana/ferroserve-dashboard.json").read_text())
    for title, expr in panel_queries(dashboard):
        check(f"panel {title!r}", expr, bool(series_names(expr) & (missing | tainted_records)))
    print("autoscaling queries (as prometheus-adapter and KEDA send them for namespace live-test):")
    for what, expr in autoscaling_queries("live-test"):
        check(what, expr, False)
    print(f"{count} queries: {count - len(failures) - len(skipped)} with data, {len(skipped)} skipped, "
          f"{len(failures)} without data")
    return 1 if failures else 0


def autoscaling_queries(namespace):
    """prometheus-adapter's metricsQuery, templated as the adapter does for the pods of `namespace`, and the KEDA
    trigger's query with its namespace replaced (live-test.sh names its pod ferroserve-0, as a Deployment's pod
    name starts)."""
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter/values.yaml").read_text())
    for rule in adapter["rules"]["custom"]:
        for series in series_names(rule["seriesQuery"]):
            expr = (rule["metricsQuery"].replace("<<.Series>>", series)
                    .replace("<<.LabelMatchers>>", f'namespace="{namespace}",pod=~".+"')
                    .replace("<<.GroupBy>>", "pod"))
            yield f"prometheus-adapter {rule['name']['as']}", expr
    scaled = yaml.safe_load((DEPLOY / "kubernetes/overlays/keda/scaledobject.yaml").read_text())
    for trigger in scaled["spec"]["triggers"]:
        query = re.sub(r'namespace="[^"]*"', f'namespace="{namespace}"', trigger["metadata"]["query"])
        yield "KEDA trigger", query


def bucket_index(value, bounds):
    return next((i for i, bound in enumerate(bounds) if value <= bound), len(bounds))


def p99(args):
    report = json.loads(Path(args.report).read_text())
    window = f"{args.window}s"
    expr = ("histogram_quantile(0.99, sum by (le) (increase("
            f'ferroserve_request_latency_seconds_bucket{{model_name="signnet"}}[{window}])))')
    result = query(args.prom, expr)
    if len(result) != 1 or math.isnan(result[0][1]):
        print(f"FAIL no p99 from Prometheus: {expr} -> {result}")
        return 1
    server = result[0][1]
    bounds = sorted({float(m["le"]) for m, _ in query(args.prom, "ferroserve_request_latency_seconds_bucket")})
    generator = report["latency"]["p99_ms"] / 1000
    service = report["service_time"]["p99_ms"] / 1000
    apart = abs(bucket_index(server, bounds) - bucket_index(generator, bounds))
    print(f"p99: Prometheus {server * 1000:.3f} ms (histogram_quantile over {window}), ferroserve-loadtest "
          f"{generator * 1000:.3f} ms from the scheduled send ({service * 1000:.3f} ms from the actual send), "
          f"{report['requests']} requests; buckets {apart} apart")
    if apart > 1:
        print("FAIL the two p99s are more than one bucket apart")
        return 1
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data")
    d.add_argument("--prom", required=True)
    d.add_argument("--allow-missing", default="")
    p = sub.add_parser("p99")
    p.add_argument("--prom", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--window", type=int, required=True)
    args = parser.parse_args()
    sys.exit(data(args) if args.command == "data" else p99(args))


if __name__ == "__main__":
    main()
