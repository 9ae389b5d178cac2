"""Guided generation: batched, KV-cached SVGT decoding with exact bridge refresh, and SVGT-Inject.

Where the guidance enters (l* is 1-based: the output of decoder block l*). For a prompt of M tokens, a
bridge of K vectors and generated tokens y_0, y_1, ...:

* blocks 1..l* run on the plain tokens [prompt; y] at positions 0..M-1 | M+t (they never see the bridge);
* blocks l*+1..L run on [H_prompt; B; H_y] at positions 0..M-1 | M..M+K-1 | M+K+t, where H_* are the
  layer-l* outputs. Token y_0 is predicted at the last bridge row, y_t (t >= 1) at the row of y_{t-1}.

Rows are left-padded; each row's M is its own length, its positions come from the attention mask and
its bridge rows are visible to all its later tokens.

Bridge schedule (shared by the cached decoder and the uncached reference, see ``GuidanceSchedule``):
``B_0 = bridge_fn(h(last prompt token))`` is used as-is. Predicting y_s for s >= 1, after y_{s-1} has
been fed: if ``s % refresh_interval == 0`` the bridge is refreshed from h(y_{s-1}) with momentum,
``B = momentum * B_old + (1 - momentum) * bridge_fn(h)``. For T decode steps bridge_fn is therefore
called ``1 + (T - 1) // refresh_interval`` times.

Refresh modes:

* ``"exact"`` (default): the caches of blocks <= l* and the layer-l* states of the generated tokens stay
  valid (they never see the bridge), so only the caches of blocks > l* are cropped back to the prompt
  and blocks l*+1..L rerun on [B_new; H_y]. The result equals a full recomputation (tests: 1e-4).
* ``"bridge_only"``: only the K bridge rows of the upper caches are recomputed; the generated tokens
  keep keys/values computed under the old bridge. Cheaper per refresh (K rows instead of K + t) but
  approximate. Measured max |d logit| against exact over 8 tokens, r=3, momentum 0.8, on the 4-layer
  test models (init std 0.1, ``test_bridge_only_refresh_deviation_is_small`` prints it): Llama/Mistral
  2.3e-3, Qwen2 3.7e-4, GPT-2 2.3e-4; 1.2e-2..1.7e-2 with init std 0.2; NOTES.md records 0.039 on a
  tiny Llama. The error grows with the bridge change and the number of tokens decoded under the old
  bridge, and it is not bounded: use it for speed studies, not for reported results. On the trained
  embedded module (32 greedy tokens, r=5) only 3 of 8 rows equal the exact refresh's. It saves time only
  where decoding is compute-bound (batch 8 on CPU): it makes a second pass through the upper blocks for
  the K rows, which at batch 1 costs about what the exact refresh's K + t rows cost
  (``benchmarks/bench_generation.py``).

Callables (all receive detached layer-l* states with autograd *enabled*, since the value module's
correction step differentiates its discriminator; their outputs are detached):

* ``bridge_fn(h: Tensor[B, d]) -> Tensor[B, K, d]``: the bridge for each row, from the row's current
  layer-l* state. It must treat rows independently (batch parity depends on it).
* ``inject_fn(h: Tensor[B, d]) -> Tensor[B, d]`` (SVGT-Inject, no bridge tokens): a residual delta added
  to the output of block l* at every position that predicts a generated token (the last prompt token
  and each generated token), computed from that position's own clean state at every step (no refresh
  interval, no momentum).
* ``score_fn(h: Tensor[B, d]) -> Tensor[B]``: an optional per-token score (e.g. the discriminator's s),
  recorded for the state each token is predicted from, before any injection.
* ``prompt_fn(h: Tensor[B, M, d], mask: Tensor[B, M]) -> None``: called once, right after the prefill has
  computed the layer-l* states of the (left-padded) prompts and before the first bridge/inject/score call,
  so a value module can read its prompt context from the prefill instead of a second forward pass.

* ``gate_fn(response: Tensor[B, t, d]) -> Tensor[B] (bool)``: which rows the guidance acts on, judged
  from the layer-l* states of the tokens generated so far (t = 0 at the prefill: judge the prompt). It is
  called once after the prefill and again at every refresh; a row once guided stays guided. A row never
  guided runs exactly the unguided computation: no bridge rows in its attention, no position shift, no
  delta (its bridge columns are masked out while other rows of the batch are guided; while no row is
  guided the bridge is not built at all). A row that turns guided at a refresh gets its bridge from that
  step on (the exact refresh reruns the upper blocks over [B; H_y] with the shifted positions).
  ``gate_fn=None``: every row is guided from the start (the paper's behaviour).

``bridge_fn=None`` and ``inject_fn=None`` gives plain cached decoding, identical to greedy
``model.generate``.

Why this module is longer than the others (~650 lines): ``_CachedDecoder`` keeps one invariant across the
prefill, the bridge rows, the gate and both refresh modes (which cache rows hold which positions); split
over files it would be harder to check. Prompt grouping lives in ``prompt_pass`` and the uncached reference
in ``reference``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import DynamicCache, PreTrainedModel

from svgt.backbone.runner import BlockRunner, clone_cache, growing_cache, merge_left_padded
from svgt.backbone.small_batch import small_batch_linears
from svgt.backbone.text import encode_prompt
from svgt.core.errors import BadInput
from svgt.decoding.prompt_pass import PlainPass, PromptGroup, PromptPassCache, left_aligned, pad_left, prompt_groups

StateFn = Callable[[torch.Tensor], torch.Tensor]
GateFn = Callable[[torch.Tensor], torch.Tensor]
PromptFn = Callable[[torch.Tensor, torch.Tensor], None]
RefreshMode = Literal["exact", "bridge_only"]
FinishReason = Literal["stop_token", "stop_string", "length"]


class GenerationError(BadInput):
    """Invalid generation arguments or a guidance callable that broke its contract."""


@dataclass(frozen=True)
class GuidanceSchedule:
    """When the bridge is refreshed and how the new one is blended with the old."""

    refresh_interval: int = 5
    momentum: float = 0.8

    def __post_init__(self) -> None:
        if self.refresh_interval < 1:
            raise GenerationError(f"refresh_interval must be >= 1, got {self.refresh_interval}")
        if not 0.0 <= self.momentum <= 1.0:
            raise GenerationError(f"momentum must lie in [0, 1], got {self.momentum}")

    def refresh_due(self, step: int) -> bool:
        """Whether the bridge is refreshed before predicting generated token ``step`` (0-based)."""
        return step > 0 and step % self.refresh_interval == 0

    def blend(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return self.momentum * old + (1.0 - self.momentum) * new

    def num_bridge_calls(self, steps: int) -> int:
        return 1 + (steps - 1) // self.refresh_interval if steps > 0 else 0


@dataclass
class GenerationTiming:
    prefill_s: float
    decode_s: float
    new_tokens: int
    refreshes: int
    bridge_calls: int

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0


@dataclass
class GenerationOutput:
    """Per row: generated ids (incl. a stop token, if one ended the row), text and why it stopped.

    ``texts`` are decoded without special tokens and cut before a matched stop string. ``logits``
    (``return_scores``) holds each row's raw next-token logits [T_i, V] before temperature/top-p;
    ``value_scores`` (``score_fn``) each row's scores [T_i].
    """

    token_ids: list[list[int]]
    texts: list[str]
    finish_reasons: list[FinishReason]
    timing: GenerationTiming
    logits: list[torch.Tensor] | None = None
    value_scores: list[torch.Tensor] | None = None
    prompt_ids: list[list[int]] = field(default_factory=list)
    # with a gate: the step from which each row was guided (0: from the prompt; None: never)
    guided_from: list[int | None] | None = None
    prompt_scores: list[float] | None = None  # per row: the value module's prompt-level score (svgt.decoding.guidance)


# ---------------------------------------------------------------- guidance callables


def _call_state_fn(fn: StateFn, h: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """Call a guidance callable on detached states with autograd on; validate and detach its output."""
    with torch.enable_grad():
        out = fn(h.detach())
    return _checked(out, shape, what, h)


def _checked(out: Any, shape: tuple[int, ...], what: str, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise GenerationError(f"{what} must return a tensor of shape {shape}, got {got}")
    return out.detach().to(device=like.device, dtype=like.dtype)


@dataclass
class GuidanceCalls:
    """The guidance method and its callables, with the bridge call counter."""

    bridge_fn: StateFn | None
    inject_fn: StateFn | None
    num_bridge_tokens: int | None
    schedule: GuidanceSchedule
    prompt_fn: PromptFn | None = None
    gate_fn: GateFn | None = None
    bridge_calls: int = 0

    def __post_init__(self) -> None:
        if self.bridge_fn is not None and self.inject_fn is not None:
            raise GenerationError("pass bridge_fn (SVGT) or inject_fn (SVGT-Inject), not both")
        if self.num_bridge_tokens is not None and self.num_bridge_tokens < 1:
            raise GenerationError(f"num_bridge_tokens must be >= 1, got {self.num_bridge_tokens}")

    @property
    def method(self) -> Literal["none", "bridge", "inject"]:
        if self.bridge_fn is not None:
            return "bridge"
        return "inject" if self.inject_fn is not None else "none"

    def bridge(self, h: torch.Tensor) -> torch.Tensor:
        """bridge_fn(h) [B, K, d]; K is taken from the first call when not given."""
        assert self.bridge_fn is not None
        with torch.enable_grad():
            out = self.bridge_fn(h.detach())
        if self.num_bridge_tokens is None and isinstance(out, torch.Tensor) and out.ndim == 3:
            self.num_bridge_tokens = int(out.shape[1])
        self.bridge_calls += 1
        return _checked(out, (h.shape[0], self.num_bridge_tokens or 0, h.shape[1]), "bridge_fn", h)

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        assert self.inject_fn is not None
        return _call_state_fn(self.inject_fn, h, tuple(h.shape), "inject_fn")

    def gate(self, response: torch.Tensor) -> torch.Tensor | None:
        """gate_fn(response) as a bool [B] (None without a gate: every row guided)."""
        if self.gate_fn is None:
            return None
        with torch.enable_grad():
            out = self.gate_fn(response.detach())
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (response.shape[0],):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise GenerationError(f"gate_fn must return a tensor of shape ({response.shape[0]},), got {got}")
        return out.detach().to(device=response.device, dtype=torch.bool)


# ---------------------------------------------------------------- the cached decoder


class _CachedDecoder:
    """One shared DynamicCache: blocks < split hold [prompt; y], blocks >= split hold [prompt; B; y].

    The K bridge columns exist in the upper caches only once some row is guided (``self.k``); rows the gate
    has not (yet) let in have those columns masked out and their tokens at unshifted positions.
    """

    def __init__(self, runner: BlockRunner, layer: int, guidance: GuidanceCalls, refresh_mode: RefreshMode) -> None:
        self.runner = runner
        self.split = layer  # 0-based index of the first upper block == 1-based l*
        self.guidance = guidance
        self.refresh_mode = refresh_mode
        self.cache = growing_cache()  # replaced by prefill's (merged) group caches
        self.refreshes = 0
        self.fed = 0  # generated tokens fed so far
        self.h_gen: list[torch.Tensor] = []  # layer-l* states of fed tokens, kept for exact refresh and the gate
        self.bridge: torch.Tensor | None = None
        self.k = 0  # bridge columns in the upper caches
        self.active: torch.Tensor | None = None  # [B] bool: rows the guidance acts on (None: every row)
        self.guided_from: list[int | None] | None = None  # per row: the step its gate opened
        self.prompt_mask = torch.empty(0, 0, dtype=torch.long)  # set by prefill
        self.lengths = torch.empty(0, dtype=torch.long)

    def _rows_on(self, rows: slice | None = None) -> torch.Tensor | None:
        return None if self.active is None else (self.active if rows is None else self.active[rows])

    def _lower_mask(self, tokens: int) -> torch.Tensor:
        """The 2D padding mask of the lower blocks: prompt plus ``tokens`` generated tokens."""
        return torch.cat([self.prompt_mask, self.prompt_mask.new_ones((self.prompt_mask.shape[0], tokens))], dim=1)

    def _upper_mask(self, tokens: int) -> torch.Tensor:
        """The 2D mask of the upper blocks: prompt, the bridge columns (only for guided rows), ``tokens``."""
        n = self.prompt_mask.shape[0]
        parts = [self.prompt_mask]
        if self.k:
            on = self.prompt_mask.new_ones((n,)) if self.active is None else self.active.to(self.prompt_mask.dtype)
            parts.append(on[:, None].expand(n, self.k))
        parts.append(self.prompt_mask.new_ones((n, tokens)))
        return torch.cat(parts, dim=1)

    def _token_positions(self, t: int, count: int) -> torch.Tensor:
        """Upper-block positions of generated tokens t..t+count-1: M_i (+ K for guided rows) + t: [B, count]."""
        shift = 0
        if self.k:
            shift = self.k if self.active is None else self.k * self.active.long()[:, None]
        return self.lengths[:, None] + shift + t + torch.arange(count, device=self.lengths.device)

    def _upper(self, hidden: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor,
               cache: DynamicCache | None = None) -> torch.Tensor:
        out = self.runner.run_blocks(hidden, self.split, self.runner.num_layers, position_ids=position_ids,
                                     attention_mask=mask, cache=self.cache if cache is None else cache)
        return self.runner.logits(out[:, -1])

    def prefill(self, groups: Sequence[PromptGroup], prompt_cache: PromptPassCache | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompts (and the first bridge); return next-token logits [B, V] and h(last prompt token).

        The batch is the concatenation of ``groups`` (consecutive rows, each in its own layout, see
        ``PromptGroup``). Each group runs the lower blocks on its own; the guidance callables then see the
        whole batch at once; each group runs the upper blocks; finally the groups' caches are left-padded to
        a common width and merged, so decoding runs one batch. Padding changes nothing but the cost.
        """
        passes = [self._plain_pass(g, prompt_cache) for g in groups] if prompt_cache is not None else None
        lower = [(p.h, p.full) for p in passes] if passes is not None else [self._lower(g) for g in groups]
        width = max(g.mask.shape[1] for g in groups)
        mask = torch.cat([pad_left(g.mask, width) for g in groups])
        h_last = torch.cat([h[:, -1] for h, _ in lower])
        if self.guidance.prompt_fn is not None:
            states = torch.cat([pad_left(full, width) for _, full in lower]) if len(groups) > 1 else lower[0][1]
            self.guidance.prompt_fn(*left_aligned(states.detach(), mask.bool()))
        method = self.guidance.method
        if method != "none":
            self.active = self.guidance.gate(h_last.new_zeros((h_last.shape[0], 0, h_last.shape[1])))
            if self.active is not None:
                self.guided_from = [0 if bool(a) else None for a in self.active]
        any_on = self.active is None or bool(self.active.any())
        extra = None
        if method == "bridge" and any_on:
            self.bridge = extra = self.guidance.bridge(h_last)
            self.k = extra.shape[1]
        elif method == "inject" and any_on:
            extra = self.guidance.delta(h_last)
        logits, start = [], 0
        for g, (h, _) in zip(groups, lower, strict=True):
            rows = slice(start, start + g.mask.shape[0])
            start = rows.stop
            rows_extra = None if extra is None else extra[rows]
            on = self._rows_on(rows)
            logits.append(self._upper_prompt(g, h, rows_extra, on) if passes is None else
                          self._after_plain_pass(g, passes[len(logits)], rows_extra, on))
        self.cache = merge_left_padded([g.cache for g in groups])
        self.prompt_mask, self.lengths = mask, mask.sum(-1)
        return torch.cat(logits), h_last

    def _lower(self, group: PromptGroup) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks 1..l* on one group: (states of its own columns, states of all its columns incl. the prefix)."""
        ids, mask, shared = group.ids, group.mask, group.shared
        positions = group.positions
        # the prefix precedes everything a method changes (bridge, injected last row): same for every method
        prefix_h = self.runner.run_shared_prefix(ids[:1, :shared], ids.shape[0], group.cache, self.split) \
            if shared else None
        embedded, rotary = self.runner.prologue(ids[:, shared:], positions[:, shared:])
        h = self.runner.run_blocks(embedded, 0, self.split, position_ids=positions[:, shared:], attention_mask=mask,
                                   cache=group.cache, position_embeddings=rotary)
        full = h if prefix_h is None else torch.cat([prefix_h.expand(h.shape[0], -1, -1), h], dim=1)
        return h, full

    def _plain_pass(self, group: PromptGroup, prompt_cache: PromptPassCache) -> PlainPass:
        """The group's plain prompt pass, from ``prompt_cache`` or computed (and kept) now; the group gets a
        private copy of its keys/values to decode with."""
        key = PromptPassCache.key(group, self.split)
        found = prompt_cache.get(key)
        if found is None:
            h, full = self._lower(group)
            top = self.runner.run_blocks(h, self.split, self.runner.num_layers,
                                         position_ids=group.positions[:, group.shared:],
                                         attention_mask=group.mask, cache=group.cache)
            found = prompt_cache.put(key, PlainPass(group.cache, h, full, top[:, -1]))
        group.cache = clone_cache(found.cache)
        return found

    def _after_plain_pass(self, group: PromptGroup, plain: PlainPass, extra: torch.Tensor | None,
                          on: torch.Tensor | None) -> torch.Tensor:
        """Next-token logits after a plain prompt pass: the bridge rows run against the prompt's keys/values;
        an injected last row replaces the plain one (its upper-block keys/values are cropped first). Rows
        the gate keeps out predict from the plain pass."""
        plain_logits = self.runner.logits(plain.top_last)
        if extra is None:
            return plain_logits
        if self.guidance.method == "bridge":
            positions, mask = group.with_rows(extra.shape[1])
            if on is not None:
                mask[:, group.mask.shape[1]:] = on[:, None].to(mask.dtype)
            guided = self._upper(extra, positions, mask, group.cache)
        else:
            self.runner.crop_layers(group.cache, self.split, group.mask.shape[1] - 1)
            delta = extra if on is None else extra * on[:, None].to(extra.dtype)
            guided = self._upper((plain.h[:, -1] + delta)[:, None], group.positions[:, -1:], group.mask, group.cache)
        return guided if on is None else torch.where(on[:, None], guided, plain_logits)

    def _upper_prompt(self, group: PromptGroup, h: torch.Tensor, extra: torch.Tensor | None,
                      on: torch.Tensor | None) -> torch.Tensor:
        """Blocks l*+1..L on one group's own columns, plus its bridge rows or injected last row."""
        mask, positions = group.mask, group.positions[:, group.shared:]
        k = 0
        if self.guidance.method == "bridge" and extra is not None:
            k = extra.shape[1]
            bridge_positions, mask = group.with_rows(k)
            if on is not None:
                mask[:, group.mask.shape[1]:] = on[:, None].to(mask.dtype)
            hidden = torch.cat([h, extra], dim=1)
            positions = torch.cat([positions, bridge_positions], dim=1)
        elif self.guidance.method == "inject" and extra is not None:
            hidden = h.clone()
            hidden[:, -1] += extra if on is None else extra * on[:, None].to(extra.dtype)
        else:
            hidden = h
        out = self.runner.run_blocks(hidden, self.split, self.runner.num_layers, position_ids=positions,
                                     attention_mask=mask, cache=group.cache)
        last = out[:, -1]
        if k and on is not None:  # rows the gate keeps out predict from their last prompt row
            last = torch.where(on[:, None], last, out[:, -1 - k])
        return self.runner.logits(last)

    def _update_gate(self) -> torch.Tensor | None:
        """Re-judge every row on its tokens so far; returns the rows that turned guided now (None: no gate)."""
        if self.guidance.gate_fn is None:
            return None
        judged = self.guidance.gate(torch.cat(self.h_gen, dim=1))
        assert judged is not None and self.active is not None
        newly = judged & ~self.active
        self.active = self.active | judged
        if self.guided_from is not None:
            for i in newly.nonzero().flatten().tolist():
                self.guided_from[i] = self.fed
        return newly

    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed generated token y_t [B]; return logits for y_{t+1} [B, V] and h(y_t) [B, d]."""
        t = self.fed
        self.fed += 1
        lower_pos = self.lengths[:, None] + t
        embedded, rotary = self.runner.prologue(tokens[:, None], lower_pos)
        h = self.runner.run_blocks(embedded, 0, self.split, position_ids=lower_pos,
                                   attention_mask=self._lower_mask(t + 1), cache=self.cache,
                                   position_embeddings=rotary)
        h_cur = h[:, 0]
        method = self.guidance.method
        if method != "none":
            self.h_gen.append(h)
        due = self.guidance.schedule.refresh_due(t + 1)
        if method == "bridge" and due:
            newly = self._update_gate()
            if self.active is None or bool(self.active.any()):
                fresh = self.guidance.bridge(h_cur)
                if self.bridge is None:
                    self.bridge = fresh
                else:
                    blended = self.guidance.schedule.blend(self.bridge, fresh)
                    # a row guided from this refresh on never used the old bridge: it starts from the new one
                    self.bridge = blended if newly is None else torch.where(newly[:, None, None], fresh, blended)
                self.refreshes += 1
                if self.refresh_mode == "exact" or self.k == 0 or (newly is not None and bool(newly.any())):
                    return self._exact_refresh(), h_cur
                self._refresh_bridge_rows()
        elif method == "inject":
            if due:
                self._update_gate()
            if self.active is None or bool(self.active.any()):
                delta = self.guidance.delta(h_cur)
                h = h + (delta if self.active is None else delta * self.active[:, None].to(delta.dtype))[:, None]
        return self._upper(h, self._token_positions(t, 1), self._upper_mask(t + 1)), h_cur

    def _exact_refresh(self) -> torch.Tensor:
        """Crop the upper caches to the prompt and rerun the upper blocks on [B_new; H_y]."""
        assert self.bridge is not None
        width = self.prompt_mask.shape[1]
        self.runner.crop_layers(self.cache, self.split, width)
        self.k = self.bridge.shape[1]
        tokens = torch.cat(self.h_gen, dim=1)
        hidden = torch.cat([self.bridge, tokens], dim=1)
        bridge_pos = self.lengths[:, None] + torch.arange(self.k, device=self.lengths.device)
        positions = torch.cat([bridge_pos, self._token_positions(0, tokens.shape[1])], dim=1)
        return self._upper(hidden, positions, self._upper_mask(tokens.shape[1]))

    def _refresh_bridge_rows(self) -> None:
        """Approximate refresh: replace only the K bridge rows of the upper caches (see module docstring)."""
        assert self.bridge is not None
        width, k = self.prompt_mask.shape[1], self.k
        upper_layers = self.cache.layers[self.split:]
        # copies: the bridge rows are rewritten in place below, and the tails are appended after them
        tails = [(layer.keys[..., width + k:, :].clone(), layer.values[..., width + k:, :].clone())
                 for layer in upper_layers]
        self.runner.crop_layers(self.cache, self.split, width)
        bridge_pos = self.lengths[:, None] + torch.arange(k, device=self.lengths.device)
        self.runner.run_blocks(self.bridge, self.split, self.runner.num_layers,
                               position_ids=bridge_pos, attention_mask=self._upper_mask(0), cache=self.cache)
        for layer, (keys, values) in zip(upper_layers, tails, strict=True):
            layer.update(keys, values)


# ---------------------------------------------------------------- token selection


def nucleus_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean [B, V]: the smallest set of most probable tokens whose mass reaches ``top_p`` (>= 1 token)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = mass_before < top_p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def select_next(logits: torch.Tensor, *, do_sample: bool, temperature: float = 1.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]: argmax, or a temperature / nucleus sample."""
    if not do_sample:
        return logits.argmax(dim=-1)
    if temperature <= 0:
        raise GenerationError(f"temperature must be > 0 when sampling, got {temperature}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs = probs * nucleus_mask(probs, top_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ---------------------------------------------------------------- the public loop


def _encode_prompts(tokenizer: Any, prompts: Sequence[str] | Sequence[Sequence[int]],
                    chat_template: bool) -> list[list[int]]:
    if not prompts:
        raise GenerationError("no prompts given")
    encoded = [encode_prompt(tokenizer, p, chat_template) if isinstance(p, str) else [int(i) for i in p]
               for p in prompts]
    if any(not ids for ids in encoded):
        raise GenerationError("every prompt needs at least one token")
    return encoded


def _ids(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(value)} if isinstance(value, int) else {int(i) for i in value}


def _stop_ids(model: Any, tokenizer: Any, stop_token_ids: int | Sequence[int] | None) -> set[int]:
    """``stop_token_ids`` if given; else the tokenizer's EOS and every EOS id of the model's generation_config
    (chat models often list several, e.g. an end-of-turn and an end-of-text token), as HF ``generate`` stops."""
    if stop_token_ids is not None:
        return _ids(stop_token_ids)
    config = getattr(model, "generation_config", None)
    return _ids(getattr(tokenizer, "eos_token_id", None)) | _ids(getattr(config, "eos_token_id", None))


def _cut_at_stop_string(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stop_strings if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


@dataclass
class _Rows:
    """Per-row bookkeeping of the decode loop."""

    tokens: list[list[int]]
    finish: list[FinishReason | None]
    logits: list[list[torch.Tensor]]
    scores: list[list[torch.Tensor]]

    @classmethod
    def empty(cls, n: int) -> _Rows:
        return cls([[] for _ in range(n)], [None] * n, [[] for _ in range(n)], [[] for _ in range(n)])

    def active(self) -> list[int]:
        return [i for i, f in enumerate(self.finish) if f is None]


@torch.no_grad()
def guided_generate(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    bridge_fn: StateFn | None = None,
    *,
    inject_fn: StateFn | None = None,
    layer: int | None = None,
    num_bridge_tokens: int | None = None,
    refresh_interval: int = 5,
    momentum: float = 0.8,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop_strings: Sequence[str] = (),
    stop_token_ids: int | Sequence[int] | None = None,
    chat_template: bool = True,
    refresh_mode: RefreshMode = "exact",
    return_scores: bool = False,
    score_fn: StateFn | None = None,
    prompt_fn: PromptFn | None = None,
    gate_fn: GateFn | None = None,
    forced_tokens: Sequence[Sequence[int]] | None = None,
    seed: int | None = None,
    runner: BlockRunner | None = None,
    min_shared_prefix: int | None = 8,
    prefill_tokens: int | None = None,
    prompt_cache: PromptPassCache | None = None,
    on_step: Callable[[dict[int, int]], None] | None = None,
) -> GenerationOutput:
    """Generate for a batch of prompts with SVGT guidance (see the module docstring for the semantics).

    ``prompts`` are strings (encoded with ``encode_prompt``, chat template if the tokenizer has one and
    ``chat_template``) or token id lists used as given. ``layer`` is l* (1-based; None: the default rule).
    ``stop_token_ids`` defaults to the EOS ids of the tokenizer and the generation config; ``()`` disables stop
    tokens. ``seed`` makes sampling reproducible through a private generator. Pass a prebuilt ``runner`` to skip
    its probe forward when generating repeatedly with the same model. A token prefix shared by every prompt (a chat
    template's system turn) of at least ``min_shared_prefix`` tokens is run once for the whole batch
    (``prompt_layout``; None turns this off); the outputs are the same either way. ``prefill_tokens``
    splits the prompt pass into groups of consecutive rows (``prompt_groups``: at most that many padded
    tokens each, little padding) whose caches are then merged for one decode batch: pass prompts sorted
    by length to make a batch of very different prompt lengths cheap; the outputs are the same.
    ``prompt_cache`` reuses plain prompt passes across calls and methods (see ``PromptPassCache`` for
    when that is valid); the outputs are the same. ``forced_tokens`` (one list per prompt) teacher-forces
    those tokens instead of choosing them: each row ends after its list (``max_new_tokens`` still caps it),
    and with ``return_scores`` its logits are the method's next-token logits along that answer (how far a
    method moves the backbone's own answer, token by token). ``on_step`` is called after every decode step
    with {row: token} for the rows that took a token in it (a server streams them from there).
    """
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if refresh_mode not in ("exact", "bridge_only"):
        raise GenerationError(f"refresh_mode must be 'exact' or 'bridge_only', got {refresh_mode!r}")
    if not 0.0 < top_p <= 1.0:
        raise GenerationError(f"top_p must lie in (0, 1], got {top_p}")
    runner = runner or BlockRunner(model)
    layer = runner.adapter.resolve_layer(layer)
    guidance = GuidanceCalls(bridge_fn, inject_fn, num_bridge_tokens, GuidanceSchedule(refresh_interval, momentum),
                         prompt_fn, gate_fn)
    prompt_ids = _encode_prompts(tokenizer, prompts, chat_template)
    if forced_tokens is not None:
        if len(forced_tokens) != len(prompt_ids) or any(len(f) == 0 for f in forced_tokens):
            raise GenerationError(f"forced_tokens needs one non-empty token list per prompt ({len(prompt_ids)}), "
                                  f"got {len(forced_tokens)} lists")
        forced = [list(map(int, f)) for f in forced_tokens]
        max_new_tokens = min(max_new_tokens, max(len(f) for f in forced))
    stop_ids = _stop_ids(model, tokenizer, stop_token_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    groups = prompt_groups(prompt_ids, int(pad_id), min_shared_prefix, prefill_tokens, runner.device)
    generator = torch.Generator(device=runner.device).manual_seed(seed) if seed is not None else None

    decoder = _CachedDecoder(runner, layer, guidance, refresh_mode)
    # decode steps run every linear on a few rows: weight-as-left-operand matmuls stream the weights faster
    with small_batch_linears(model):
        start = time.perf_counter()
        logits, h = decoder.prefill(groups, prompt_cache)
        prefill_s = time.perf_counter() - start
        rows = _Rows.empty(len(prompt_ids))
        for step in range(max_new_tokens):
            scores = _call_state_fn(score_fn, h, (h.shape[0],), "score_fn") if score_fn is not None else None
            if forced_tokens is None:
                nxt = select_next(logits.float(), do_sample=do_sample, temperature=temperature, top_p=top_p,
                                  generator=generator).tolist()
            else:
                nxt = [f[step] if step < len(f) else int(pad_id) for f in forced]
            recorded: dict[int, int] = {}
            for i in rows.active():
                _record(rows, i, int(nxt[i]), logits[i] if return_scores else None,
                        scores[i] if scores is not None else None, tokenizer, stop_ids, stop_strings)
                recorded[i] = int(nxt[i])
                if forced_tokens is not None and rows.finish[i] is None and len(rows.tokens[i]) >= len(forced[i]):
                    rows.finish[i] = "length"
            if on_step is not None:  # e.g. a server streaming each row's tokens as they come
                on_step(recorded)
            if not rows.active() or step == max_new_tokens - 1:
                break
            # finished rows keep decoding a pad token; their outputs are ignored
            feed = torch.tensor([row[-1] if f is None else int(pad_id) for row, f in zip(rows.tokens, rows.finish,
                                                                                       strict=True)],
                                device=runner.device)
            logits, h = decoder.step(feed)
        decode_s = time.perf_counter() - start - prefill_s
        out = _finish(rows, tokenizer, stop_strings, prompt_ids, return_scores, score_fn is not None,
                      GenerationTiming(prefill_s, decode_s, sum(len(t) for t in rows.tokens), decoder.refreshes,
                                       guidance.bridge_calls))
        out.guided_from = decoder.guided_from
        return out


def _record(rows: _Rows, i: int, token: int, logits: torch.Tensor | None, score: torch.Tensor | None,
            tokenizer: Any, stop_ids: set[int], stop_strings: Sequence[str]) -> None:
    rows.tokens[i].append(token)
    if logits is not None:
        rows.logits[i].append(logits.float().cpu())
    if score is not None:
        rows.scores[i].append(score.float().cpu())
    if token in stop_ids:
        rows.finish[i] = "stop_token"
    elif stop_strings:
        # decode the whole row: a stop string may span token boundaries
        text = tokenizer.decode(rows.tokens[i], skip_special_tokens=True)
        if _cut_at_stop_string(text, stop_strings)[1]:
            rows.finish[i] = "stop_string"


def _finish(rows: _Rows, tokenizer: Any, stop_strings: Sequence[str], prompt_ids: list[list[int]],
            return_scores: bool, with_scores: bool, timing: GenerationTiming) -> GenerationOutput:
    texts = []
    for tokens in rows.tokens:
        texts.append(_cut_at_stop_string(tokenizer.decode(tokens, skip_special_tokens=True), stop_strings)[0])
    return GenerationOutput(
        token_ids=rows.tokens,
        texts=texts,
        finish_reasons=[f if f is not None else "length" for f in rows.finish],
        timing=timing,
        logits=[torch.stack(r) for r in rows.logits] if return_scores else None,
        value_scores=[torch.stack(r) for r in rows.scores] if with_scores else None,
        prompt_ids=prompt_ids,
    )
