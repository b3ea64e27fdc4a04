"""Settings: an optional ``aiplus.toml`` with ``AIPLUS_*`` environment overrides.

Precedence, lowest first: built-in defaults, the TOML file, environment variables, command-line flags.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_REDIS_PREFIX = "aiplus:"
SECTORS = (
    "agriculture",
    "manufacturing",
    "energy",
    "construction",
    "trade",
    "transport",
    "finance",
    "ict",
    "healthcare",
    "education",
    "public_administration",
    "other",
)

# OpenAI's ``service_tier`` values a request is served (and metered and priced) in, highest band first; the
# request value ``auto`` is served as ``default``.
SERVICE_TIERS = ("priority", "default", "flex")

ENGINE_KINDS = ("llamacpp", "openai", "simulated")
REVOCATION_MODES = ("strict", "pubsub")
REASONING_KINDS = (None, "deepseek-r1")


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and why."""


@dataclass(frozen=True)
class ModelConfig:
    id: str
    engine: str = "llamacpp"
    path: str | None = None  # llamacpp: a GGUF file; None means the embedded default model
    upstreams: tuple[str, ...] = ()  # openai: base URLs such as http://gpu1:8000/v1
    upstream_model: str | None = None  # the name the upstream knows the model by (default: id)
    api_key_env: str | None = None  # environment variable holding the upstream's API key
    # in-flight requests per replica (None: the engine's default); "auto" (upstreams): sized from their /metrics
    max_concurrency: int | str | None = None
    concurrency_min: int = (
        1  # bounds of the adaptive budget (max_concurrency = "auto"); it starts at the minimum
    )
    concurrency_max: int = 64
    concurrency_interval_s: float = 2.0  # how often the adaptive budget reads the replicas' /metrics
    max_inflight_tokens: int | None = None  # optional cap on prompt+max_tokens in flight per replica
    context_length: int | None = None
    default_max_tokens: int | None = None  # for requests that name none (embedded engines: 1024 when unset)
    reasoning: str | None = None
    embeddings: bool = True
    n_threads: int | None = None
    health_interval_s: float = 10.0
    request_timeout_s: float = 600.0  # openai: the whole of a non-streamed answer, an embedding
    first_byte_timeout_s: float = 60.0  # openai: a stream's first token; else 504, another replica is tried
    idle_timeout_s: float = 30.0  # openai: the longest silence between a stream's chunks; else it ends (504)

    @property
    def adaptive(self) -> bool:
        """Whether the in-flight budget per replica follows the engine's own queue (``max_concurrency = "auto"``)."""
        return self.max_concurrency == "auto"


@dataclass(frozen=True)
class TierConfig:
    name: str
    weight: float = 1.0
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    monthly_token_quota: int | None = None
    max_concurrent: int | None = None
    free_monthly_tokens: int = 0
    service_tier: str = "default"  # the band of requests that name no service_tier: priority, default, flex


DEFAULT_TIERS = (
    TierConfig(
        "lifeline",
        weight=2.0,
        requests_per_minute=120,
        tokens_per_minute=60_000,
        monthly_token_quota=20_000_000,
        max_concurrent=8,
        free_monthly_tokens=2_000_000,
    ),
    TierConfig(
        "standard",
        weight=1.0,
        requests_per_minute=600,
        tokens_per_minute=200_000,
        monthly_token_quota=200_000_000,
        max_concurrent=32,
    ),
    TierConfig(
        "batch",
        weight=0.25,
        requests_per_minute=60,
        tokens_per_minute=500_000,
        monthly_token_quota=1_000_000_000,
        max_concurrent=16,
    ),
)


