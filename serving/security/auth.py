"""Access control: who may call which model, from bearer tokens.

A request carries `authorization: Bearer <token>` (gRPC metadata) or the
`Authorization: Bearer <token>` header (REST). A token is either

- listed in `--auth_tokens_file`, one `TOKEN PRINCIPAL [MODEL,...]` per line
  (`#` starts a comment; no model list: every model); tokens are compared in
  constant time against every line, or
- a JWT signed with `--jwt_public_key_file` (RS256 or ES256, by the key's
  type) or `--jwt_secret_file` (HS256), checked by PyJWT: signature, `exp`
  (required), `aud` against `--jwt_audience`; the principal is its `sub`, and
  an optional `models` claim (a list, or a space-separated string) limits it
  to those models.

No credentials, or credentials that do not check out: UNAUTHENTICATED (HTTP
401); so is a JWT whose `sub` is empty or whose `models` is not a list (`null`
included). A principal not allowed for the model: PERMISSION_DENIED (HTTP 403).
Both are `AccessDenied`, which names the principal for the audit log: the one
refused, or the one a JWT claims when it does not check out (never a token).
TensorFlow Serving itself has no access control; this is this server's own.

Credentials that checked out are remembered by their header value (a JWT
until its `exp`), so a caller's next request costs one dictionary lookup
instead of the comparisons or the signature check; credentials that fail are
never remembered and take the full check every time. A lookup's time says
nothing about what is remembered: a dict compares two strings only once their
hashes, keyed by a secret random per process (PYTHONHASHSEED), are equal.
"""

import dataclasses
import hmac
import time
from typing import Dict
from typing import FrozenSet
from typing import List
from typing import Optional
from typing import Tuple

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa

from next_category.serving import status

_BEARER = "bearer "
# Credentials remembered at most; beyond that the memory starts over.
_VERIFIED_CACHE_SIZE = 4096
# Every model (a principal with no model list).
ALL_MODELS = None


@dataclasses.dataclass(frozen=True)
class Principal:
  """An authenticated caller: a name and the models it may use (None: all)."""

  name: str
  models: Optional[FrozenSet[str]] = ALL_MODELS

  def may_use(self, model_name: str) -> bool:
    return self.models is None or model_name in self.models


ANONYMOUS = Principal("")


class AccessDenied(status.ServingError):
  """A refused caller (UNAUTHENTICATED or PERMISSION_DENIED) and who it was, for the audit log.

  Attributes:
    principal: PERMISSION_DENIED: the authenticated principal. UNAUTHENTICATED:
      the name the credentials claim, unchecked: a JWT's `sub` as it reads
      before its signature is checked; '' when they claim none (no
      credentials, a token that matches no line of the tokens file). Never
      the token itself.
    authenticated: whether `principal` checked out.
  """

  def __init__(
    self, code: grpc.StatusCode, message: str, principal: str = "", authenticated: bool = False
  ):
    super().__init__(code, message)
    self.principal = principal
    self.authenticated = authenticated


def unauthenticated(message: str, claimed: str = "") -> AccessDenied:
  return AccessDenied(grpc.StatusCode.UNAUTHENTICATED, message, claimed)


def permission_denied(message: str, principal: str) -> AccessDenied:
  return AccessDenied(grpc.StatusCode.PERMISSION_DENIED, message, principal, authenticated=True)


def _claimed_subject(token: str) -> str:
  """A JWT's `sub` as it reads without any check ('' if it has none that is a string)."""
  try:
    claims = jwt.decode(token, options={"verify_signature": False})
  except Exception:  # Not a JWT at all: it claims nobody.
    return ""
  subject = claims.get("sub") if isinstance(claims, dict) else None
  return subject if isinstance(subject, str) else ""


