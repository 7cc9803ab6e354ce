"""Webhook signatures verify with the Standard Webhooks reference package and the official
openai SDK, under either of two secrets when both sign; event bodies and the endpoint API's
answers parse into the SDK's types field for field; event types the SDK knows but this
deployment never sends are refused by name; URLs that reach the deployment's own network are
refused unless allowed; the retry schedule spans a day."""

from __future__ import annotations

import base64
import time
import typing
from datetime import timedelta

import openai
import pytest
import standardwebhooks
from openai.types import webhooks as sdk
from openai.types.webhooks import (
    BatchCancelledWebhookEvent,
    BatchCompletedWebhookEvent,
    BatchExpiredWebhookEvent,
    BatchFailedWebhookEvent,
)
from openai.types.webhooks.webhook_create_params import WebhookCreateParams
from openai.types.webhooks.webhook_test_params import WebhookTestParams
from pydantic import BaseModel, ValidationError

from inferbatch.config import Settings
from inferbatch.errors import InvalidRequest, from_validation
from inferbatch.protocol.openai import ListPage
from inferbatch.protocol.webhooks import (
    BATCH_EVENTS,
    EVENT_TYPES,
    DeletedWebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointObject,
    WebhookEndpointTest,
    WebhookEndpointTestResult,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
    WebhookEventTypeList,
    event_body,
)
from inferbatch.scheduler.deliver import RETRY_SCHEDULE, next_delay
from inferbatch.services.webhook_send import (
    literal_address,
    new_secret,
    refused_address,
    sign,
    signed_headers,
)
from inferbatch.services.webhooks import check_url

pytestmark = pytest.mark.unit

STRICT = Settings()
ALLOW = Settings(webhook_allow_private=True)


def _event(kind: str = "batch.completed") -> str:
    return event_body("evt_abc123", kind, int(time.time()), "batch_xyz")  # type: ignore[arg-type]


def test_a_new_secret_is_whsec_and_base64_of_at_least_24_random_bytes() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24
    assert new_secret() != secret


def test_the_signature_verifies_with_the_standard_webhooks_package() -> None:
    secret = new_secret()
    body = _event()
    headers = signed_headers([secret], "evt_abc123", int(time.time()), body)
    assert headers["webhook-signature"].startswith("v1,")
    payload = standardwebhooks.Webhook(secret).verify(body, headers)
    assert payload["data"] == {"id": "batch_xyz"}


def test_a_signature_made_with_another_secret_or_body_does_not_verify() -> None:
    secret = new_secret()
    body = _event()
    stamp = int(time.time())
    verifier = standardwebhooks.Webhook(secret)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verifier.verify(body, signed_headers([new_secret()], "evt_abc123", stamp, body))
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verifier.verify(
            body.replace("xyz", "xyw"), signed_headers([secret], "evt_abc123", stamp, body)
        )


def test_the_openai_sdk_verifies_and_unwraps_each_batch_event() -> None:
    secret = new_secret()
    client = openai.OpenAI(api_key="unused", webhook_secret=secret)
    expected = {
        "batch.completed": BatchCompletedWebhookEvent,
        "batch.failed": BatchFailedWebhookEvent,
        "batch.expired": BatchExpiredWebhookEvent,
        "batch.cancelled": BatchCancelledWebhookEvent,
    }
    assert set(expected) == set(BATCH_EVENTS.values())
    for kind, cls in expected.items():
        body = _event(kind)
        headers = signed_headers([secret], "evt_abc123", int(time.time()), body)
        client.webhooks.verify_signature(body, headers)
        event = client.webhooks.unwrap(body, headers)
        assert isinstance(event, cls)
        assert (event.id, event.type, event.object, event.data.id) == (
            "evt_abc123",
            kind,
            "event",
            "batch_xyz",
        )


def test_the_openai_sdk_rejects_a_tampered_body() -> None:
    secret = new_secret()
    client = openai.OpenAI(api_key="unused", webhook_secret=secret)
    body = _event()
    headers = signed_headers([secret], "evt_abc123", int(time.time()), body)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body.replace("batch_xyz", "batch_other"), headers)


def test_the_signature_is_hmac_sha256_over_id_timestamp_and_body() -> None:
    key = bytes(range(24))
    secret = "whsec_" + base64.b64encode(key).decode()
    # a value computed by hand with the reference formula
    import hashlib
    import hmac

    want = base64.b64encode(hmac.new(key, b"msg_1.1700000000.{}", hashlib.sha256).digest())
    assert sign(secret, "msg_1", 1700000000, "{}") == "v1," + want.decode()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "https://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9000/hook",
        "http://localhost:8000/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://192.168.1.10/hook",
        "http://100.64.0.1/hook",
        "http://224.0.0.1/hook",
    ],
)
async def test_urls_that_reach_private_addresses_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await check_url(url, STRICT, "url")
    assert caught.value.param == "url"
    assert "public addresses only" in caught.value.message


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/hook", "http://localhost/hook", "https://10.0.0.5/x", "http://[::1]/"],
)
async def test_private_addresses_are_accepted_when_the_deployment_allows_them(url: str) -> None:
    assert await check_url(url, ALLOW, "callback_url") == url


async def test_a_public_address_is_accepted() -> None:
    url = "https://93.184.216.34/hooks/batches?x=1"
    assert await check_url(url, STRICT, "url") == url


