"""The token resource: creating (shown once) and revoking API tokens (admins), and a token's
own role and scope (any token)."""

from __future__ import annotations

from litestar import delete, get, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from services.api.bodies import PathId, TokenRequest
from services.api.controller import V1Controller
from services.api.dependencies import Injected
from services.api.guards import ADMINS, EVERY_ROLE, requires
from services.api.problems import Problem
from services.api.reads import Reads
from services.api.views import TokenCreated, TokenSelfView
from services.auth.tokens import BOOTSTRAP_ADMIN_ID, InvalidTokenRequest, Principal, TokenStore


class TokenController(V1Controller):
    path = "/tokens"

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a token (shown once)",
        guards=[requires(ADMINS)],
    )
    async def post_token(
        self, tokens: Injected[TokenStore], data: JSONBody[TokenRequest]
    ) -> TokenCreated:
        try:
            token_id, token = tokens.create(data.token_role(), data.scope())
        except InvalidTokenRequest as error:
            raise Problem("invalid-body", str(error)) from None
        scope = data.scope()
        shown = None if scope is None else sorted(set(scope))
        return TokenCreated(token_id, token, data.token_role(), shown)

    @delete(
        "/{token_id:str}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Revoke a token",
        guards=[requires(ADMINS)],
    )
    async def delete_token(self, tokens: Injected[TokenStore], token_id: PathId) -> None:
        if token_id == BOOTSTRAP_ADMIN_ID:
            # Revoking it over the API would lock every admin out until a restart reinstates
            # it; it is replaced by changing LEDGER_ADMIN_TOKEN or the admin-token file.
            raise Problem(
                "token-not-revocable",
                "the bootstrap admin token is LEDGER_ADMIN_TOKEN or the admin-token file:"
                " change it there and restart",
            )
        if not tokens.revoke(token_id):
            raise Problem("not-found", f"no live token {token_id!r}")

    @get(
        "/self",
        summary="The bearer token's own role and scope, and the ledger's now",
        guards=[requires(EVERY_ROLE)],
    )
    async def get_token_self(
        self, reads: Injected[Reads], principal: Injected[Principal]
    ) -> TokenSelfView:
        scope = None if principal.subscription_ids is None else sorted(principal.subscription_ids)
        return TokenSelfView(principal.token_id, principal.role, scope, reads.now())
