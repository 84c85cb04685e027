"""Parses OpenMetrics text on stdin with Prometheus' own Python parser
(prometheus_client.openmetrics.parser, which is strict: a malformed line,
a missing `# EOF`, a counter sample without `_total` all raise) and prints
the samples as one JSON list: [{family, type, name, labels, value}]."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
json.dump(out, sys.stdout)