@pytest.mark.parametrize(
    "url",
    [None, 42, "", "ftp://example.com/x", "example.com/hook", "https:///nohost", "http://h:99999/"],
)
async def test_malformed_urls_are_refused_with_the_param_named(url: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await check_url(url, ALLOW, "callback_url")
    assert caught.value.param == "callback_url"


async def test_a_host_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        await check_url("https://no-such-host.invalid/hook", STRICT, "url")
    assert "does not resolve" in caught.value.message


def test_embedded_ipv4_addresses_are_judged_too() -> None:
    for text in ("::ffff:10.0.0.1", "2002:7f00:1::1", "::1", "fe80::1", "fc00::1"):
        address = literal_address(text)
        assert address is not None and refused_address(address) is not None, text
    for text in ("93.184.216.34", "2606:4700:4700::1111"):
        address = literal_address(text)
        assert address is not None and refused_address(address) is None, text


def test_the_retry_schedule_spans_more_than_a_day_then_gives_up() -> None:
    delays = [next_delay(n) for n in range(1, len(RETRY_SCHEDULE) + 1)]
    assert delays[0] == timedelta(seconds=5)
    assert all(d is not None for d in delays)
    assert sum((d for d in delays if d is not None), timedelta()) >= timedelta(hours=24)
    assert next_delay(len(RETRY_SCHEDULE) + 1) is None


def test_two_signing_secrets_put_two_signatures_and_either_verifies() -> None:
    old, new, other = new_secret(), new_secret(), new_secret()
    body = _event()
    headers = signed_headers([new, old], "evt_abc123", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    client = openai.OpenAI(api_key="unused")
    for secret in (old, new):
        client.webhooks.verify_signature(body, headers, secret=secret)
        assert standardwebhooks.Webhook(secret).verify(body, headers)["data"] == {"id": "batch_xyz"}
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body, headers, secret=other)
    with pytest.raises(ValueError):
        signed_headers([], "evt_abc123", 1, body)
    with pytest.raises(ValueError):
        signed_headers(new, "evt_abc123", 1, body)  # a str is not a list of secrets


def _literals(hint: object) -> set[str]:
    """Every string literal inside a type hint (through Required, List, Literal)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return {a for a in args if isinstance(a, str)}
    return set().union(*(_literals(a) for a in args)) if args else set()


def test_the_event_types_are_the_sdks_batch_events() -> None:
    for params in (WebhookCreateParams, WebhookTestParams):
        hints = typing.get_type_hints(params, include_extras=True)
        sdk_types = _literals(
            hints["event_types" if params is WebhookCreateParams else "event_type"]
        )
        assert len(sdk_types) > len(EVENT_TYPES)
        assert set(EVENT_TYPES) == {t for t in sdk_types if t.startswith("batch.")}


@pytest.mark.parametrize("kind", ["response.completed", "eval.run.failed", "batch.started"])
def test_an_event_type_never_sent_is_refused_naming_the_field_and_the_supported_ones(
    kind: str,
) -> None:
    cases: list[tuple[type[BaseModel], dict[str, object], str]] = [
        (
            WebhookEndpointCreate,
            {"name": "n", "url": "https://example.com", "event_types": ["batch.failed", kind]},
            "event_types",
        ),
        (WebhookEndpointUpdate, {"event_types": [kind]}, "event_types"),
        (WebhookEndpointTest, {"event_type": kind}, "event_type"),
    ]
    for model, body, param in cases:
        with pytest.raises(ValidationError) as caught:
            model.model_validate(body)
        error = from_validation(caught.value.errors())
        assert error.param == param
        assert kind in error.message and ", ".join(EVENT_TYPES) in error.message


def _same_fields(ours: type[BaseModel], theirs: type[BaseModel]) -> None:
    assert set(ours.model_fields) == set(theirs.model_fields), (ours, theirs)


def test_the_endpoint_api_answers_parse_into_the_sdks_types_field_for_field() -> None:
    endpoint = WebhookEndpointObject(
        id="whe_1",
        name="n",
        url="https://example.com/h",
        event_types=["batch.completed"],
        signing_secret_hint="whsec_...abcd",
        created_at=1,
        updated_at=2,
    )
    pairs: list[tuple[BaseModel, type[BaseModel]]] = [
        (endpoint, sdk.WebhookEndpoint),
        (
            WebhookEndpointWithSecret(**endpoint.model_dump(), signing_secret=new_secret()),
            sdk.WebhookEndpointWithSecret,
        ),
        (DeletedWebhookEndpoint(id="whe_1", deleted=True), sdk.DeletedWebhookEndpoint),
        (
            WebhookEndpointTestResult(
                webhook_endpoint_id="whe_1", event_type="batch.failed", status_code=204
            ),
            sdk.WebhookEndpointTestResult,
        ),
        (WebhookEventTypeList(data=list(EVENT_TYPES)), sdk.WebhookEventTypeList),
        (
            ListPage[WebhookEndpointObject](
                data=[endpoint], first_id="whe_1", last_id="whe_1", has_more=False
            ),
            sdk.WebhookEndpointList,
        ),
    ]
    for ours, theirs in pairs:
        _same_fields(type(ours), theirs)
        parsed = theirs.model_validate_json(ours.model_dump_json())
        assert parsed.model_dump() == ours.model_dump()
