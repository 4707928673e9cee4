"""Reads a Prometheus text-format page on standard input with prometheus_client's parser (what
Prometheus' own Python client reads scrapes with) and prints one JSON object: each family's type,
and every sample as [name, labels, value]. A page the parser refuses fails with its error."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = {}
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = family.type
    for sample in family.samples:
        samples.append([sample.name, sample.labels, sample.value])
json.dump({"families": families, "samples": samples}, sys.stdout)
