"""The credential store: account references to Graph API tokens, encrypted at rest, never on Kafka."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import cast

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr
from sqlalchemy import DateTime, Engine, String, Table, Text, bindparam, func, literal, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from projections.store import upsertable_insert
from publishers.base import AccountCredentials
from publishers.redact import register_secret
from schemas.common import NO_CREDENTIALS, format_timestamp


class _Base(DeclarativeBase):
    pass


class _Account(_Base):
    __tablename__ = "accounts"

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Fernet ciphertext: the database never holds a token in the clear.
    token_ciphertext: Mapped[str] = mapped_column(Text)
    page_id: Mapped[str | None] = mapped_column(String(64))
    ig_user_id: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# How long a token replaced by re-authentication is kept: the longest a Meta user token lives.
RETIRED_TOKEN_LIFE = timedelta(days=60)


class _RetiredToken(_Base):
    """A token an account had before it was re-authenticated: it may still work, so content carrying it is
    refused and logs scrub it, in every process, as for the current ones."""

    __tablename__ = "retired_tokens"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(128))
    token_ciphertext: Mapped[str] = mapped_column(Text)
    retired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _ObtainedToken(_Base):
    """A token the service obtained from Meta itself (a Page token, fetched with the account's user token): never
    stored to publish with, but known to every process, so content carrying it is refused and logs and dead letters
    scrub it alike, whichever process fetched it and whenever."""

    __tablename__ = "obtained_tokens"

    # A keyed digest of the token: the same token obtained again is one row (its ciphertext differs each time).
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128))
    token_ciphertext: Mapped[str] = mapped_column(Text)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UnknownAccount(LookupError):
    pass


class UnreadableToken(UnknownAccount):
    """The account's token was stored under another secret key: it must be stored again."""


class CredentialStore:
    """Tokens per account reference; `set_token` is the re-authentication the product note's example 2 needs."""

    def __init__(self, engine: Engine, secret_key: str) -> None:
        self._engine = engine
        digest = hashlib.sha256(secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))
        self._digest_key = hashlib.sha256(b"obtained-token:" + secret_key.encode()).digest()
        table = cast(Table, _Account.__table__)
        self._get_statement = select(table.c.token_ciphertext, table.c.page_id, table.c.ig_user_id).where(
            table.c.account_id == bindparam("account_id"))
        self._tokens: frozenset[str] = frozenset()
        self._ciphertexts: frozenset[str] | None = None
        self._decrypted: dict[str, str] = {}

    def create_schema(self) -> None:
        _Base.metadata.create_all(self._engine)

    def set_token(self, account_id: str, token: str, page_id: str | None = None, ig_user_id: str | None = None) -> None:
        register_secret(token)
        ciphertext = self._fernet.encrypt(token.encode()).decode()
        now = datetime.now(UTC)
        values = {"account_id": account_id, "token_ciphertext": ciphertext, "page_id": page_id,
                  "ig_user_id": ig_user_id, "updated_at": now}
        table = cast(Table, _Account.__table__)
        insert = upsertable_insert(self._engine.dialect.name, table)
        # One upsert statement, no read first: on SQLite a transaction that reads and then writes fails at
        # once when the projector committed in between; a lone write waits its turn instead.
        statement = insert.values(**values).on_conflict_do_update(
            index_elements=[table.c.account_id],
            set_={
                "token_ciphertext": ciphertext,
                "page_id": func.coalesce(insert.excluded.page_id, table.c.page_id),
                "ig_user_id": func.coalesce(insert.excluded.ig_user_id, table.c.ig_user_id),
                "updated_at": values["updated_at"],
            },
        )
        retired = cast(Table, _RetiredToken.__table__)
        # Kept before it is replaced, in the same transaction. A write first (an INSERT ... SELECT, no read of
        # our own), for the reason above.
        keep_old = retired.insert().from_select(
            ["account_id", "token_ciphertext", "retired_at"],
            select(table.c.account_id, table.c.token_ciphertext, literal(now, DateTime(timezone=True)))
            .where(table.c.account_id == account_id))
        # Meta's user tokens live 60 days at most: one retired before that has expired since.
        expired = retired.delete().where(retired.c.retired_at < now - RETIRED_TOKEN_LIFE)
        with self._engine.begin() as connection:
            connection.execute(keep_old)
            connection.execute(statement)
            connection.execute(expired)

    def remember_obtained(self, account_id: str, token: str) -> None:
        """Keeps a token the service obtained from Meta (a Page token) among those every process knows."""
        register_secret(token)
        digest = hmac.new(self._digest_key, token.encode(), hashlib.sha256).hexdigest()
        now = datetime.now(UTC)
        table = cast(Table, _ObtainedToken.__table__)
        insert = upsertable_insert(self._engine.dialect.name, table)
        statement = insert.values(digest=digest, account_id=account_id, seen_at=now,
                                  token_ciphertext=self._fernet.encrypt(token.encode()).decode(),
                                  ).on_conflict_do_update(index_elements=[table.c.digest], set_={"seen_at": now})
        # A Page token obtained from a user token lives no longer than it: 60 days unseen, it has expired.
        expired = table.delete().where(table.c.seen_at < now - RETIRED_TOKEN_LIFE)
        with self._engine.begin() as connection:
            connection.execute(statement)
            connection.execute(expired)

    def get(self, account_id: str) -> AccountCredentials:
        # One row by its key, read without the ORM's session: the handler reads it for every command.
        with self._engine.connect() as connection:
            row = connection.execute(self._get_statement, {"account_id": account_id}).first()
        if row is None:
            raise UnknownAccount(
                f"{NO_CREDENTIALS} {account_id!r}: set them with `smartretry accounts set-token`")
        ciphertext, page_id, ig_user_id = row
        try:
            token = self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise UnreadableToken(
                f"credentials of account {account_id!r} were stored under another secret key: re-authenticate the "
                "account (`smartretry accounts set-token`)") from None
        register_secret(token)
        return AccountCredentials(account_id=account_id, user_token=SecretStr(token), page_id=page_id,
                                  ig_user_id=ig_user_id)

    def token_updated_at(self, account_id: str) -> datetime | None:
        """When the account's token was last stored; None for an account without one."""
        table = cast(Table, _Account.__table__)
        with self._engine.connect() as connection:
            at = connection.execute(select(table.c.updated_at).where(table.c.account_id == account_id)).scalar()
        # Stored in UTC; SQLite gives it back without its zone.
        return None if at is None else at if at.tzinfo else at.replace(tzinfo=UTC)

    def token_times(self) -> dict[str, datetime]:
        """When each account's token was last stored."""
        table = cast(Table, _Account.__table__)
        with self._engine.connect() as connection:
            rows = connection.execute(select(table.c.account_id, table.c.updated_at)).all()
        return {account: at if at.tzinfo else at.replace(tzinfo=UTC) for account, at in rows}

    def stored_tokens(self) -> frozenset[str]:
        """Every stored token, current or replaced, and those the service obtained from Meta (Page tokens), which this
        secret key can read; also made known to the scrubber.

        What refuses a post's content for carrying a token, in the API and in the handler alike: it is read
        from the store, not from what one process happens to have used, so every process and every restart
        answers the same. The ciphertexts are read each time (one small query); only new ones are decrypted.
        """
        table, retired = cast(Table, _Account.__table__), cast(Table, _RetiredToken.__table__)
        obtained = cast(Table, _ObtainedToken.__table__)
        with self._engine.connect() as connection:
            ciphertexts = frozenset(connection.execute(
                select(table.c.token_ciphertext).union(select(retired.c.token_ciphertext),
                                                       select(obtained.c.token_ciphertext))).scalars())
        if ciphertexts != self._ciphertexts:
            decrypted = {}
            for ciphertext in ciphertexts:
                token = self._decrypted.get(ciphertext)
                if token is None:
                    with contextlib.suppress(InvalidToken):
                        token = self._fernet.decrypt(ciphertext.encode()).decode()
                        register_secret(token)
                if token is not None:
                    decrypted[ciphertext] = token
            self._decrypted, self._ciphertexts = decrypted, ciphertexts
            self._tokens = frozenset(decrypted.values())
        return self._tokens

    def account(self, account_id: str) -> dict[str, str | None] | None:
        """One account as `accounts` lists it (never its token); None for one never connected."""
        table = cast(Table, _Account.__table__)
        with self._engine.connect() as connection:
            row = connection.execute(select(table.c.page_id, table.c.ig_user_id, table.c.updated_at)
                                     .where(table.c.account_id == account_id)).first()
        if row is None:
            return None
        page_id, ig_user_id, at = row
        return {"account": account_id, "page_id": page_id, "ig_user_id": ig_user_id,
                "updated_at": format_timestamp(at if at.tzinfo else at.replace(tzinfo=UTC))}

    def accounts(self) -> list[dict[str, str | None]]:
        """Account references with their page and Instagram ids; never the token."""
        with Session(self._engine) as session:
            rows = session.scalars(select(_Account).order_by(_Account.account_id)).all()
            # Stored in UTC; SQLite gives it back without its zone.
            return [{"account": r.account_id, "page_id": r.page_id, "ig_user_id": r.ig_user_id,
                     "updated_at": format_timestamp(r.updated_at if r.updated_at.tzinfo
                                                   else r.updated_at.replace(tzinfo=UTC))} for r in rows]
