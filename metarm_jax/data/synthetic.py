"""The synthetic world behind the quickstart: symbol prompts, a hidden gold reward, HH-format files.

A user sees, on a CPU in minutes, the mechanism MetaRM is about, with the truth known
(docs/synthetic.md has the whole description). In short:

  symbols   `w00 .. w{V-1}`, split into `num_groups` groups of consecutive symbols ("topics").
  prompt x  4..12 symbols, most of them from one topic; its *good set* G(x) is the topic that
            occurs most often in x (ties: the lowest group index).
  response  symbols; rendered as text "w03 w17 w05" (space separated).
  gold g    w_coarse * coarse + w_order * order + w_norep * norep + w_length * length, each part
            in [0, 1]:
              coarse = min(frac of response tokens in G(x) / coarse_cap, 1)   (saturates)
              order  = frac of adjacent response pairs that step in the prompt's direction
                       (ascending symbol index if x[0] <= x[-1], else descending)
              norep  = distinct symbols / response length
              length = max(0, 1 - |len(y) - (len(x) + length_offset)| / length_tolerance)
            A token that is not a world symbol (unk, a marker, BOS) is junk: it counts in the
            length but is never good, never distinct and never part of an ordered pair.
  base      the pre-SFT response distribution: per response a good fraction ~ U(base_good_frac),
            so the coarse part varies a lot; SFT data and preference pairs are drawn from it.
  labels    Bradley-Terry on g: P(a > b) = sigmoid((g_a - g_b) / bt_temperature).

Token ids are fixed by the world (not learned): <pad>=0 <s>=1 </s>=2 <unk>=3, the HH markers
'\\n\\nHuman:'=4 and '\\n\\nAssistant:'=5, then symbol i = 6 + i.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections
import numpy as np

from metarm_jax.config import defaults
from metarm_jax.data.formats import ASSISTANT, HUMAN

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
PAD_ID, BOS_ID, EOS_ID, UNK_ID, HUMAN_ID, ASSISTANT_ID = range(6)
FIRST_SYMBOL_ID = 6
MAX_VOCAB = 96  # a tiny Llama's embedding table; the world refuses to grow past it
_SPACE = "\u2581"  # Metaspace marker: vocab entry of symbol 'w03' is '\u2581w03'

# A sequence of symbols: text ("w01 w02"), symbol indices, or (for gold_ids) token ids.
Seq = str | Sequence[int] | np.ndarray


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


@dataclasses.dataclass
class Components:
    """The gold reward and its parts, each [B] float64."""

    gold: np.ndarray
    coarse: np.ndarray
    order: np.ndarray
    norep: np.ndarray
    length: np.ndarray
    good_frac: np.ndarray  # the coarse part before the cap
    fine: np.ndarray  # fraction of response tokens in F(x), the topic's first fine_size symbols


class World:
    """Symbols, prompt and response samplers, the gold reward and BT labels of one config."""

    def __init__(self, cfg: ml_collections.ConfigDict | None = None):
        cfg = defaults.world() if cfg is None else cfg
        self.cfg = cfg
        v, g = int(cfg.num_symbols), int(cfg.num_groups)
        if v < 2 or g < 1 or v % g or v // g < 2:
            raise ValueError(
                f"world.num_symbols={v} must be a multiple of world.num_groups={g} with "
                "at least 2 symbols per group."
            )
        if FIRST_SYMBOL_ID + v > MAX_VOCAB:
            raise ValueError(
                f"world.num_symbols={v} gives {FIRST_SYMBOL_ID + v} token ids; keep it "
                f"<= {MAX_VOCAB - FIRST_SYMBOL_ID} so the tiny model stays small."
            )
        for key in ("prompt_len", "ood_prompt_len", "response_len"):
            lo, hi = cfg[key]
            if not 1 <= lo <= hi:
                raise ValueError(
                    f"world.{key}={tuple(cfg[key])} must be (lo, hi) with 1 <= lo <= hi."
                )
        if cfg.coarse_cap <= 0 or cfg.coarse_cap > 1 or cfg.length_tolerance <= 0:
            raise ValueError("world.coarse_cap must be in (0, 1] and world.length_tolerance > 0.")
        if not 0 <= cfg.fine_size < v // g:
            raise ValueError(
                f"world.fine_size={cfg.fine_size} must be in [0, {v // g}) (symbols per topic)."
            )
        self.num_symbols, self.num_groups, self.group_size = v, g, v // g
        self.fine_size = int(cfg.fine_size)
        width = len(str(v - 1))
        self.symbols = tuple(f"w{i:0{max(2, width)}d}" for i in range(v))
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self.vocab_size = FIRST_SYMBOL_ID + v

    # --- text <-> symbols --------------------------------------------------------------------------

    def render(self, seq: Sequence[int]) -> str:
        """Symbol indices -> 'w03 w17'."""
        return " ".join(self.symbols[int(i)] for i in seq)

    def parse(self, text: str, *, junk: bool = True) -> np.ndarray:
        """Text -> symbol indices; HH markers are dropped; other unknown words are -1 (junk) or,
        with junk=False, dropped (how prompts are read)."""
        text = text.replace(HUMAN, " ").replace(ASSISTANT, " ")
        out = [self._index.get(w, -1) for w in text.split()]
        return np.asarray([i for i in out if junk or i >= 0], np.int64)

    def ids_to_symbols(self, ids: Sequence[int]) -> np.ndarray:
        """Token ids -> symbol indices (-1 for a non-symbol id)."""
        s = np.asarray(ids, np.int64) - FIRST_SYMBOL_ID
        return np.where((s >= 0) & (s < self.num_symbols), s, -1)

    def symbols_to_ids(self, seq: Sequence[int]) -> np.ndarray:
        return np.asarray(seq, np.int64) + FIRST_SYMBOL_ID

    # --- the hidden structure ----------------------------------------------------------------------

    def good_group(self, prompt: Seq) -> int:
        """The topic of a prompt: its most frequent group (ties: the lowest index)."""
        return int(self._groups(*_pack([self._as_prompt(prompt)]))[0])

    def good_set(self, prompt: Seq) -> np.ndarray:
        """G(x): the symbol indices of the prompt's topic."""
        g = self.good_group(prompt)
        return np.arange(g * self.group_size, (g + 1) * self.group_size)

    def fine_set(self, prompt: Seq) -> np.ndarray:
        """F(x): the first ``fine_size`` symbols of the prompt's topic (the subtle component)."""
        g = self.good_group(prompt)
        return np.arange(g * self.group_size, g * self.group_size + self.fine_size)

    def _groups(self, s: np.ndarray, m: np.ndarray) -> np.ndarray:
        """[B, L] prompt symbols (mask m) -> [B] majority group."""
        ok = m & (s >= 0)
        onehot = (s[..., None] // self.group_size == np.arange(self.num_groups)) & ok[..., None]
        return onehot.sum(1).argmax(-1)

    # --- sampling ----------------------------------------------------------------------------------

    def sample_prompts(
        self,
        rng: np.random.Generator,
        n: int,
        *,
        ood: bool = False,
        exclude: set[str] | None = None,
    ) -> list[np.ndarray]:
        """n distinct prompts (symbol indices) whose topic is unique (no tie for the majority).

        Train: length ~ U(prompt_len), each token from the topic w.p. topic_purity, else uniform.
        OOD:   the same with ood_prompt_len / ood_topic_purity (longer, more mixed prompts).
        `exclude`: prompt texts not to produce (e.g. the held-out sets); updated in place.
        """
        c = self.cfg
        lo, hi = c.ood_prompt_len if ood else c.prompt_len
        purity = c.ood_topic_purity if ood else c.topic_purity
        seen = set() if exclude is None else exclude
        out, tries = [], 0
        while len(out) < n:
            tries += 1
            if tries > 100 * n + 1000:
                raise ValueError(
                    f"could not draw {n} distinct prompts; widen world.prompt_len or "
                    "world.num_symbols."
                )
            length = int(rng.integers(lo, hi + 1))
            topic = int(rng.integers(self.num_groups))
            in_topic = rng.random(length) < purity
            p = np.where(
                in_topic,
                topic * self.group_size + rng.integers(self.group_size, size=length),
                rng.integers(self.num_symbols, size=length),
            )
            counts = np.bincount(p // self.group_size, minlength=self.num_groups)
            if (counts == counts.max()).sum() > 1:
                continue  # ambiguous topic
            text = self.render(p)
            if text in seen:
                continue
            seen.add(text)
            out.append(p.astype(np.int64))
        return out

    def sample_responses(
        self,
        rng: np.random.Generator,
        prompts: Sequence[Seq],
        *,
        good_frac: tuple[float, float] | None = None,
        fine_frac: tuple[float, float] | None = None,
    ) -> list[np.ndarray]:
        """One response per prompt from the base distribution (symbol indices).

        Per response: q ~ U(good_frac) (default world.base_good_frac); length ~ U(response_len); each
        token is from G(x) w.p. q, else from the other symbols; with ``fine_size > 0`` a token from
        G(x) is from F(x) w.p. q_f ~ U(fine_frac) (default world.base_fine_frac, drawn per
        response), else from G(x) \\ F(x); each token repeats its predecessor w.p.
        base_repeat_prob; the whole response is sorted (random direction) w.p. base_sorted_prob.
        `good_frac=world.saturated_good_frac` gives a coarse-saturated policy's responses, and
        `fine_frac=world.saturated_fine_frac` one whose fine part varies over its whole range.
        """
        c = self.cfg
        qlo, qhi = c.base_good_frac if good_frac is None else good_frac
        flo, fhi = c.base_fine_frac if fine_frac is None else fine_frac
        lo, hi = c.response_len
        out = []
        for prompt in prompts:
            good = self.good_set(prompt)
            bad = np.setdiff1d(np.arange(self.num_symbols), good)
            q = rng.uniform(qlo, qhi)
            length = int(rng.integers(lo, hi + 1))
            if self.fine_size:
                fine, plain = good[: self.fine_size], good[self.fine_size :]
                qf = rng.uniform(flo, fhi)
                pick = np.where(
                    rng.random(length) < qf,
                    rng.choice(fine, size=length),
                    rng.choice(plain, size=length),
                )
            else:  # the world without a fine part draws exactly as it always did
                pick = rng.choice(good, size=length)
            y = np.where(rng.random(length) < q, pick, rng.choice(bad, size=length))
            for i in range(1, length):
                if rng.random() < c.base_repeat_prob:
                    y[i] = y[i - 1]
            if rng.random() < c.base_sorted_prob:
                y = np.sort(y)
                if rng.random() < 0.5:
                    y = y[::-1]
            out.append(y.astype(np.int64))
        return out

    # --- the gold reward ---------------------------------------------------------------------------

    def _as_prompt(self, x: Seq) -> np.ndarray:
        return self.parse(x, junk=False) if isinstance(x, str) else np.asarray(x, np.int64)

    def _as_response(self, y: Seq) -> np.ndarray:
        return self.parse(y) if isinstance(y, str) else np.asarray(y, np.int64)

    def components(self, prompts: Sequence[Seq], responses: Sequence[Seq]) -> Components:
        """The gold reward and its parts for B (prompt, response) pairs.

        prompts / responses: texts ('w01 w02', HH markers allowed in prompts) or symbol-index
        sequences (-1 = junk). For token-id arrays use `components_ids`.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses.")
        px, pm = _pack([self._as_prompt(x) for x in prompts])
        ry, rm = _pack([self._as_response(y) for y in responses])
        return self._components(px, pm, ry, rm)

    def components_ids(
        self,
        prompt_ids: np.ndarray,
        response_ids: np.ndarray,
        prompt_mask: np.ndarray | None = None,
        response_mask: np.ndarray | None = None,
    ) -> Components:
        """The same from token ids: prompt_ids [B, P], response_ids [B, R] (world token ids).

        Masks default to `ids != <pad>`. Non-symbol prompt tokens (BOS, HH markers) are ignored; a
        response ends at its first EOS (excluded); other non-symbol response tokens are junk.
        """
        prompt_ids, response_ids = np.asarray(prompt_ids), np.asarray(response_ids)
        pm = prompt_ids != PAD_ID if prompt_mask is None else np.asarray(prompt_mask, bool)
        rm = response_ids != PAD_ID if response_mask is None else np.asarray(response_mask, bool)
        rm = rm & (np.cumsum(response_ids == EOS_ID, axis=-1) == 0)
        px = self.ids_to_symbols(prompt_ids)
        return self._components(px, pm & (px >= 0), self.ids_to_symbols(response_ids), rm)

    def gold(self, prompts: Sequence[Seq], responses: Sequence[Seq]) -> np.ndarray:
        """g(x, y) [B] on texts or symbol-index sequences."""
        return self.components(prompts, responses).gold

    def gold_ids(
        self, prompt_ids, response_ids, prompt_mask=None, response_mask=None
    ) -> np.ndarray:
        """g(x, y) [B] on token-id arrays (see components_ids)."""
        return self.components_ids(prompt_ids, response_ids, prompt_mask, response_mask).gold

    @property
    def max_gold(self) -> float:
        c = self.cfg
        return float(c.w_coarse + c.w_fine + c.w_order + c.w_norep + c.w_length)

    def _components(self, px, pm, ry, rm) -> Components:
        """px [B, P] prompt symbols (pm: real), ry [B, R] response symbols (-1 junk; rm: real)."""
        c = self.cfg
        b = px.shape[0]
        pm = pm & (px >= 0)
        rm = rm.astype(bool)
        n = rm.sum(-1).astype(np.float64)  # response length, junk included
        nz = np.maximum(n, 1.0)
        sym = rm & (ry >= 0)
        # coarse: fraction of tokens in the prompt's topic, capped.
        topic = self._groups(px, pm)
        good = sym & (ry // self.group_size == topic[:, None])
        good_frac = np.where(n > 0, good.sum(-1) / nz, 0.0)
        coarse = np.minimum(good_frac / c.coarse_cap, 1.0)
        # fine: fraction of tokens in F(x), the first fine_size symbols of the topic.
        in_fine = good & (ry % self.group_size < self.fine_size)
        fine = np.where(n > 0, in_fine.sum(-1) / nz, 0.0)
        # order: adjacent pairs stepping in the prompt's direction (first <= last: ascending).
        plen = pm.sum(-1)
        if px.shape[1]:  # first and last real prompt symbol (prompts may be left-padded)
            first = px[np.arange(b), np.argmax(pm, -1)]
            last = px[np.arange(b), px.shape[1] - 1 - np.argmax(pm[:, ::-1], -1)]
        else:
            first = last = np.zeros(b, np.int64)
        ascending = first <= last
        if ry.shape[1] > 1:
            pair = sym[:, 1:] & sym[:, :-1]
            step = np.where(ascending[:, None], ry[:, 1:] > ry[:, :-1], ry[:, 1:] < ry[:, :-1])
            order = np.where(n > 1, (pair & step).sum(-1) / np.maximum(n - 1, 1), 0.0)
        else:
            order = np.zeros(b)
        # norep: distinct symbols / length.
        hits = np.zeros((b, self.num_symbols), bool)
        rows = np.broadcast_to(np.arange(b)[:, None], ry.shape)
        hits[rows[sym], ry[sym]] = True
        norep = np.where(n > 0, hits.sum(-1) / nz, 0.0)
        # length: near len(prompt) + offset.
        target = plen + c.length_offset
        length = np.maximum(0.0, 1.0 - np.abs(n - target) / c.length_tolerance)
        gold = (
            c.w_coarse * coarse
            + c.w_fine * fine
            + c.w_order * order
            + c.w_norep * norep
            + c.w_length * length
        )
        return Components(gold, coarse, order, norep, length, good_frac, fine)

    # --- preference labels -------------------------------------------------------------------------

    def label_pairs(
        self,
        prompts: Sequence[Seq],
        responses_a: Sequence[Seq],
        responses_b: Sequence[Seq],
        rng: np.random.Generator,
        temperature: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bradley-Terry labels on the gold reward: (a_wins bool [n], P(a wins) [n]).

        P(a > b) = sigmoid((g_a - g_b) / temperature); temperature 0 gives the gold order (an exact
        tie: a coin flip). Default temperature: world.bt_temperature. Texts or symbol indices.
        """
        t = self.cfg.bt_temperature if temperature is None else float(temperature)
        if t < 0:
            raise ValueError(f"BT temperature must be >= 0, got {t}.")
        d = self.gold(prompts, responses_a) - self.gold(prompts, responses_b)
        if t == 0:
            tie = np.abs(d) <= 1e-9  # equal up to float rounding
            p = np.where(tie, 0.5, np.where(d > 0, 1.0, 0.0))
        else:
            p = _sigmoid(d / t)
        return rng.random(len(d)) < p, p


def label_pairs(
    prompts: Sequence[Seq],
    responses_a: Sequence[Seq],
    responses_b: Sequence[Seq],
    rng: np.random.Generator,
    temperature: float | None = None,
    *,
    world: World | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`World.label_pairs` of `world` (default: World(defaults.world()))."""
    return (world or World()).label_pairs(prompts, responses_a, responses_b, rng, temperature)


def _pack(seqs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length int sequences -> ([B, L] values (pad -1), [B, L] bool mask)."""
    width = max([len(s) for s in seqs], default=0)
    vals = np.full((len(seqs), width), -1, np.int64)
    mask = np.zeros((len(seqs), width), bool)
    for i, s in enumerate(seqs):
        vals[i, : len(s)] = s
        mask[i, : len(s)] = True
    return vals, mask


def gold_monitor(config):
    """PPO roll-out monitor (config.ppo.monitor): the gold reward of sampled token ids."""
    world = World(config.world)
    return lambda prompt_ids, prompt_mask, response_ids, response_mask: world.gold_ids(
        prompt_ids, response_ids, prompt_mask, response_mask
    )