@dataclass(frozen=True)
class SchedulingConfig:
    policy: str = "fair"  # "fair" (weighted VTC) or "fcfs"
    cost: str = "tokens"  # what the counter charges: "tokens" (w_in, w_out) or "engine" (fitted seconds)
    w_in: float = 1.0
    w_out: float = 2.0
    queue_timeout_s: float = 120.0
    flex_timeout_s: float = 600.0  # queue timeout of service_tier = "flex" requests
    default_floor: float = 0.2  # share of service the default band keeps when priority is backlogged
    flex_floor: float = 0.1  # share the flex band keeps when higher bands are backlogged
    priority_reserve: float = 0.1  # part of the budget lower bands leave free once priority traffic is seen
    shared: bool = True  # with redis_url: one fair share across every gateway of the deployment


@dataclass(frozen=True)
class PriceConfig:
    """Price of one million tokens in micro-units of the currency (integers: no floats in money)."""

    model: str = "*"
    input_per_mtok: int = 0
    output_per_mtok: int = 0


@dataclass(frozen=True)
class AdoptionConfig:
    min_requests: int = 10
    window_days: int = 30
    agent_use_requires_tools: bool = False
    targets: tuple[tuple[str, float], ...] = (("2027-12-31", 0.70), ("2030-12-31", 0.90))


@dataclass(frozen=True)
class BillingConfig:
    """The regulator's affordability yardstick: a basic basket of tokens a month against a monthly income."""

    basket_prompt_tokens: int = 1_500_000
    basket_completion_tokens: int = 500_000
    basket_model: str = "*"
    basket_tier: str = "standard"
    basket_sector: str = "other"
    monthly_income: tuple[tuple[str, int], ...] = ()  # (region, income in micro-units a month)
    affordability_target_bp: int = 200  # 2% (the ITU's broadband target)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    data_dir: str = "~/.local/share/aiplus"
    database_url: str | None = None  # default: SQLite under data_dir
    redis_url: str | None = None
    redis_prefix: str = (
        DEFAULT_REDIS_PREFIX  # every Redis key starts with it: deployments sharing a Redis stay apart
    )
    revocation: str = "strict"  # how other processes hear of a revocation through Redis: see tenancy/auth.py
    admin_token: str | None = None
    secret: str | None = None  # HMAC key for API keys; generated and stored under data_dir when unset
    max_body_bytes: int = 4 * 1024 * 1024
    # what a connection may send before it is answered (see server.py): beyond these, 431 or 408 and a close
    max_header_bytes: int = 32 * 1024  # request line and headers together (nginx 8-32 KB, Envoy 60 KB)
    max_headers: int = 100
    header_timeout_s: float = 10.0  # from a request's first byte to the end of its headers
    body_timeout_s: float = 30.0  # from the end of the headers to the end of the body
    idle_connection_timeout_s: float = (
        5.0  # a connection with no request in flight (keep-alive, or a new one)
    )
    log_level: str = "info"
    responses_retention_days: int = 30  # stored Responses API responses expire after it (then purged)
    models: tuple[ModelConfig, ...] = ()
    tiers: tuple[TierConfig, ...] = DEFAULT_TIERS
    scheduling: SchedulingConfig = field(default_factory=SchedulingConfig)
    prices: tuple[PriceConfig, ...] = ()
    adoption: AdoptionConfig = field(default_factory=AdoptionConfig)
    billing: BillingConfig = field(default_factory=BillingConfig)

    @property
    def data_path(self) -> Path:
        return Path(os.path.expanduser(self.data_dir))

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_path / 'aiplus.db'}"

    def tier(self, name: str) -> TierConfig:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise ConfigError(f"unknown tier {name!r}; known tiers: {', '.join(t.name for t in self.tiers)}")

    def model(self, model_id: str) -> ModelConfig | None:
        for model in self.models:
            if model.id == model_id:
                return model
        return None


DEFAULT_MODEL_ID = "smollm2-135m-instruct"

