"""What the fair counter charges a request: price-list tokens, or the engine time it is estimated to take.

``cost = "tokens"`` charges ``w_in * prompt + w_out * output`` (1 : 2, the paper's default). ``cost = "engine"``
charges ``alpha * uncached prompt + beta * output`` seconds, with alpha and beta fitted online per model by
``CostModel`` from what the engine did: each observation is (prefill tokens, decode tokens, seconds) — a step
of a batching engine in the simulator, or a finished request with the engine time attributed to it live.
A prefill token is several times cheaper than a decoded one (batched matrix work against one memory-bound
step per token): charging 1 : 2 under-serves long prompts' orgs in engine time. In the simulator the fit
settles at beta/alpha 5-7 and turns "short vs long prompts" from 0.79x to >= 1.0x FCFS tokens/s
(docs/benchmarks.md).

The fit is exponentially weighted least squares without intercept (the fixed cost of a step is spread over
its tokens, as the engine spends it), anchored to the starting values by a small ridge so that a run of
decode-only observations cannot drive alpha anywhere; each new estimate moves the published value by a
smoothing step and is clamped to ``[start / clamp, start * clamp]``. Billing and quotas never see this:
only the scheduler's counter does.
"""

from __future__ import annotations

COSTS = ("tokens", "engine")
# starting values: seconds per token of Llama-2-7B on an A10G, as the simulator's default engine spends them
START_ALPHA = 0.0002
START_BETA = 0.0012
CACHED_FRACTION = 0.1  # a prompt token served from the prefix cache costs about a tenth of a prefilled one


class CostModel:
    """alpha (seconds per uncached prompt token) and beta (per output token), fitted online for one model."""

    __slots__ = ("_decay", "_ridge", "_smooth", "_sums", "alpha", "beta", "clamp", "observations", "start")

    def __init__(
        self,
        alpha: float = START_ALPHA,
        beta: float = START_BETA,
        *,
        halflife: float = 500.0,
        smooth: float = 0.05,
        clamp: float = 10.0,
        ridge: float = 1e3,
    ):
        if alpha <= 0 or beta <= 0:
            raise ValueError("alpha and beta must be > 0")
        self.start = (alpha, beta)
        self.alpha = alpha
        self.beta = beta
        self.clamp = clamp
        self._decay = 0.5 ** (1.0 / halflife)
        self._smooth = smooth
        self._ridge = ridge  # in token² units: a prior worth about this many tokens of evidence
        self._sums = [0.0] * 5  # S_pp, S_pd, S_dd, S_ps, S_ds (decayed)
        self.observations = 0

    def charge(self, prompt_tokens: float, output_tokens: float, cached_tokens: float = 0.0) -> float:
        """Estimated engine seconds of a request (cached prompt tokens at ``CACHED_FRACTION``)."""
        cached = min(cached_tokens, prompt_tokens)
        return self.alpha * (prompt_tokens - cached * (1 - CACHED_FRACTION)) + self.beta * output_tokens

    def observe(self, prefill_tokens: float, decode_tokens: float, seconds: float) -> None:
        """The engine spent ``seconds`` prefilling and decoding these many tokens: refine alpha and beta."""
        if seconds <= 0 or (prefill_tokens <= 0 and decode_tokens <= 0):
            return
        p, d, s = float(prefill_tokens), float(decode_tokens), float(seconds)
        sums = self._sums
        k = self._decay
        for i, v in enumerate((p * p, p * d, d * d, p * s, d * s)):
            sums[i] = sums[i] * k + v
        self.observations += 1
        a0, b0 = self.start
        r = self._ridge
        spp, spd, sdd, sps, sds = sums[0] + r, sums[1], sums[2] + r, sums[3] + r * a0, sums[4] + r * b0
        det = spp * sdd - spd * spd
        if det <= 0:
            return
        alpha = (sps * sdd - sds * spd) / det
        beta = (sds * spp - sps * spd) / det
        self.alpha = self._step(self.alpha, alpha, a0)
        self.beta = self._step(self.beta, beta, b0)

    def _step(self, current: float, fitted: float, start: float) -> float:
        fitted = min(max(fitted, start / self.clamp), start * self.clamp)
        return current + self._smooth * (fitted - current)

    def snapshot(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta, "observations": self.observations}
