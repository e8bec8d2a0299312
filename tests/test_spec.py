"""monitor.yaml parsing: valid specs load; every problem names its field path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monitor.errors import SpecError
from monitor.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]

ISSUE_EXAMPLE = """
apiVersion: monitor/v1
service: demo
models:
  - name: bc
    protocol: v2
    upstream: http://127.0.0.1:8080
    version: "1"
    features:
      - {name: f0, type: numerical, min: 0, max: 10}
      - {name: f1, type: numerical}
      - {name: f2, type: categorical, categories: [a, b]}
      - {name: email, type: categorical, pii: true, required: false}
    capture: {dir: ./capture, sample_rate: 1.0, max_bytes: 1073741824, rotate_seconds: 60}
"""


def base() -> dict:
    return yaml.safe_load(ISSUE_EXAMPLE)


def test_the_example_from_the_issue_loads_with_its_values() -> None:
    spec = parse_spec(base())
    m = spec.model("bc")
    assert [f.name for f in m.features] == ["f0", "f1", "f2", "email"]
    assert (m.features[0].min, m.features[0].max) == (0.0, 10.0)
    assert m.features[2].categories == ["a", "b"]
    assert m.features[3].pii is True and m.features[3].required is False
    assert m.capture is not None and m.capture.max_bytes == 1 << 30
    assert (m.upstream_host, m.upstream_port) == ("127.0.0.1", 8080)


def test_the_shipped_demo_spec_is_valid_and_has_the_30_breast_cancer_features() -> None:
    from monitor.modelserver import breast_cancer_feature_names

    spec = load_spec(ROOT / "deploy" / "monitor.yaml")
    assert [f.name for f in spec.model("bc").features] == breast_cancer_feature_names()


def _mutate(path: list, value: object) -> dict:
    data = base()
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ["models", 0, "features", 2],
            {"name": "f2", "min": 5, "max": 1},
            "models[0].features[2].max: must be > min",
        ),
        (["models", 0, "features", 1, "colour"], 1, "models[0].features[1].colour: unknown field"),
        (["models", 0, "upstream"], "ftp://x", "models[0].upstream: must be an http:// URL"),
        (
            ["models", 0, "capture", "sample_rate"],
            1.5,
            "models[0].capture.sample_rate: Input should be less than or equal to 1",
        ),
        (["models", 0, "protocol"], "grpc", "models[0].protocol: Input should be"),
        (["apiVersion"], "monitor/v2", "apiVersion: Input should be 'monitor/v1'"),
        (["service"], KeyError, "service: required field is missing"),
        (
            ["models", 0, "features", 0, "categories"],
            ["a"],
            "models[0].features[0]: feature 'f0': categories apply to categorical features only",
        ),
        (
            ["models", 0, "latency_buckets"],
            [0.1, 0.05],
            "models[0].latency_buckets: must be strictly increasing",
        ),
        (
            ["models", 0, "features", 1, "name"],
            "f0",
            "models[0].features: feature name 'f0' repeats",
        ),
        (
            ["models", 0, "outputs"],
            [{"name": "label", "type": "categorical"}],
            "models[0].outputs[0]: output 'label': categorical outputs need 'classes'",
        ),
        (["models", 0, "name"], "other", "models: 'other' is reserved"),
        (
            ["models", 0, "features", 1, "name"],
            "timestamp",
            "models[0].features[1].name: 'timestamp' is reserved",
        ),
        (
            ["models", 0, "gpu_metrics"],
            "yes",
            "models[0].gpu_metrics: Input should be a valid boolean",
        ),
        (
            ["models", 0, "features", 0, "required"],
            0,
            "models[0].features[0].required: Input should be a valid boolean",
        ),
        (
            ["models", 0, "probe_interval_seconds"],
            0.001,
            "models[0].probe_interval_seconds: Input should be greater than or equal to 0.1",
        ),
        (
            ["models", 0, "timeouts"],
            {"connect_seconds": float("inf")},
            "models[0].timeouts.connect_seconds: Input should be a finite number",
        ),
        (
            ["models", 0, "timeouts"],
            {"read_seconds": 1e308},
            "models[0].timeouts.read_seconds: Input should be less than or equal to 86400",
        ),
        (
            ["models", 0, "features", 2, "max"],
            float("nan"),
            "models[0].features[2].max: Input should be a finite number",
        ),
        (
            ["models", 0, "upstream"],
            "http://admin:s3cr3t@127.0.0.1:8080",
            "models[0].upstream: must not carry credentials (user:password@): they would be shown",
        ),
        (
            ["models", 0, "upstream"],
            "http://exa mple.com",
            "models[0].upstream: must not contain whitespace",
        ),
        (["models", 0, "upstream"], "http://127.0.0.1:0", "models[0].upstream: bad port: 0"),
        (
            ["models", 0, "upstream"],
            "http://127.0.0.1:8080#frag",
            "models[0].upstream: must be a base URL without path, query or fragment",
        ),
        (
            ["mitigator"],
            {"listen": "nohost"},
            "mitigator.listen: listen address 'nohost': expected HOST:PORT, e.g. 127.0.0.1:8000",
        ),
        (
            ["mitigator"],
            {"listen": "http://127.0.0.1:9500"},
            "mitigator.listen: listen address 'http://127.0.0.1:9500': expected HOST:PORT",
        ),
        (
            ["mitigator"],
            {"listen": "::1:9500"},
            "mitigator.listen: listen address '::1:9500': expected HOST:PORT, e.g. "
            "127.0.0.1:8000 or [::1]:8000",
        ),
        (
            ["mitigator"],
            {"store": "mysql://x"},
            "mitigator.store: 'mysql://x': must be sqlite:///PATH (sqlite:////abs/path for an "
            "absolute one) or postgresql://...",
        ),
    ],
    ids=[
        "A max below min names the max field of that feature.",
        "A misspelt key is rejected as an unknown field, not ignored.",
        "A non-http upstream is rejected with an example of a good one.",
        "A sample rate above 1 is rejected.",
        "An unknown protocol is rejected.",
        "An unknown apiVersion is rejected.",
        "A missing service is reported as missing.",
        "Categories on a numerical feature are rejected.",
        "Decreasing latency buckets are rejected.",
        "A repeated feature name is rejected.",
        "A categorical output without classes is rejected (labels must be bounded).",
        "The reserved model name 'other' is rejected.",
        "A feature named like a capture-store column is rejected.",
        "A quoted 'yes' is not taken for true.",
        "A 0 is not taken for false.",
        "A probe interval of 1 ms is refused (readiness would flap).",
        "An infinite timeout is refused.",
        "A timeout over a day is refused (a typo, not a plan).",
        "A NaN bound is named as not finite (not 'must be > min').",
        "Credentials in the upstream URL are refused (they would leak in /-/ready).",
        "Whitespace in the upstream host is refused.",
        "Upstream port 0 is refused.",
        "A fragment in the upstream is refused.",
        "A mitigator listen address without a port is refused at validate time.",
        "A URL is not a listen address.",
        "An IPv6 listen address needs brackets.",
        "An unknown store scheme is named under mitigator.store.",
    ],
)
def test_each_problem_names_the_field_path(path: list, value: object, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_mutate(path, value))
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


def test_several_problems_are_all_reported_one_per_line() -> None:
    data = _mutate(["models", 0, "upstream"], "nope")
    data["models"][0]["features"][0]["max"] = -1
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert len(err.value.problems) == 2


def test_validate_cli_exits_0_when_valid_and_1_with_one_line_per_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(ISSUE_EXAMPLE)
    ok = subprocess.run(
        [sys.executable, "-m", "monitor", "validate", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(_mutate(["models", 0, "features", 2], {"name": "f2", "min": 5, "max": 1}))
    )
    res = subprocess.run(
        [sys.executable, "-m", "monitor", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert res.stderr.strip() == f"{bad}: models[0].features[2].max: must be > min"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: [", "(yaml): line 1"),
        ("- a\n- b\n", "(root): must be a mapping"),
        ("a:\n  max: 10\n  max: 11\n", "(yaml): line 3, column 3: key 'max' repeats"),
        ("a: " + "[" * 100_000 + "]" * 100_000, "(yaml): nested too deeply"),
        ("a: " + "9" * 5000, "(yaml): Exceeds the limit"),
    ],
    ids=[
        "Broken YAML names the line.",
        "A YAML list instead of a mapping is rejected.",
        "A key repeated in one mapping is an error, not a silent override.",
        "Absurdly deep nesting is an error, not a RecursionError traceback.",
        "An integer of thousands of digits is an error, not a traceback.",
    ],
)
def test_unreadable_files_give_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    p = tmp_path / "m.yaml"
    p.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(p)
    assert err.value.problems[0].startswith(expected)


def test_a_binary_file_is_reported_as_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    p.write_bytes(b"apiVersion: \xff\xfe\x00garbage")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(p)


def test_a_missing_file_is_reported_not_raised_as_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "absent.yaml")


SLO_CASES = [
    (
        {"name": "availability", "model": "bc", "objective": 1.0},
        "slos[0].objective: Input should be less than 1",
    ),
    (
        {"name": "latency", "model": "bc", "objective": 0.99, "threshold_seconds": 0.3},
        "slos[0].threshold_seconds: 0.3 is not a latency bucket of model 'bc'",
    ),
    (
        {"name": "availability", "model": "nope", "objective": 0.99},
        "slos[0].model: no model named 'nope'",
    ),
    (
        {"name": "availability", "model": "bc", "objective": 0.99, "window": "12h"},
        "slos[0].window: must be at least 1d",
    ),
    (
        {"name": "availability", "model": "bc", "objective": 0.99, "window": "30 days"},
        "slos[0].window: '30 days': expected a duration",
    ),
    (
        {
            "name": "availability",
            "model": "bc",
            "objective": 0.99,
            "window": "99999999999999999999d",
        },
        "slos[0].window: must be at most 366d",
    ),
]


@pytest.mark.parametrize(
    ("slo", "expected"),
    SLO_CASES,
    ids=[
        "C22: an objective of 100 % is refused (no error budget to burn).",
        "A latency threshold that is not a bucket boundary is refused with the buckets listed.",
        "An SLO of an unknown model is refused.",
        "A window shorter than the 3-day burn-rate lookback is refused.",
        "A window that is not a duration is refused.",
        "A window of aeons is refused (its PromQL range would be unusable).",
    ],
)
def test_slo_problems_name_the_field(slo: dict, expected: str) -> None:
    data = base()
    data["slos"] = [slo]
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


def test_slos_alerting_and_mitigations_from_the_issues_load() -> None:
    data = base()
    data["slos"] = [
        {"name": "availability", "model": "bc", "objective": 0.999, "window": "30d"},
        {"name": "latency", "model": "bc", "objective": 0.99, "threshold_seconds": 0.25},
    ]
    data["alerting"] = {
        "pager": {"webhook_url": "http://127.0.0.1:9/page"},
        "mitigator_url": "http://127.0.0.1:9/v1/alerts",
    }
    data["models"][0]["control"] = {"token_file": "./control.token"}
    data["mitigations"] = [
        {
            "name": "shift-to-fallback",
            "match": {"alertname": "ErrorBudgetBurn", "severity": "page"},
            "action": {"type": "sidecar", "op": "route", "fallback_weight": 1.0},
            "cooldown_seconds": 600,
            "max_per_hour": 3,
            "revert_on_resolve": True,
            "revert_hold_seconds": 120,
            "dry_run": False,
        }
    ]
    spec = parse_spec(data)
    assert [s.window_seconds for s in spec.slos] == [30 * 86400, 30 * 86400]
    assert spec.mitigations[0].match == {"alertname": "ErrorBudgetBurn", "severity": "page"}


@pytest.mark.parametrize(
    ("alerting", "mitigation_match", "expected"),
    [
        (
            {"pager": {"webhook_url": "not a url"}},
            None,
            "alerting.pager.webhook_url: 'not a url': must be an http:// or https:// URL",
        ),
        (
            {"ticket": {"webhook_url": "ftp://x/y"}},
            None,
            "alerting.ticket.webhook_url: 'ftp://x/y'",
        ),
        ({"mitigator_url": "nope"}, None, "alerting.mitigator_url: 'nope'"),
        (
            {"mitigator_credentials_file": "./t"},
            None,
            "alerting: mitigator_credentials_file needs mitigator_url",
        ),
        (
            {},
            {"bad-label": "x"},
            "mitigations[0].match: 'bad-label' is not a Prometheus label name",
        ),
    ],
    ids=[
        "A webhook URL that is not a URL is refused (amtool would reject the generated file).",
        "An ftp webhook is refused.",
        "A mitigator URL that is not a URL is refused.",
        "A mitigator token file without a mitigator URL is refused, not silently ignored.",
        "A mitigation matcher on an impossible label name is refused.",
    ],
)
def test_alerting_problems_name_the_field(
    alerting: dict, mitigation_match: dict | None, expected: str
) -> None:
    data = base()
    data["alerting"] = alerting
    if mitigation_match is not None:
        data["mitigations"] = [{"name": "p", "match": mitigation_match, "action": {"type": "http"}}]
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            {"action": {"op": "route"}},
            "mitigations[0].action: type: expected one of sidecar, http, command, "
            "got nothing (the key is missing)",
        ),
        (
            {"action": {"type": "sidecar", "op": "drain"}},
            "mitigations[0].action: op: expected one of route, shed, quarantine, restore, "
            "got 'drain'",
        ),
        (
            {"action": {"type": "sidecar", "op": "route", "fallback_weight": 2}},
            "mitigations[0].action: fallback_weight: expected a number in [0, 1]",
        ),
        (
            {"action": {"type": "sidecar", "op": "shed"}},
            "mitigations[0].action: concurrency_limit: expected an integer >= 1",
        ),
        (
            {"action": {"type": "http", "url": "x"}},
            "mitigations[0].action: url: expected an http(s) URL",
        ),
        (
            {"action": {"type": "command", "argv": []}},
            "mitigations[0].action: argv: expected a non-empty list of strings",
        ),
        (
            {"action": {"type": "command", "argv": ["x"], "shell": True}},
            "mitigations[0].action: unknown key(s) shell for a command action",
        ),
        (
            {"action": {"type": "command", "argv": ["x"]}, "revert": {"type": "http"}},
            "mitigations[0].revert: url: expected an http(s) URL",
        ),
        (
            {"action": {"type": "command", "argv": ["x"]}, "revert_on_resolve": True},
            "mitigations[0]: revert_on_resolve: a command action has no automatic inverse; "
            "give a revert",
        ),
        (
            {
                "action": {
                    "type": "http",
                    "url": "http://h/x",
                    "headers": {"Authorization": "Bearer abc\n"},
                }
            },
            "mitigations[0].action: headers.Authorization: the value has a control character "
            "(a newline from a YAML block scalar?); headers are one line",
        ),
        (
            {"action": {"type": "http", "url": "http://h/x", "headers": {"X Y": "1"}}},
            "mitigations[0].action: headers: 'X Y' is not a header name",
        ),
        (
            {"action": {"type": "http", "url": "http://h/x", "method": "FROB"}},
            "mitigations[0].action: method: expected one of GET, POST, PUT, PATCH, DELETE, "
            "got 'FROB'",
        ),
        (
            {"action": {"type": "http", "url": "http://h/x", "body": '{"m": "{{ labels.model "}'}},
            "mitigations[0].action: body: '{{ labels.model \"}' is not a placeholder; use "
            "{{ labels.NAME }}, {{ annotations.NAME }}, {{ fingerprint }}, {{ status }} or "
            "{{ startsAt }}",
        ),
        (
            {"action": {"type": "http", "url": "http://h/x", "timeout_seconds": float("nan")}},
            "mitigations[0].action: timeout_seconds: expected seconds in (0, 86400], got nan",
        ),
        (
            {"action": {"type": "command", "argv": ["x"], "timeout_seconds": True}},
            "mitigations[0].action: timeout_seconds: expected seconds in (0, 86400], got True",
        ),
        (
            {"action": {"type": "http", "url": "http://127.0.0.1:99999/x"}},
            "mitigations[0].action: url: expected an http(s) URL",
        ),
        (
            {"action": {"type": "sidecar", "op": "quarantine", "urls": ["notaurl"]}},
            "mitigations[0].action: urls: expected a list of http:// URLs",
        ),
        (
            {"action": {"type": "http", "url": "http://h/a b"}},
            "mitigations[0].action: url: 'http://h/a b' has whitespace or a control character",
        ),
        (
            {"action": {"type": "http", "url": "http://h/{{ nosuchthing }}"}},
            "mitigations[0].action: url: '{{ nosuchthing }}' is not a placeholder; use "
            "{{ labels.NAME }}, {{ annotations.NAME }}, {{ fingerprint }}, {{ status }} or "
            "{{ startsAt }}",
        ),
    ],
    ids=[
        "An action without a type says the key is missing.",
        "An unknown sidecar op lists the known ones.",
        "A fallback weight above 1 is refused.",
        "A shed without a concurrency limit is refused.",
        "An http action's URL must be http(s).",
        "A command needs a program.",
        "An unknown action key is named (no silent shell=True).",
        "The revert is checked like the action.",
        "revert_on_resolve needs a revert unless the action is a sidecar one.",
        "A header value with a newline is refused (it would split the header).",
        "A header name with a space is refused.",
        "An unknown HTTP method is refused.",
        "An unterminated placeholder is refused (it would be sent literally).",
        "An unknown placeholder is refused.",
        "A NaN action timeout is refused.",
        "A boolean action timeout is refused.",
        "An action URL with a port past 65535 is refused.",
        "A sidecar action's urls items must be http URLs.",
        "Whitespace in an action URL is refused.",
    ],
)
def test_mitigation_actions_are_checked_when_the_spec_loads(policy: dict, expected: str) -> None:
    data = base()
    data["mitigations"] = [{"name": "p", "match": {"alertname": "X"}, **policy}]
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert err.value.problems == [expected]


def test_an_http_action_with_json_and_known_placeholders_is_valid() -> None:
    data = base()
    port = {"type": "http", "url": "http://127.0.0.1:{{ labels.port }}/x"}
    data["mitigations"] = [{"name": "p", "match": {"alertname": "X"}, "action": port}]
    assert parse_spec(data).mitigations[0].action["url"] == port["url"]
    body = '{"a": {"summary": "{{ annotations.summary }}", "at": "{{ startsAt }}"}}'
    action = {"type": "http", "method": "put", "url": "http://h/{{ labels.model }}",
              "headers": {"X-Alert": "{{ fingerprint }}"}, "body": body}  # fmt: skip
    data["mitigations"] = [{"name": "p", "match": {"alertname": "X"}, "action": action}]
    assert parse_spec(data).mitigations[0].action["body"] == action["body"]


def test_a_sidecar_policy_reverts_by_its_inverse_without_a_revert() -> None:
    data = base()
    shed = {"type": "sidecar", "op": "shed", "concurrency_limit": 4}
    data["models"][0]["control"] = {"token_file": "./control.token"}
    data["mitigations"] = [
        {"name": "p", "match": {"alertname": "X"}, "revert_on_resolve": True, "action": shed}
    ]
    assert parse_spec(data).mitigations[0].revert is None


def test_a_sidecar_action_without_any_control_api_is_refused() -> None:
    data = base()
    data["mitigations"] = [{"name": "p", "match": {"alertname": "X"},
                            "action": {"type": "sidecar", "op": "route"}}]  # fmt: skip
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert err.value.problems == [
        "mitigations[0].action: a sidecar action needs the control API of the alert's model: "
        "set models[].control (its token file), or the action can only fail"
    ]
    data["models"][0]["control"] = {"token_env": "T"}
    assert parse_spec(data).mitigations[0].action["op"] == "route"
    data["mitigations"][0]["action"]["model"] = "nope"
    with pytest.raises(SpecError, match="control API of model 'nope'"):
        parse_spec(data)
