"""Canonical records, the data error, and the bad-row policy (skip | error) with its report.

Every reader turns its dataset's schema into these records; everything downstream (tokenization,
pipelines) sees only them. Each record carries where it came from (file, 0-based row) so a bad
row found late (e.g. too long after tokenization) is still named precisely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from metarm_jax.runtime.errors import UserError


class DataError(UserError):
    """A data problem for a person to fix: names the file, row, field and reason."""


@dataclasses.dataclass(frozen=True)
class Source:
    dataset: str  # reader name, e.g. 'hh_rlhf'
    file: str  # local file or hub name
    row: int  # 0-based row index in `file`

    def __str__(self):
        return f"{self.file}: row {self.row}"


# A conversation turn: role is 'system' | 'user' | 'assistant'.
Turn = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """prompt + chosen and prompt + rejected are the two full transcripts (the RM scores them)."""

    prompt: str
    chosen: str
    rejected: str
    source: Source
    turns: tuple[Turn, ...] = ()  # the prompt as turns (for chat templates); () if not a dialogue


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """segments: (text, is_loss) in order; their concatenation is the transcript.

    The loss covers the assistant segments (all of them for multi-turn data) and the final EOS.
    """

    segments: tuple[tuple[str, bool], ...]
    source: Source
    turns: tuple[Turn, ...] = ()  # the whole conversation as turns, incl. the last reply

    @property
    def prompt(self) -> str:  # everything before the last response
        return "".join(t for t, _ in self.segments[:-1])

    @property
    def response(self) -> str:
        return self.segments[-1][0]


@dataclasses.dataclass(frozen=True)
class PromptExample:
    """A prompt for roll-outs and meta sampling (already formatted: ends where the reply starts)."""

    prompt: str
    source: Source
    turns: tuple[Turn, ...] = ()


@dataclasses.dataclass(frozen=True)
class SamplingInfo:
    """How a meta example's responses were sampled (written by the sampler)."""

    temperature: float
    top_p: float
    policy_step: int
    seed: int
    round: int = 0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 0
    policy: str = ""  # a free-form name of the policy checkpoint


@dataclasses.dataclass(frozen=True)
class MetaExample:
    """k responses sampled for one prompt from the shifted policy (the MetaRM X_s)."""

    prompt: str
    responses: tuple[str, ...]
    sampling: SamplingInfo
    source: Source = Source("meta", "<memory>", -1)


# Skip reasons (stable strings: they appear in metrics and messages).
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_PROMPT = "empty_prompt"
EMPTY_RESPONSE = "empty_response"
IDENTICAL_RESPONSES = "chosen_identical_to_rejected"
PROMPT_MISMATCH = "prompts_differ"
UNDECODABLE = "undecodable_text"
MALFORMED = "malformed_row"
BAD_VALUE = "bad_value"
TOO_LONG = "too_long"


