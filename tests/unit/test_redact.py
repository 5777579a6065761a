"""A stored token written URL-encoded (in a query string, or an error quoting one) is scrubbed and refused too."""

from __future__ import annotations

import html
import json
import re
from collections import OrderedDict
from urllib.parse import quote, quote_plus

import pytest

from projections.imported import without_secrets
from publishers import redact
from publishers.redact import REDACTED, register_secret, scrub, scrub_shapes, secret_value
from schemas.commands import PostContent
from schemas.events import LegacyInsightsImported
from tests.unit.test_fold import T0

# Not Meta's shape: only the stored token itself says it is one.
TOKEN = "Zx9)q%2F+/=abcDEF_ghij-KLMN0123"


def test_a_url_encoded_stored_token_is_scrubbed_from_what_the_service_writes() -> None:
    register_secret(TOKEN)
    javascript = quote(TOKEN, safe="!'()*~")  # encodeURIComponent
    lower = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(TOKEN, safe=""))
    twice = quote(quote(TOKEN, safe=""), safe="")
    for written in (quote(TOKEN, safe=""), quote(TOKEN), quote_plus(TOKEN), javascript, lower, twice):
        assert written != TOKEN
        cleaned = scrub(f"Error validating access token {written}: Session has expired")
        assert cleaned == f"Error validating access token {REDACTED}: Session has expired"
        assert "abcDEF" not in scrub(f"https://graph.facebook.com/v24.0/me?access_token={written}&fields=id")


def test_a_stored_token_quoted_by_json_or_html_is_scrubbed() -> None:
    # An error body that echoes the request writes `"`, `\`, `<`, `&` and characters past ASCII otherwise.
    token = 'Qk7"w\\e<r>&t\'y-é-0123456789'
    register_secret(token)
    for written in (json.dumps(token)[1:-1], json.dumps(token, ensure_ascii=False)[1:-1], html.escape(token),
                    html.escape(token, quote=False)):
        assert written != token
        assert scrub(f'{{"error": {{"message": "Invalid token {written}"}}}}') == \
            f'{{"error": {{"message": "Invalid token {REDACTED}"}}}}'


def test_an_access_token_parameter_is_scrubbed_through_its_escapes_up_to_the_next_separator() -> None:
    # Any token, stored or not: its value in a query string runs on through %2F, %3D and the like.
    assert scrub_shapes("me?access_token=abc%29def%2Fghi%3D&fields=id") == f"me?access_token={REDACTED}&fields=id"
    # An encoded query's own separator (%26, "&") still ends it.
    encoded = "next=/me%3Faccess_token%3Dxyz%26after%3D1"
    assert scrub_shapes(encoded) == f"next=/me%3Faccess_token%3D{REDACTED}%26after%3D1"
    # A message quoting the address in brackets keeps its closing bracket; one inside the value is the value's.
    assert scrub_shapes("Cannot parse access token (url: /photos?access_token=abc123).") == \
        f"Cannot parse access token (url: /photos?access_token={REDACTED})."
    # Only a bracket and stops are given back: never part of a token holding a ")".
    assert scrub_shapes("(access_token=abc)def ok)") == f"(access_token={REDACTED} ok)"
    # With no bracket open before it, a ")" is the value's, taken out with the rest of it.
    assert scrub_shapes("access_token=ab).cd and on") == f"access_token={REDACTED} and on"
    assert scrub_shapes("see access_token=ab)!x") == f"see access_token={REDACTED}"


def test_content_carrying_a_stored_token_url_encoded_is_refused_and_an_import_loses_it() -> None:
    address = f"https://example.com/x.jpg?access_token={quote(TOKEN, safe='')}"
    assert secret_value({"image_url": address}, [TOKEN]) == "image_url"
    assert secret_value({"caption": f"see {quote_plus(TOKEN)}"}, [TOKEN]) == "caption"
    imported = LegacyInsightsImported(
        event_id="e1", post_id="p1", occurred_at=T0, publish_target="facebook",
        document={"status": "failed", "error_message": f"facebook: token {quote(TOKEN)} expired"},
        content=PostContent(caption="Sale", image_url=address))
    cleaned = without_secrets(imported, [TOKEN])
    assert isinstance(cleaned, LegacyInsightsImported) and cleaned.content is not None
    assert quote(TOKEN) not in str(cleaned.document) and quote(TOKEN, safe="") not in str(cleaned.content)


def test_a_token_spelled_with_more_escapes_than_it_needs_is_scrubbed_refused_and_taken_out_of_imports() -> None:
    stored = "usertok-ZEBRA-1111-secret-user-credential"
    register_secret(stored)
    meta = "EAAGm0dEl" * 6
    # Characters that need no escape, escaped all the same, in either case of the hex digits.
    spelled = ["usertok%2DZEBRA%2D1111%2Dsecret%2Duser%2Dcredential", "%75sertok-ZEBRA-1111-secret-user-credential",
               "usertok%2dZEBRA-1111-secret-user-credential", "usertok%252DZEBRA-1111-secret-user-credential"]
    for written in [*spelled, meta.replace("G", "%47")]:
        assert scrub(f"400 - Invalid parameter: enc={written} page") == f"400 - Invalid parameter: enc={REDACTED} page"
        address = f"https://cdn.example.com/a.jpg?t={written}"
        assert secret_value({"image_url": address}, [stored]) == "image_url", written
        # Inside an address, encoded once more.
        inside = quote(written, safe="") if "%25" not in written else written
        assert secret_value({"caption": f"see {inside}"}, [stored]) == "caption", written
        # Of Meta's shape, whoever's: the fold takes it out of an imported text, whatever this process has seen.
        assert written not in scrub_shapes(f"token {written} expired") or written in spelled
    for written in spelled:
        imported = LegacyInsightsImported(
            event_id="e1", post_id="p1", occurred_at=T0, publish_target="facebook",
            document={"status": "failed", "error_message": f"facebook: token {written} expired"},
            content=PostContent(caption="Sale", image_url=f"https://cdn.example.com/a.jpg?t={written}"))
        cleaned = without_secrets(imported, [stored])
        assert isinstance(cleaned, LegacyInsightsImported) and cleaned.content is not None
        assert written not in str(cleaned.document) and written not in str(cleaned.content), written
    # Escapes that spell no token stay as they are.
    assert scrub("100% of https://cdn.example.com/a%20b.jpg") == "100% of https://cdn.example.com/a%20b.jpg"


def test_a_secret_in_use_keeps_every_form_while_others_come_and_go(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redact, "_known", OrderedDict())
    monkeypatch.setattr(redact, "KNOWN_SECRETS", 50)
    for n in range(200):
        if n % 10 == 0:
            register_secret(TOKEN)  # used again, as each command's credentials register it
        register_secret(f"another-secret-{n:04d}")
    assert scrub(quote(TOKEN, safe="")) == REDACTED and scrub(TOKEN) == REDACTED
