"""A small PromQL/LogQL linter for the deploy files: not a parser, but enough to
catch what a typo does (an unknown metric, label or function, an unbalanced
bracket, a bad range). The known metrics are the ones Strata exports."""

from __future__ import annotations

import re

# name -> (type, labels). Histograms are queried through _bucket/_sum/_count.
_GENAI_MODEL = {"gen_ai_operation_name", "gen_ai_request_model", "gen_ai_response_model"}
_GENAI = _GENAI_MODEL | {"gen_ai_provider_name"}
# `tenant` is there only with observability.metrics.tenant_label.
_DEPLOYMENT = {"alias", "deployment", "provider", "tenant"}
METRICS: dict[str, tuple[str, set[str]]] = {
    "gen_ai_client_operation_duration_seconds": ("histogram", _GENAI | {"status", "error_type"}),
    "gen_ai_client_token_usage": ("histogram", _GENAI | {"gen_ai_token_type"}),
    "strata_tokens_total": ("counter", _DEPLOYMENT | {"gen_ai_token_type"}),
    "gen_ai_server_time_to_first_token_seconds": ("histogram", _GENAI),
    "gen_ai_server_time_per_output_token_seconds": ("histogram", _GENAI),
    "strata_output_tokens_per_second": ("histogram", _GENAI),
    "strata_requests_total": ("counter", _DEPLOYMENT | {"status", "cache"}),
    "strata_cost_usd_total": ("counter", _DEPLOYMENT),
    "strata_cache_saved_usd_total": ("counter", {"alias", "tenant"}),
    "strata_cache_requests_total": ("counter", {"alias", "result"}),
    "strata_limit_rejections_total": ("counter", {"alias", "reason", "tenant"}),
    "strata_retries_total": ("counter", {"alias"}),
    "strata_fallbacks_total": ("counter", {"alias"}),
    "strata_circuit_breaker_state": ("gauge", {"alias", "deployment"}),
    "strata_requests_in_flight": ("gauge", {"endpoint"}),
    "strata_local_queue_depth": ("gauge", {"provider"}),
    "strata_usage_buffer_records": ("gauge", set()),
    "strata_usage_write_failures_total": ("counter", set()),
    "strata_usage_spilled_records_total": ("counter", set()),
    "strata_redis_errors_total": ("counter", {"component"}),
    "strata_db_errors_total": ("counter", {"component"}),
    "up": ("gauge", set()),
}
# Labels every scraped series carries: Prometheus target labels and the static
# `service` label from prometheus/targets/strata.yml.
TARGET_LABELS = {"job", "instance", "service"}


def _series() -> dict[str, tuple[str, set[str]]]:
    """Queryable series name -> (base metric, labels)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for name, (kind, labels) in METRICS.items():
        if kind == "histogram":
            out[f"{name}_bucket"] = (name, labels | {"le"})
            out[f"{name}_sum"] = (name, labels)
            out[f"{name}_count"] = (name, labels)
        else:
            out[name] = (name, labels)
    return out


SERIES = _series()

FUNCTIONS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "group",
    "count_values", "rate", "irate", "increase", "delta", "deriv", "histogram_quantile",
    "abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max", "absent",
    "absent_over_time", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time",
    "count_over_time", "changes", "resets", "label_replace", "vector", "scalar", "time",
    "predict_linear", "sort", "sort_desc",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'^\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*""\s*$')
_RANGE = re.compile(r"\[([^\[\]]*)\]")
_DURATION = r"(\d+(ms|s|m|h|d|w|y))+"
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?")
# Grafana's interval variables stand for a duration.
_GRAFANA_VAR = re.compile(r"\$\{?__\w+\}?")


def balance_problems(text: str) -> list[str]:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in _STRING.sub('""', text):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return [f"unbalanced {ch!r}"]
    return [f"unclosed {stack[-1]!r}"] if stack else []


def promql_problems(expr: str) -> list[str]:
    """What looks wrong in a PromQL expression over Strata's metrics; [] if nothing."""
    problems = balance_problems(expr)
    if problems:
        return problems
    text = _GRAFANA_VAR.sub("5m", _STRING.sub('""', expr))
    if "$" in text:
        return [f"unknown variable in {expr!r}"]
    used: list[str] = []
    labels_seen: set[str] = set()

    def selector(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in FUNCTIONS | KEYWORDS:
            problems.append(f"{name!r} followed by '{{'")
            return " "
        allowed = TARGET_LABELS | (SERIES[name][1] if name in SERIES else set())
        for matcher in filter(str.strip, m.group(2).split(",")):
            mm = _MATCHER.match(matcher)
            if not mm:
                problems.append(f"bad matcher {matcher.strip()!r}")
            elif name in SERIES and mm.group(1) not in allowed:
                problems.append(f"{name} has no label {mm.group(1)!r}")
            elif mm:
                labels_seen.add(mm.group(1))
        return f" {name or ''} "

    text = _SELECTOR.sub(selector, text)
    grouping: set[str] = set()
    for m in _GROUPING.finditer(text):
        grouping |= {label.strip() for label in m.group(2).split(",") if label.strip()}
    text = _GROUPING.sub(" ", text)
    for m in _RANGE.finditer(text):
        if not re.fullmatch(rf"\s*{_DURATION}\s*(:\s*({_DURATION})?\s*)?", m.group(1)):
            problems.append(f"bad range [{m.group(1)}]")
    text = _RANGE.sub(" ", text)
    for m in _IDENT.finditer(text):
        name, call = m.group(1), m.group(2)
        if call:
            if name not in FUNCTIONS:
                problems.append(f"unknown function {name!r}")
        elif name in KEYWORDS:
            continue
        elif name in SERIES:
            used.append(name)
        elif name in METRICS:
            problems.append(f"histogram {name!r} needs _bucket, _sum or _count")
        else:
            problems.append(f"unknown metric {name!r}")
    if not used and not problems:
        problems.append("no metric used")
    known = TARGET_LABELS.union(*(SERIES[n][1] for n in used)) if used else TARGET_LABELS
    for label in sorted((grouping | labels_seen) - known):
        problems.append(f"label {label!r} is on none of {sorted(set(used))}")
    return problems


def metrics_used(expr: str) -> set[str]:
    """Base metric names an expression reads."""
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", _STRING.sub('""', expr))
    return {SERIES[m.group(1)][0] for m in _IDENT.finditer(text) if m.group(1) in SERIES}


def logql_problems(expr: str, stream_labels: set[str]) -> list[str]:
    """A LogQL query's stream selector may only use labels Promtail attaches."""
    problems = balance_problems(expr)
    text = _STRING.sub('""', expr)
    m = re.match(r"\s*\{([^{}]*)\}", text)
    if not m:
        return [*problems, "no stream selector"]
    for matcher in filter(str.strip, m.group(1).split(",")):
        mm = _MATCHER.match(matcher)
        if not mm:
            problems.append(f"bad matcher {matcher.strip()!r}")
        elif mm.group(1) not in stream_labels:
            problems.append(f"no stream label {mm.group(1)!r}")
    return problems
