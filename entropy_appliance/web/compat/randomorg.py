"""
RANDOM.ORG's JSON-RPC API, release 4, so that clients written for it (its
own ``rdoclient`` among them) only change their endpoint.

``POST /json-rpc/4/invoke`` takes a JSON-RPC 2.0 request, or a batch of
them (the first :data:`MAX_BATCH` are made, any after them answered with
error -32003), and answers the basic methods
(``generateIntegers``, ``generateIntegerSequences``,
``generateDecimalFractions``, ``generateGaussians``, ``generateStrings``,
``generateUUIDs``, ``generateBlobs``, ``getUsage``), the signed ones
(``generateSigned...``, ``verifySignature``) with RANDOM.ORG's parameters
and limits.  ``GET /json-rpc/4/public-key.pem`` publishes the key the
signed methods sign with (see :mod:`~entropy_appliance.web.compat.signing`).

Errors are JSON-RPC 2.0 error objects with RANDOM.ORG's codes (see
:data:`CODES`): -32700 (the body is not JSON) and -32600 (not a request:
no ``jsonrpc: "2.0"``, no string ``method``, ``params`` not structured, an
``id`` missing or not a string, number or null, an empty batch) are
answered with HTTP 400, since no call was made; the errors of a
call (-32601, -32602, 2xx/3xx/4xx) with HTTP 200 like its results, as
RANDOM.ORG answers them.  Every call needs an ``id``: a notification would
throw its random values away.  While the appliance fails closed the whole
answer is error -32001 with HTTP 503 and ``Retry-After``.

``apiKey`` is required, as RANDOM.ORG requires it; any key is accepted, or
only those of ``--api-keys`` (others: error 400).  ``bitsLeft`` and
``requestsLeft`` are the peer's budgets under ``--peer-bandwidth`` and
``--peer-rate`` (:data:`~entropy_appliance.web.compat.keys.UNLIMITED` when
off), and ``advisoryDelay`` is 0 unless the peer has no request left, when
it is the milliseconds until it has one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from klein import Klein
from twisted.web.server import Request

from entropy_appliance.core.peers import peer_key
from entropy_appliance.core.pool import FailClosed
from entropy_appliance.web import openapi, problems
from entropy_appliance.web.compat import distributions as dist
from entropy_appliance.web.compat.host import CompatHost, retry_after_header, write_json
from entropy_appliance.web.compat.keys import ApiKeys, PeerBudget
from entropy_appliance.web.compat.signing import SigningKey

__all__ = ["RandomOrgWeb", "RpcError", "CODES", "MAX_BATCH", "SURFACE", "INVOKE", "PUBLIC_KEY"]

SURFACE = "randomorg"
INVOKE = "/json-rpc/4/invoke"
PUBLIC_KEY = "/json-rpc/4/public-key.pem"

#: The most calls in one batch.
MAX_BATCH = 16

#: Error codes and their meaning: JSON-RPC 2.0's, and RANDOM.ORG's families
#: (2xx a parameter, 3xx parameters together, 4xx the key).
CODES: Mapping[int, str] = {
    -32700: "Parse error",
    -32600: "Invalid Request",
    -32601: "Method not found",
    -32602: "Invalid params",
    -32603: "Internal error",
    -32001: "Service unavailable: the appliance fails closed",
    -32002: "Too many requests",
    -32003: f"Not made: a batch makes at most {MAX_BATCH} calls",
    200: "Parameter is malformed",
    201: "Parameter is not supported by this server",
    202: "Parameter is out of range",
    203: "Parameter array has the wrong length",
    204: "Parameter must be a multiple of 8",
    300: "min is greater than max",
    301: "Too few distinct values for a request without replacement",
    400: "The API key you specified does not exist",
}

class RpcError(Exception):
    """A JSON-RPC error object; ``status`` is the HTTP status it is answered with."""

    def __init__(self, code: int, message: str | None = None, status: int = 200,
                 retry_after: float | None = None) -> None:
        super().__init__(message or CODES[code])
        self.code = code
        self.message = message or CODES[code]
        self.status = status
        self.retry_after = retry_after

    def as_dict(self) -> dict[str, Any]:
        """The error member."""
        return {"code": self.code, "message": self.message, "data": None}


def _invalid_request(message: str = "Invalid Request") -> RpcError:
    return RpcError(-32600, message, status=400)


_MISSING = object()


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


class _Params:
    """The ``params`` of one call, read member by member; unknown members are -32602."""

    def __init__(self, params: Any, allowed: frozenset[str]) -> None:
        if isinstance(params, list):
            raise RpcError(-32602, "Invalid params: give params as an object of named members")
        assert isinstance(params, dict)
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise RpcError(-32602, f"Invalid params: unknown parameter '{unknown[0]}'")
        self._p = params

    def get(self, name: str, default: Any = _MISSING) -> Any:
        value = self._p.get(name, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise RpcError(-32602, f"Invalid params: the parameter '{name}' is required")
            return default
        return value

    def integer(self, name: str, lo: int, hi: int, default: Any = _MISSING) -> int:
        return _check_int(name, self.get(name, default), lo, hi)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if type(value) is not bool:
            raise RpcError(200, f"Parameter '{name}' is malformed: it must be true or false")
        return value

    def number(self, name: str, lo: float, hi: float) -> float:
        value = self.get(name)
        if not _is_number(value):
            raise RpcError(200, f"Parameter '{name}' is malformed: it must be a number")
        if not lo <= value <= hi:
            raise RpcError(202, f"Parameter '{name}' is out of range: allowable values are "
                                f"[{lo:g}, {hi:g}]")
        return float(value)

    def unsupported_null(self, name: str) -> None:
        if self.get(name, None) is not None:
            raise RpcError(201, f"Parameter '{name}' is not supported by this server: omit it or "
                                "give null")


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if not _is_int(value):
        raise RpcError(200, f"Parameter '{name}' is malformed: it must be an integer")
    if not lo <= value <= hi:
        raise RpcError(202, f"Parameter '{name}' is out of range: allowable values are [{lo}, {hi}]")
    return int(value)


def _per_sequence(params: _Params, name: str, n: int, check: Callable[[str, Any], Any],
                  default: Any = _MISSING) -> list[Any]:
    """A parameter of generateIntegerSequences: one value for all, or an array of n."""
    value = params.get(name, default)
    if isinstance(value, list):
        if len(value) != n:
            raise RpcError(203, f"Parameter '{name}' must be an array of length {n} (one per "
                                "sequence)")
        return [check(name, v) for v in value]
    return [check(name, value)] * n


def _in_base(value: int, base: int) -> int | str:
    if base == 10:
        return value
    digits = {2: "b", 8: "o", 16: "x"}[base]
    return format(value, digits)


def _bool(name: str, v: Any) -> bool:
    if type(v) is not bool:
        raise RpcError(200, f"Parameter '{name}' is malformed: it must be true or false")
    return v


def _base(name: str, v: Any) -> int:
    if not _is_int(v) or v not in (2, 8, 10, 16):
        raise RpcError(202, f"Parameter '{name}' is out of range: allowable values are 2, 8, 10, 16")
    return int(v)


# -- limits, as RANDOM.ORG's -----------------------------------------------------------

MAX_N = 10000
INT_BOUND = 10 ** 9
MAX_UUIDS = 1000
MAX_BLOBS = 100
MAX_BLOB_BITS = 1048576
MAX_STRING_LENGTH = 32
MAX_ALPHABET = 128
MAX_DECIMAL_PLACES = 14
GAUSS_BOUND = 10 ** 6
MIN_DIGITS, MAX_DIGITS = 2, 14
MAX_USER_DATA = 1000

_COMMON = frozenset({"apiKey", "pregeneratedRandomization"})
_SIGNED = frozenset({"licenseData", "userData", "ticketId"})


@dataclass
class _Draw:
    """What one generate call made: its data, its parameters to sign, the bytes it drew."""

    data: list[Any]
    echo: dict[str, Any]
    bytes_used: int


class _Counting:
    """``random_bytes`` that counts what it drew."""

    def __init__(self, draw: Callable[[int], bytes]) -> None:
        self._draw = draw
        self.used = 0

    def __call__(self, n: int) -> bytes:
        out = self._draw(n)
        self.used += n
        return out


#: Each basic generate method: the maker's name, and the parameters of its own.
_GENERATORS: dict[str, tuple[str, frozenset[str]]] = {
    "generateIntegers": ("_integers", frozenset({"n", "min", "max", "replacement", "base"})),
    "generateIntegerSequences": ("_sequences",
                                 frozenset({"n", "length", "min", "max", "replacement", "base"})),
    "generateDecimalFractions": ("_decimals", frozenset({"n", "decimalPlaces", "replacement"})),
    "generateGaussians": ("_gaussians",
                          frozenset({"n", "mean", "standardDeviation", "significantDigits"})),
    "generateStrings": ("_strings", frozenset({"n", "length", "characters", "replacement"})),
    "generateUUIDs": ("_uuids", frozenset({"n"})),
    "generateBlobs": ("_blobs", frozenset({"n", "size", "format"})),
}
_SIGNED_NAMES = {f"generateSigned{name.removeprefix('generate')}": name for name in _GENERATORS}


def _completion_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds))


class RandomOrgWeb:
    """RANDOM.ORG's JSON-RPC API over a :class:`CompatHost`; ``app`` is its Klein app."""

    app = Klein()
    problems.install(app)

    def __init__(self, host: CompatHost, keys: ApiKeys | None = None,
                 signing: SigningKey | None = None, budget: PeerBudget | None = None) -> None:
        self.host = host
        self.keys = keys or ApiKeys()
        self._signing = signing
        self.budget = budget or PeerBudget()
        self._started = host.clock.seconds()
        self._serial = 0
        #: Bits and calls served since start, for getUsage.
        self.total_bits = 0
        self.total_requests = 0

    @property
    def signing(self) -> SigningKey:
        """The signing key: the one given, or (tests, embedding) one made in memory on first use."""
        if self._signing is None:
            self._signing = SigningKey.generate()
        return self._signing

    # -- the envelope ----------------------------------------------------------------

    def invoke(self, body: bytes, peer: str) -> tuple[int, Any, float | None]:
        """
        Answer one request body from ``peer``: (HTTP status, JSON value,
        Retry-After seconds or None).
        """
        try:
            message = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return 400, _error_response(None, RpcError(-32700, status=400)), None
        try:
            if isinstance(message, list):
                if not message:
                    raise _invalid_request("Invalid Request: an empty batch")
                made = [self._call(m, peer, batch=True) for m in message[:MAX_BATCH]]
                # The calls past the limit are answered, each with its error: JSON-RPC 2.0
                # answers every member of a batch, and the work stays bounded.
                past = [_error_response(_id_of(m), RpcError(-32003)) for m in message[MAX_BATCH:]]
                return 200, made + past, None
            status, response = 200, self._call(message, peer, batch=False)
            return status, response, None
        except RpcError as e:
            # A whole-request error: a bad envelope, or the appliance failing closed.
            return e.status, _error_response(getattr(e, "request_id", None), e), e.retry_after

    def _call(self, message: Any, peer: str, batch: bool) -> dict[str, Any]:
        request_id = _id_of(message)
        try:
            method, params = _envelope(message)
            return {"jsonrpc": "2.0", "result": self._dispatch(method, params, peer),
                    "id": request_id}
        except RpcError as e:
            if e.status == 400 and not batch:
                e.request_id = request_id  # type: ignore[attr-defined]
                raise
            if e.status == 503:
                e.request_id = request_id  # type: ignore[attr-defined]
                raise
            return _error_response(request_id, e)

    def _dispatch(self, method: str, params: Any, peer: str) -> dict[str, Any]:
        if method in _GENERATORS:
            return self._generate(method, params, peer, signed=False)
        if method in _SIGNED_NAMES:
            return self._generate(method, params, peer, signed=True)
        if method == "getUsage":
            p = _Params(params, frozenset({"apiKey"}))
            self._check_key(p)
            return {"status": "running", "creationTime": _completion_time(self._started),
                    **self._allowance(peer, include_delay=False),
                    "totalBits": self.total_bits, "totalRequests": self.total_requests}
        if method == "verifySignature":
            # No key is needed to check a signature; one that is sent is ignored.
            p = _Params(params, frozenset({"random", "signature", "apiKey"}))
            random, signature = p.get("random"), p.get("signature")
            if not isinstance(random, dict):
                raise RpcError(200, "Parameter 'random' is malformed: it must be the random object "
                                    "of a signed answer")
            if not isinstance(signature, str):
                raise RpcError(200, "Parameter 'signature' is malformed: it must be a base64 string")
            return {"authenticity": self.signing.verify(random, signature)}
        raise RpcError(-32601)

    def _check_key(self, p: _Params) -> str:
        key = p.get("apiKey")
        if not isinstance(key, str):
            raise RpcError(200, "Parameter 'apiKey' is malformed: it must be a string")
        if not self.keys.accepts(key):
            raise RpcError(400)
        return key

    def _allowance(self, peer: str, include_delay: bool = True) -> dict[str, Any]:
        requests_left, wait = self.budget.requests_left(peer)
        out: dict[str, Any] = {"bitsLeft": self.budget.bits_left(peer), "requestsLeft": requests_left}
        if include_delay:
            out["advisoryDelay"] = math.ceil(wait * 1000)
        return out

    # -- the generate methods ------------------------------------------------------------

    def _generate(self, method: str, params: Any, peer: str, signed: bool) -> dict[str, Any]:
        basic = _SIGNED_NAMES.get(method, method)
        name, own = _GENERATORS[basic]
        maker: Callable[[_Params, _Counting], _Draw] = getattr(self, name)
        allowed = _COMMON | (_SIGNED if signed else frozenset()) | own
        p = _Params(params, allowed)
        key = self._check_key(p)
        p.unsupported_null("pregeneratedRandomization")
        user_data = None
        if signed:
            p.unsupported_null("licenseData")
            p.unsupported_null("ticketId")
            user_data = p.get("userData", None)
            if len(json.dumps(user_data)) > MAX_USER_DATA:
                raise RpcError(202, f"Parameter 'userData' is out of range: at most {MAX_USER_DATA} "
                                    "characters of JSON")
        random = _Counting(self._draw)
        made: _Draw = maker(p, random)
        self.total_bits += 8 * random.used
        self.total_requests += 1
        if not signed:
            result: dict[str, Any] = {
                "random": {"data": made.data,
                           "completionTime": _completion_time(self.host.clock.seconds())}}
        else:
            self._serial += 1
            signed_random = {
                "method": method,
                "hashedApiKey": base64.b64encode(hashlib.sha512(key.encode()).digest()).decode(),
                **made.echo,
                "pregeneratedRandomization": None,
                "data": made.data,
                "license": {"type": "entropy-appliance",
                            "text": "Random values from a self-hosted entropy appliance; verify "
                                    f"them with its public key at {PUBLIC_KEY}",
                            "infoUrl": None},
                "licenseData": None,
                "userData": user_data,
                "ticketData": None,
                "completionTime": _completion_time(self.host.clock.seconds()),
                "serialNumber": self._serial,
            }
            result = {"random": signed_random, "signature": self.signing.sign(signed_random),
                      "cost": 0}
        result["bitsUsed"] = 8 * random.used
        result.update(self._allowance(peer))
        return result

    def _draw(self, n: int) -> bytes:
        try:
            return self.host.pool.random_bytes(n, surface=SURFACE)
        except FailClosed as e:
            raise RpcError(-32001, f"Service unavailable: the appliance fails closed ({e.reason}); "
                                   "retry after the number of seconds in Retry-After",
                           status=503, retry_after=e.retry_after) from None

    def _integers(self, p: _Params, random: _Counting) -> _Draw:
        n = p.integer("n", 1, MAX_N)
        lo = p.integer("min", -INT_BOUND, INT_BOUND)
        hi = p.integer("max", -INT_BOUND, INT_BOUND)
        replacement = p.boolean("replacement", True)
        base = _base("base", p.get("base", 10))
        if lo > hi:
            raise RpcError(300, f"Parameter 'min' ({lo}) is greater than parameter 'max' ({hi})")
        if not replacement and n > hi - lo + 1:
            raise RpcError(301, f"You requested {n} values without replacement but the range "
                                f"[{lo}, {hi}] holds only {hi - lo + 1}")
        values = dist.integers(random, n, lo, hi, replacement)
        return _Draw([_in_base(v, base) for v in values],
                     {"n": n, "min": lo, "max": hi, "replacement": replacement, "base": base},
                     random.used)


    def _sequences(self, p: _Params, random: _Counting) -> _Draw:
        n = p.integer("n", 1, MAX_N)
        lengths = _per_sequence(p, "length", n, lambda k, v: _check_int(k, v, 1, MAX_N))
        lows = _per_sequence(p, "min", n, lambda k, v: _check_int(k, v, -INT_BOUND, INT_BOUND))
        highs = _per_sequence(p, "max", n, lambda k, v: _check_int(k, v, -INT_BOUND, INT_BOUND))
        replacements = _per_sequence(p, "replacement", n, _bool, True)
        bases = _per_sequence(p, "base", n, _base, 10)
        if sum(lengths) > MAX_N:
            raise RpcError(202, f"Parameter 'length' is out of range: the sequences may hold at "
                                f"most {MAX_N} values together")
        for lo, hi, length, replacement in zip(lows, highs, lengths, replacements, strict=True):
            if lo > hi:
                raise RpcError(300, f"Parameter 'min' ({lo}) is greater than parameter 'max' ({hi})")
            if not replacement and length > hi - lo + 1:
                raise RpcError(301, f"You requested {length} values without replacement but the "
                                    f"range [{lo}, {hi}] holds only {hi - lo + 1}")
        data = [[_in_base(v, base) for v in dist.integers(random, length, lo, hi, replacement)]
                for length, lo, hi, replacement, base
                in zip(lengths, lows, highs, replacements, bases, strict=True)]

        def echo(name: str, values: list[Any]) -> Any:
            raw = p.get(name, None)
            return values if isinstance(raw, list) else values[0]

        return _Draw(data, {"n": n, "length": echo("length", lengths), "min": echo("min", lows),
                            "max": echo("max", highs),
                            "replacement": echo("replacement", replacements),
                            "base": echo("base", bases)}, random.used)


    def _decimals(self, p: _Params, random: _Counting) -> _Draw:
        n = p.integer("n", 1, MAX_N)
        places = p.integer("decimalPlaces", 1, MAX_DECIMAL_PLACES)
        replacement = p.boolean("replacement", True)
        if not replacement and n > 10 ** places:
            raise RpcError(301, f"You requested {n} values without replacement but there are only "
                                f"{10 ** places} fractions of {places} decimal places")
        data = dist.decimal_fractions(random, n, places, replacement)
        return _Draw(data, {"n": n, "decimalPlaces": places, "replacement": replacement}, random.used)


    def _gaussians(self, p: _Params, random: _Counting) -> _Draw:
        n = p.integer("n", 1, MAX_N)
        mean = p.number("mean", -GAUSS_BOUND, GAUSS_BOUND)
        sd = p.number("standardDeviation", -GAUSS_BOUND, GAUSS_BOUND)
        digits = p.integer("significantDigits", MIN_DIGITS, MAX_DIGITS)
        data = dist.gaussians(random, n, mean, sd, digits)
        return _Draw(data, {"n": n, "mean": p.get("mean"), "standardDeviation": p.get("standardDeviation"),
                            "significantDigits": digits}, random.used)


    def _strings(self, p: _Params, random: _Counting) -> _Draw:
        n = p.integer("n", 1, MAX_N)
        length = p.integer("length", 1, MAX_STRING_LENGTH)
        characters = p.get("characters")
        if not isinstance(characters, str):
            raise RpcError(200, "Parameter 'characters' is malformed: it must be a string")
        if not 1 <= len(characters) <= MAX_ALPHABET:
            raise RpcError(202, f"Parameter 'characters' is out of range: 1 to {MAX_ALPHABET} "
                                "characters")
        replacement = p.boolean("replacement", True)
        alphabet = list(dict.fromkeys(characters))
        if not replacement and n > len(alphabet) ** length:
            raise RpcError(301, f"You requested {n} strings without replacement but only "
                                f"{len(alphabet) ** length} can be made")
        data = dist.strings(random, n, length, alphabet, replacement)
        return _Draw(data, {"n": n, "length": length, "characters": characters,
                            "replacement": replacement}, random.used)


    def _uuids(self, p: _Params, random: _Counting) -> _Draw:
        n = p.integer("n", 1, MAX_UUIDS)
        return _Draw(dist.uuids(random, n), {"n": n}, random.used)


    def _blobs(self, p: _Params, random: _Counting) -> _Draw:
        n = p.integer("n", 1, MAX_BLOBS)
        size = p.integer("size", 1, MAX_BLOB_BITS)
        fmt = p.get("format", "base64")
        if fmt not in ("base64", "hex"):
            raise RpcError(202, "Parameter 'format' is out of range: allowable values are base64, hex")
        if size % 8:
            raise RpcError(204, "Parameter 'size' must be a multiple of 8 (it counts bits)")
        if n * size > MAX_BLOB_BITS:
            raise RpcError(202, f"Parameter 'size' is out of range: the blobs may hold at most "
                                f"{MAX_BLOB_BITS} bits together")
        raw = random(n * size // 8)
        step = size // 8
        blobs = [raw[i:i + step] for i in range(0, len(raw), step)]
        data = [b.hex() if fmt == "hex" else base64.b64encode(b).decode() for b in blobs]
        return _Draw(data, {"n": n, "size": size, "format": fmt}, random.used)


    def too_many(self, request: Request, wait: float) -> bytes:
        """The 429 of a client past ``--peer-rate``: error -32002, ``Retry-After``."""
        error = RpcError(-32002, "Too many requests: this client is past --peer-rate; retry after "
                                 "the number of seconds in Retry-After", status=429)
        return write_json(request, _error_response(None, error), 429,
                          {b"Retry-After": retry_after_header(wait)})

    # -- routes ----------------------------------------------------------------------------

    @app.route(INVOKE, methods=["POST"])
    @openapi.operation(
        "postRandomOrgInvoke", "RANDOM.ORG's JSON-RPC API, release 4 (api.random.org/json-rpc/4/invoke).",
        method="post",
        description=(
            "Drop-in for clients of RANDOM.ORG's release 4: change only the endpoint. A JSON-RPC "
            f"2.0 request, or a batch (of which {MAX_BATCH} calls are made). Errors are JSON-RPC "
            "error objects: "
            "a body that is not JSON (-32700) or not a request (-32600) is answered with 400; "
            "the errors of a call (unknown method -32601, bad params -32602, RANDOM.ORG's codes) "
            "with 200, as RANDOM.ORG does; failing closed with 503 (error -32001)."),
        request_body={"required": True, "content": {"application/json": {"schema": {
            "anyOf": [{"$ref": "#/components/schemas/JsonRpcRequest"},
                      {"type": "array", "minItems": 1,
                       "description": "A batch: each element is answered, one that is not a "
                                      "request object with its own -32600 error (JSON-RPC 2.0); "
                                      f"the first {MAX_BATCH} calls are made, any after them are "
                                      "answered with error -32003."}]}}}},
        ok=openapi.ok("The response, or the batch of responses.", {"application/json": {
            "anyOf": [{"$ref": "#/components/schemas/JsonRpcResponse"},
                      {"type": "array", "minItems": 1,
                       "items": {"$ref": "#/components/schemas/JsonRpcResponse"}}]}},
            openapi.NO_STORE),
        problems={413: "A request body over this server's --max-body (64 KiB by default), "
                       "answered before the body is read."},
        responses={
            "400": {"description": "Not JSON (-32700), or not a JSON-RPC 2.0 request (-32600).",
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/JsonRpcResponse"}}}},
            "429": {"description": "This client is past --peer-rate requests per second: error "
                                   "-32002; retry after Retry-After seconds.",
                    "headers": openapi.RETRY_AFTER,
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/JsonRpcResponse"}}}},
            "503": {"description": "The appliance fails closed: error -32001.",
                    "headers": openapi.RETRY_AFTER,
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/JsonRpcResponse"}}}}})
    def invoke_route(self, request: Request) -> bytes:
        """One JSON-RPC request or batch."""
        assert request.content is not None
        body = request.content.read()
        status, value, retry_after = self.invoke(body, peer_key(request.getClientAddress()))
        headers = {} if retry_after is None else {b"Retry-After": retry_after_header(retry_after)}
        if status == 200:
            self.host.rng_headers(request)
        return write_json(request, value, status, headers)

    @app.route(PUBLIC_KEY, methods=["GET"])
    @openapi.operation(
        "getSigningKey", "The public key of RANDOM.ORG-style signed answers (RSA, PEM).",
        description="Signatures are RSASSA-PKCS1-v1_5 with SHA-512 over the canonical JSON of "
                    "the random object (keys sorted, no white space, ASCII).",
        ok=openapi.ok("The SubjectPublicKeyInfo PEM.", {"application/x-pem-file": {
            "type": "string", "pattern": "^-----BEGIN PUBLIC KEY-----"}}))
    def public_key(self, request: Request) -> bytes:
        """The signing key's public half."""
        request.setHeader(b"Content-Type", b"application/x-pem-file")
        return self.signing.public_pem


def _id_of(message: Any) -> Any:
    """The ``id`` of a request to answer with: its own if it is a valid one, else null."""
    request_id = message.get("id") if isinstance(message, dict) else None
    if type(request_id) is bool or not isinstance(request_id, (str, int, float, type(None))):
        return None
    return request_id


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _envelope(message: Any) -> tuple[str, Any]:
    """The method and params of a JSON-RPC 2.0 request object; -32600 if it is not one."""
    if not isinstance(message, dict):
        raise _invalid_request("Invalid Request: a request is a JSON object")
    if message.get("jsonrpc") != "2.0":
        raise _invalid_request('Invalid Request: "jsonrpc" must be "2.0"')
    method = message.get("method")
    if not isinstance(method, str):
        raise _invalid_request('Invalid Request: "method" must be a string')
    if "id" not in message:
        raise _invalid_request('Invalid Request: every call needs an "id" (a notification would '
                               "throw its random values away)")
    request_id = message["id"]
    if type(request_id) is bool or not isinstance(request_id, (str, int, float, type(None))):
        raise _invalid_request('Invalid Request: "id" must be a string, a number or null')
    params = message.get("params", {})
    if not isinstance(params, (dict, list)):
        raise _invalid_request('Invalid Request: "params" must be an object')
    return method, params


def _error_response(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error.as_dict(), "id": request_id}


#: The component schemas of the JSON-RPC operation.
SCHEMAS: dict[str, Any] = {
    "JsonRpcRequest": {
        "type": "object",
        "required": ["jsonrpc", "method", "id"],
        "properties": {
            "jsonrpc": {"const": "2.0"},
            "method": {"type": "string"},
            "params": {"type": ["object", "array"]},
            "id": {"type": ["string", "number", "null"]},
        },
    },
    "JsonRpcResponse": {
        "type": "object",
        "required": ["jsonrpc", "id"],
        "properties": {
            "jsonrpc": {"const": "2.0"},
            "result": {"type": "object"},
            "error": {"type": "object", "required": ["code", "message"],
                      "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}},
            "id": {"type": ["string", "number", "null"]},
        },
        "oneOf": [{"required": ["result"]}, {"required": ["error"]}],
    },
}