class SkipReport:
    """Per-reason counts of bad rows and the first few row indices of each; the policy itself.

    `bad(...)` either raises (on_bad_record='error') or records the row (on_bad_record='skip').
    `check()` stops the run when more than `max_skip_fraction` of the rows were bad.
    """

    def __init__(self, name: str, on_bad_record: str, max_skip_fraction: float, first_n: int = 5):
        if on_bad_record not in ("skip", "error"):
            raise DataError(f"data.on_bad_record must be 'skip' or 'error', got {on_bad_record!r}.")
        self.name = name
        self.on_bad_record = on_bad_record
        self.max_skip_fraction = float(max_skip_fraction)
        self.first_n = first_n
        self.total = 0  # rows read
        self.counts: dict[str, int] = {}
        self.first_rows: dict[str, list[str]] = {}
        self.fields: dict[str, set[str]] = {}  # reason -> the fields it was found in
        self.files: list[str] = []  # the files bad rows came from, in order

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def bad(self, where: Source | str, reason: str, field: str | None, detail: str = ""):
        msg = f"{where}: " + (f"field {field!r}: " if field else "") + reason
        if detail:
            msg += f" ({detail})"
        if self.on_bad_record == "error":
            raise DataError(
                f"bad row in {self.name}: {msg}. Fix the row, or set "
                "data.on_bad_record='skip' to leave bad rows out."
            )
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if field:
            self.fields.setdefault(reason, set()).add(field)
        if isinstance(where, Source) and where.file not in self.files:
            self.files.append(where.file)
        rows = self.first_rows.setdefault(reason, [])
        if len(rows) < self.first_n:
            rows.append(str(where.row) if isinstance(where, Source) else str(where))

    def copy(self) -> SkipReport:
        new = SkipReport(self.name, self.on_bad_record, self.max_skip_fraction, self.first_n)
        new.total, new.counts = self.total, dict(self.counts)
        new.first_rows = {k: list(v) for k, v in self.first_rows.items()}
        new.fields = {k: set(v) for k, v in self.fields.items()}
        new.files = list(self.files)
        return new

    def check(self):
        """Prints the counts (if any) and raises when the skipped fraction is over the limit."""
        if not self.skipped:
            return
        print(self.summary(), flush=True)
        frac = self.skipped / max(self.total, 1)
        if frac > self.max_skip_fraction:
            files = ", ".join(self.files[:3]) + (" ..." if len(self.files) > 3 else "")
            raise DataError(
                f"{self.name}: {self.skipped} of {self.total} rows are bad ({frac:.2%}), more than "
                f"data.max_skip_fraction={self.max_skip_fraction:.2%}"
                + (f", in {files}" if files else "")
                + f". {self._reasons()}. Check the dataset name/format and the file, or raise "
                "data.max_skip_fraction."
            )

    def _reasons(self) -> str:
        def fields(r):
            f = sorted(self.fields.get(r, ()))
            return f"; fields {', '.join(f[:4])}" if f else ""

        return "; ".join(
            f"{r}: {c} (first rows {', '.join(self.first_rows[r])}{fields(r)})"
            for r, c in sorted(self.counts.items())
        )

    def summary(self) -> str:
        return f"{self.name}: skipped {self.skipped} of {self.total} rows: {self._reasons()}"

    def as_metrics(self, prefix: str = "data/") -> dict[str, float]:
        """For the run's metrics: rows read, rows skipped, and the count per reason."""
        out = {
            f"{prefix}{self.name}/rows": float(self.total),
            f"{prefix}{self.name}/skipped": float(self.skipped),
        }
        out.update({f"{prefix}{self.name}/skipped/{r}": float(c) for r, c in self.counts.items()})
        return out

    def __repr__(self):
        return f"SkipReport({self.name!r}, total={self.total}, counts={self.counts})"


class Records(list):
    """A list of records with the `skip_report` of the load that produced them."""

    def __init__(self, items: Iterable = (), skip_report: SkipReport | None = None):
        super().__init__(items)
        self.skip_report = skip_report


def check_text(
    report: SkipReport,
    where: Source,
    row: dict,
    field: str,
    allow_empty: bool = False,
    empty_reason: str = EMPTY_RESPONSE,
) -> str | None:
    """The string at row[field], or None after reporting why it is bad."""
    value = row
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            report.bad(where, MISSING_FIELD, field)
            return None
    return check_str(report, where, value, field, allow_empty, empty_reason)


def check_str(
    report: SkipReport,
    where: Source,
    value,
    field: str,
    allow_empty: bool = False,
    empty_reason: str = EMPTY_RESPONSE,
) -> str | None:
    if value is None:
        report.bad(where, MISSING_FIELD, field)
        return None
    if not isinstance(value, str):
        report.bad(where, WRONG_TYPE, field, f"expected a string, got {type(value).__name__}")
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        report.bad(where, UNDECODABLE, field, f"not valid unicode at character {e.start}")
        return None
    if "\ufffd" in value:  # text that was decoded with errors='replace' upstream
        report.bad(where, UNDECODABLE, field, "contains U+FFFD replacement characters")
        return None
    if not allow_empty and not value.strip():
        report.bad(where, empty_reason, field, "empty or whitespace only")
        return None
    return value


def unique_prompts(prompts: Sequence[PromptExample]) -> list[PromptExample]:
    seen, out = set(), []
    for p in prompts:
        if p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
    return out
