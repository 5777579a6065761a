"""Finding access tokens where none may be: log files, every message of every topic, every database cell."""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import Engine, MetaData, select

from schemas.deadletters import DeadLetter
from tests.integration.test_api import messages_on

# Meta's user, Page and app tokens: "EAA" then letters and digits. The look-behind keeps ULIDs and base64
# (ciphertexts, dead letters' original bytes) from matching by chance in the middle of a word.
META_TOKEN_SHAPE = re.compile(r"(?<![A-Za-z0-9])EAA[A-Za-z0-9]{10,}")


def meta_shaped_token() -> str:
    """A fresh token that looks like Meta's (and so must be scrubbed even when the service never saw it)."""
    alphabet = string.ascii_letters + string.digits
    # Letters of both cases and digits, as Meta's have.
    return "EAAB" + "".join(secrets.choice(alphabet) for _ in range(57)) + "x7"


@dataclass(frozen=True)
class Finding:
    where: str
    what: str

    def __str__(self) -> str:
        # Enough of the secret to tell which one it is, not the whole of it.
        return f"{self.where}: {self.what[:12]}..."


def find_tokens(where: str, text: str, tokens: Iterable[str], *, shapes: bool = True) -> list[Finding]:
    """Every token of `tokens`, and (with `shapes`) every Meta-shaped token, that `text` contains."""
    found = [Finding(where, token) for token in tokens if token and token in text]
    if shapes:
        found += [Finding(where, match.group(0)) for match in META_TOKEN_SHAPE.finditer(text)]
    return found


def topic_texts(bootstrap: str, topic: str) -> Iterator[tuple[str, str]]:
    """(where, text) of every message on `topic`: key and value; a dead letter's original bytes decoded too.

    `where` names the topic, the message's place and its key: `commands#4 [post-1] value`.
    """
    for index, (key, value) in enumerate(messages_on(bootstrap, topic)):
        where = f"{topic}#{index} [{key}]"
        yield f"{where} key", key
        text = value.decode("utf-8", "replace")
        try:
            letter = DeadLetter.model_validate_json(value)
        except ValueError:
            yield f"{where} value", text
            continue
        original = letter.original_value()
        # The base64 itself is scanned decoded: encoded, a token would not show, and random base64 could
        # look like one.
        yield f"{where} dead letter", letter.model_copy(update={"value_b64": None}).model_dump_json()
        if original is not None:
            yield f"{where} dead letter's original bytes", original.decode("utf-8", "replace")


def database_cells(engine: Engine) -> Iterator[tuple[str, str]]:
    """(table.column, text) of every cell of every table in the database, whichever code made the table."""
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for column, value in row._mapping.items():
                    if value is not None:
                        yield f"{table.name}.{column}", str(value)