_ENV_SCALARS = {
    "AIPLUS_HOST": ("host", str),
    "AIPLUS_PORT": ("port", int),
    "AIPLUS_WORKERS": ("workers", int),
    "AIPLUS_DATA_DIR": ("data_dir", str),
    "AIPLUS_DATABASE_URL": ("database_url", str),
    "AIPLUS_REDIS_URL": ("redis_url", str),
    "AIPLUS_REDIS_PREFIX": ("redis_prefix", str),
    "AIPLUS_REVOCATION": ("revocation", str),
    "AIPLUS_ADMIN_TOKEN": ("admin_token", str),
    "AIPLUS_SECRET": ("secret", str),
    "AIPLUS_MAX_BODY_BYTES": ("max_body_bytes", int),
    "AIPLUS_LOG_LEVEL": ("log_level", str),
    "AIPLUS_RESPONSES_RETENTION_DAYS": ("responses_retention_days", int),
}


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    values = {}
    for key, value in raw.items():
        if isinstance(value, list):
            value = tuple(value)
        values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _model(raw: dict[str, Any], index: int) -> ModelConfig:
    where = f"[[models]] #{index + 1}"
    if "id" not in raw:
        raise ConfigError(f"{where}: 'id' is required")
    model = _build(ModelConfig, raw, where)
    if model.engine not in ENGINE_KINDS:
        raise ConfigError(f"{where}: engine must be one of {', '.join(ENGINE_KINDS)}, not {model.engine!r}")
    if model.engine == "openai" and not model.upstreams:
        raise ConfigError(f"{where}: an 'openai' engine needs at least one entry in 'upstreams'")
    if model.reasoning not in REASONING_KINDS:
        raise ConfigError(f"{where}: reasoning must be 'deepseek-r1' or absent, not {model.reasoning!r}")
    if model.max_concurrency == "auto":
        if model.engine != "openai":
            raise ConfigError(
                f'{where}: max_concurrency = "auto" sizes an upstream\'s budget from its /metrics; the '
                f"{model.engine!r} engine keeps a fixed number"
            )
        if not 1 <= model.concurrency_min <= model.concurrency_max:
            raise ConfigError(f"{where}: need 1 <= concurrency_min <= concurrency_max")
        if model.concurrency_interval_s <= 0:
            raise ConfigError(f"{where}: concurrency_interval_s must be > 0")
    elif model.max_concurrency is None:
        pass
    elif isinstance(model.max_concurrency, bool) or not isinstance(model.max_concurrency, int):
        raise ConfigError(f'{where}: max_concurrency must be a whole number or "auto"')
    elif model.max_concurrency < 1:
        raise ConfigError(f"{where}: max_concurrency must be >= 1")
    for name in ("health_interval_s", "request_timeout_s", "first_byte_timeout_s", "idle_timeout_s"):
        value = getattr(model, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise ConfigError(f"{where}: {name} must be a number of seconds above 0, not {value!r}")
    return model


def _billing(raw: dict[str, Any]) -> BillingConfig:
    incomes = raw.pop("monthly_income", {})
    if not isinstance(incomes, dict):
        raise ConfigError("[billing]: monthly_income must be a table of region = micro-units a month")
    for region, micros in incomes.items():
        if isinstance(micros, bool) or not isinstance(micros, int) or micros <= 0:
            raise ConfigError(f"[billing]: monthly_income.{region} must be a positive integer (micro-units)")
    billing = _build(BillingConfig, {**raw, "monthly_income": tuple(sorted(incomes.items()))}, "[billing]")
    for name in ("basket_prompt_tokens", "basket_completion_tokens", "affordability_target_bp"):
        value = getattr(billing, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"[billing]: {name} must be a non-negative integer")
    return billing


def load_settings(
    path: str | os.PathLike | None = None, env: dict[str, str] | None = None, **overrides
) -> Settings:
    """Read settings from the TOML file (if any), then ``AIPLUS_*`` variables, then keyword overrides."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    path = path or env.get("AIPLUS_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    server = dict(raw.pop("server", {}))
    models = tuple(_model(m, i) for i, m in enumerate(raw.pop("models", [])))
    tiers_raw = raw.pop("tiers", None)
    tiers = DEFAULT_TIERS
    if tiers_raw is not None:
        merged = {t.name: t for t in DEFAULT_TIERS}
        for name, values in tiers_raw.items():
            _build(TierConfig, {"name": name, **values}, f"[tiers.{name}]")  # validates the keys
            merged[name] = replace(merged.get(name, TierConfig(name)), **values)
        tiers = tuple(merged.values())
    scheduling = _build(SchedulingConfig, raw.pop("scheduling", {}), "[scheduling]")
    if scheduling.policy not in ("fair", "fcfs"):
        raise ConfigError(f"[scheduling]: policy must be 'fair' or 'fcfs', not {scheduling.policy!r}")
    if scheduling.cost not in ("tokens", "engine"):
        raise ConfigError(f"[scheduling]: cost must be 'tokens' or 'engine', not {scheduling.cost!r}")
    floors = (scheduling.default_floor, scheduling.flex_floor, scheduling.priority_reserve)
    if any(not 0 <= v < 1 for v in floors) or scheduling.default_floor + scheduling.flex_floor >= 1:
        raise ConfigError(
            "[scheduling]: default_floor, flex_floor and priority_reserve are fractions in [0, 1), and the "
            "two floors must add up to less than 1"
        )
    for tier in tiers:
        if tier.service_tier not in SERVICE_TIERS:
            raise ConfigError(
                f"[tiers.{tier.name}]: service_tier must be 'priority', 'default' or 'flex', "
                f"not {tier.service_tier!r}"
            )
    prices = tuple(_build(PriceConfig, p, "[[prices]]") for p in raw.pop("prices", []))
    adoption_raw = dict(raw.pop("adoption", {}))
    if "targets" in adoption_raw:
        adoption_raw["targets"] = tuple((str(k), float(v)) for k, v in adoption_raw["targets"].items())
    adoption = _build(AdoptionConfig, adoption_raw, "[adoption]")
    billing = _billing(dict(raw.pop("billing", {})))
    server.update(raw)  # top-level scalars are accepted as server settings too

    values: dict[str, Any] = {k: v for k, v in server.items()}
    for var, (name, cast) in _ENV_SCALARS.items():
        if env.get(var):
            try:
                values[name] = cast(env[var])
            except ValueError:
                raise ConfigError(f"{var}: expected {cast.__name__}, got {env[var]!r}") from None
    env_policy = env.get("AIPLUS_SCHEDULING_POLICY")
    if env_policy:
        scheduling = replace(scheduling, policy=env_policy)
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = _build(
        Settings,
        {
            **values,
            "models": models,
            "tiers": tiers,
            "scheduling": scheduling,
            "prices": prices,
            "adoption": adoption,
            "billing": billing,
        },
        "[server]",
    )
    _check_server(settings)
    if not settings.models:
        settings = replace(settings, models=(ModelConfig(id=DEFAULT_MODEL_ID, engine="llamacpp"),))
    return settings


def _check_server(settings: Settings) -> None:
    """The [server] values that have a fixed set of choices or a shape; errors name the key and its variable."""
    variables = {name: var for var, (name, _cast) in _ENV_SCALARS.items()}

    def where(name: str) -> str:
        return f"[server] {name} (or {variables[name]})"

    prefix = settings.redis_prefix
    if not isinstance(prefix, str) or not prefix or any(c.isspace() for c in prefix):
        raise ConfigError(
            f"{where('redis_prefix')}: must be a non-empty string without spaces, such as 'aiplus:', "
            f"not {prefix!r}"
        )
    days = settings.responses_retention_days
    if not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise ConfigError(
            f"{where('responses_retention_days')}: must be a whole number of days >= 1, not {days!r}"
        )
    for name in (
        "max_header_bytes",
        "max_headers",
        "header_timeout_s",
        "body_timeout_s",
        "idle_connection_timeout_s",
    ):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"[server] {name}: must be a positive number, not {value!r}")
    if settings.revocation not in REVOCATION_MODES:
        raise ConfigError(
            f"{where('revocation')}: must be 'strict' (one Redis GET per request) or 'pubsub' (a published "
            f"message, no per-request round trip), not {settings.revocation!r}"
        )