def _read(path: str, what: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise ValueError(f"Cannot read the {what} {path}: {e.strerror}.") from None


def parse_tokens_file(path: str) -> List[tuple]:
  """`(token bytes, Principal)` for each line of a tokens file.

  Raises:
    ValueError: on a line without a principal, or a token listed twice.
  """
  entries = []
  seen = set()
  text = _read(path, "tokens file").decode("utf-8", errors="replace")
  for number, line in enumerate(text.splitlines(), start=1):
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    parts = line.split()
    if len(parts) < 2:
      raise ValueError(f"{path} line {number}: expected TOKEN PRINCIPAL [MODEL,...].")
    if len(parts) > 3:
      raise ValueError(f"{path} line {number}: separate the models with commas, not spaces.")
    token, name = parts[0], parts[1]
    if token in seen:
      raise ValueError(f"{path} line {number}: this token is already listed.")
    seen.add(token)
    models = frozenset(filter(None, parts[2].split(","))) if len(parts) == 3 else ALL_MODELS
    entries.append((token.encode("utf-8"), Principal(name, models)))
  if not entries:
    raise ValueError(f"The tokens file {path} lists no token.")
  return entries


class Authenticator:
  """Checks a request's credentials and the model it asks for.

  Args:
    tokens_file: a `TOKEN PRINCIPAL [MODEL,...]` file, or empty.
    jwt_public_key_file: a PEM RSA or EC public key for RS256/ES256 JWTs, or empty.
    jwt_secret_file: a file holding the HS256 secret, or empty.
    jwt_audience: the `aud` JWTs must carry; empty: tokens with an `aud` are refused.

  Raises:
    ValueError: if nothing is configured, both JWT keys are, or a file is bad.
  """

  def __init__(
    self,
    tokens_file: str = "",
    jwt_public_key_file: str = "",
    jwt_secret_file: str = "",
    jwt_audience: str = "",
  ):
    if jwt_public_key_file and jwt_secret_file:
      raise ValueError("Set --jwt_public_key_file or --jwt_secret_file, not both.")
    if not (tokens_file or jwt_public_key_file or jwt_secret_file):
      raise ValueError("Access control needs --auth_tokens_file or a JWT key.")
    self._tokens = parse_tokens_file(tokens_file) if tokens_file else []
    # A header value that checked out -> (principal, expiry or None).
    self._verified: Dict[str, Tuple[Principal, Optional[float]]] = {}
    self._jwt_key = None
    self._jwt_algorithms: List[str] = []
    self._audience = jwt_audience or None
    if jwt_public_key_file:
      pem = _read(jwt_public_key_file, "JWT public key file")
      try:
        key = serialization.load_pem_public_key(pem)
      except ValueError:
        raise ValueError(f"{jwt_public_key_file} is not a PEM public key.") from None
      if isinstance(key, rsa.RSAPublicKey):
        self._jwt_algorithms = ["RS256"]
      elif isinstance(key, ec.EllipticCurvePublicKey):
        self._jwt_algorithms = ["ES256"]
      else:
        raise ValueError(f"{jwt_public_key_file}: JWTs are checked with RSA or EC keys only.")
      self._jwt_key = key
    elif jwt_secret_file:
      secret = _read(jwt_secret_file, "JWT secret file").strip()
      if len(secret) < 32:
        raise ValueError(f"The HS256 secret in {jwt_secret_file} must be at least 32 bytes.")
      self._jwt_key = secret
      self._jwt_algorithms = ["HS256"]

  def authenticate(self, authorization: Optional[str]) -> Principal:
    """The principal an `authorization` value stands for.

    Raises:
      ServingError: UNAUTHENTICATED when missing or not valid.
    """
    verified = self._verified.get(authorization)
    if verified is not None and (verified[1] is None or time.time() < verified[1]):
      return verified[0]
    principal, expires = self._check(authorization)
    if len(self._verified) >= _VERIFIED_CACHE_SIZE:
      self._verified.clear()
    self._verified[authorization] = (principal, expires)
    return principal

  def _check(self, authorization: Optional[str]) -> Tuple[Principal, Optional[float]]:
    """The full check: (principal, when the credentials expire or None)."""
    if not authorization:
      raise unauthenticated("Missing credentials: send the header 'authorization: Bearer <token>'.")
    if authorization[: len(_BEARER)].lower() != _BEARER:
      raise unauthenticated("The authorization header must be 'Bearer <token>'.")
    token = authorization[len(_BEARER) :].strip()
    principal = self._static(token.encode("utf-8"))
    if principal is not None:
      return principal, None
    if self._jwt_key is not None and token.count(".") == 2:
      return self._decode_jwt(token)
    raise unauthenticated("The bearer token is not valid.")

  def _static(self, token: bytes) -> Optional[Principal]:
    found = None
    for candidate, principal in self._tokens:
      # Every entry is compared, so the time taken does not say which matched.
      if hmac.compare_digest(candidate, token):
        found = principal
    return found

  def _decode_jwt(self, token: str) -> Tuple[Principal, float]:
    try:
      claims = jwt.decode(
        token,
        self._jwt_key,
        algorithms=self._jwt_algorithms,
        audience=self._audience,
        options={"require": ["exp", "sub"]},
      )
    except jwt.ExpiredSignatureError:
      raise unauthenticated("The JWT has expired.", _claimed_subject(token)) from None
    except jwt.InvalidAudienceError:
      raise unauthenticated(
        "The JWT's audience is not this server's.", _claimed_subject(token)
      ) from None
    except jwt.MissingRequiredClaimError as e:
      raise unauthenticated(
        f"The JWT lacks the {e.claim!r} claim.", _claimed_subject(token)
      ) from None
    except jwt.InvalidTokenError:
      raise unauthenticated(
        "The JWT is not valid (bad signature, algorithm or format).", _claimed_subject(token)
      ) from None
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject.strip():
      raise unauthenticated("The JWT's 'sub' claim must name a principal; it is empty.")
    # A `models` claim that is there limits the principal, whatever its value:
    # `null` is refused, never read as "every model".
    models = claims.get("models", ALL_MODELS)
    if isinstance(models, str):
      models = models.split()
    if "models" in claims and not (
      isinstance(models, list) and all(isinstance(m, str) for m in models)
    ):
      raise unauthenticated(
        "The JWT's 'models' claim must be a list of model names (or leave it out for every model).",
        subject,
      )
    principal = Principal(subject, frozenset(models) if models is not None else ALL_MODELS)
    return principal, float(claims["exp"])

  def authorize(self, authorization: Optional[str], model_name: str) -> Principal:
    """Authenticates, then checks the principal may use `model_name`.

    Raises:
      ServingError: UNAUTHENTICATED or PERMISSION_DENIED.
    """
    principal = self.authenticate(authorization)
    if not principal.may_use(model_name):
      raise permission_denied(
        f"Principal {principal.name!r} may not use model {model_name!r}.", principal.name
      )
    return principal

  def authorize_admin(
    self, authorization: Optional[str], operation: str = "reload the model config"
  ) -> Principal:
    """Server-wide operations (config reload, profiling) need a principal allowed every model."""
    principal = self.authenticate(authorization)
    if principal.models is not ALL_MODELS:
      raise permission_denied(
        f"Principal {principal.name!r} may not {operation}: it is limited to some models.",
        principal.name,
      )
    return principal
