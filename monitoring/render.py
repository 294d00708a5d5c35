"""Scrape bodies byte for byte as prometheus_client's encoders write them, for a fraction of the cost.

prometheus_client's text and OpenMetrics encoders build every sample's line from scratch: each label
name is checked and escaped, each value escaped, the labels sorted. That costs some 25 us a sample:
190 ms for the 400 request-histogram series of 200 routes (7,600 samples), 320 ms in OpenMetrics.
Yet a series' line only changes in its value from one scrape to the next.

So :func:`render` asks prometheus_client's own encoder for a series' line once — for a family's new
series, it encodes a copy of the family holding them, valued 0 — and keeps each line up to the
value. Later scrapes format the values alone (``floatToGoString``, once per distinct value in a
scrape) and join. A family's ``# HELP``/``# TYPE``/``# UNIT`` lines are taken the same way, from a
copy without samples, and what the encoder writes after the last family (OpenMetrics' ``# EOF``)
from an empty collection. What a line cache cannot reproduce goes through the encoder: a family
with a sample that has a timestamp, an exemplar, a native histogram or no value is encoded whole,
and the ``_created``/``_gsum``/``_gcount`` samples that the text format moves into gauge blocks
after their family are encoded as such a block. prometheus_client stays the formatter; this only
remembers what it wrote.

Cached lines are kept per format (encoder, escaping, version) and forgotten when a format's last
:data:`KEEP` to 2 x :data:`KEEP` renders did not use them, so series that vanish (a dead worker's
``pid`` label) do not stay in memory. One cache, under a lock, serves every exposition of the
process. For the 7,667 samples of 8 workers x 200 routes a render
costs 10-15 ms (``benchmarks/scrape.py``), prometheus_client's encoders 100-190 ms (text) and
230-320 ms (OpenMetrics).
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Hashable, Iterable
from functools import partial
from typing import Any

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["KEEP", "go_float", "render"]

Encoder = Callable[[Any], bytes]

go_float: Callable[[float], str] = floatToGoString  # how prometheus_client writes a value (typed)

KEEP = 4  # renders of a format a cached line survives unused (between KEEP and 2 x KEEP)
_MOST_FORMATS = 8  # an Accept header may name any version: each makes a format
_MOVED = ("_created", "_gsum", "_gcount")  # samples the text format moves after their family
_ZERO = f" {go_float(0.0)}"  # how a line valued 0 ends
# 0.0 and -0.0 are one key of a dict but two texts.
_ZEROS = {False: go_float(0.0) + "\n", True: go_float(-0.0) + "\n"}


def render(families: Iterable[Metric], accept: str | None) -> tuple[bytes, str]:
    """The scrape body for ``families`` in the format ``accept`` asks for, and its content type.

    Format and content type are prometheus_client's ``choose_encoder``'s; the body is, byte for
    byte, what that encoder writes for the same families. Safe from any thread.
    """
    encoder, content_type = choose_encoder(accept or "")
    collected = list(families)
    with _lock:
        return _format(encoder).render(collected), content_type


class _Families:
    """Given families as the collector prometheus_client's encoders read."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class _Format:
    """One encoder's lines, cached."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.moves = (encoder.func if isinstance(encoder, partial) else encoder) is generate_latest
        self.tail = self._encode([])
        self.renders = 0
        # key -> line (or header, or prefix of a line up to its value); lines not used during the
        # last KEEP renders are in `stale` and are forgotten at the next rotation
        self.fresh: dict[Hashable, str] = {}
        self.stale: dict[Hashable, str] = {}

    def render(self, families: list[Metric]) -> bytes:
        out: list[str] = []
        texts: dict[float, str] = {}  # value -> its text and newline, for this render
        for family in families:
            start = len(out)
            if not self._add(family, out, texts):
                del out[start:]
                out.append(self._body(family))
        out.append(self.tail)
        self.renders += 1
        if self.renders % KEEP == 0:
            self.stale, self.fresh = self.fresh, {}
        return "".join(out).encode("utf-8")

    def _add(self, family: Metric, out: list[str], texts: dict[float, str]) -> bool:
        """Append the family's lines from the cache; False if it must go through the encoder."""
        header_key = (family.name, family.type, family.documentation, family.unit)
        header = self._recall(header_key)
        if header is None:
            header = self.fresh[header_key] = self._body(_copy(family, []))
        out.append(header)
        moved = {family.name + suffix for suffix in _MOVED} if self.moves else ()
        held: list[Sample] = []
        missing: list[tuple[int, Hashable, Sample]] = []  # (where in out, key, sample) of new series
        fresh = self.fresh
        for sample in family.samples:
            name, labels, value, timestamp, exemplar, native = sample
            if timestamp is not None or exemplar is not None or native is not None or value is None:
                return False
            if name in moved:
                held.append(sample)
                continue
            # cheaper than a tuple of items, as unambiguous; of odd length, where headers' keys have 4
            key = (name, *labels, *labels.values())
            prefix = fresh.get(key) or self._recall(key)
            if prefix is None:
                missing.append((len(out), key, sample))
                prefix = ""  # learnt below
            out.append(prefix)
            out.append(texts.get(value) or _text(value, texts))
        if missing and not self._learn(family, header, missing, out):
            return False
        if held:
            out.append(self._body(_copy(family, held))[len(header) :])
        return True

    def _recall(self, key: Hashable) -> str | None:
        found = self.fresh.get(key) or self.stale.pop(key, None)
        if found is not None:
            self.fresh[key] = found
        return found

    def _learn(
        self, family: Metric, header: str, missing: list[tuple[int, Hashable, Sample]], out: list[str]
    ) -> bool:
        """Take the lines of new series from the encoder, in one call for the family: each is its
        line (escaping leaves no newline inside one) with the value 0 cut off."""
        zeros = [Sample(sample.name, sample.labels, 0.0) for _, _, sample in missing]
        lines = self._body(_copy(family, zeros))[len(header) :].split("\n")
        if (
            len(lines) != len(missing) + 1
            or lines[-1]
            or not all(line.endswith(_ZERO) for line in lines[:-1])
        ):
            return False
        for (at, key, _), line in zip(missing, lines, strict=False):
            out[at] = self.fresh[key] = line[: -len(_ZERO) + 1]
        return True

    def _body(self, family: Metric) -> str:
        """What the encoder writes for this family alone."""
        text = self._encode([family])
        return text[: len(text) - len(self.tail)]

    def _encode(self, families: list[Metric]) -> str:
        return self.encoder(_Families(families)).decode("utf-8")


def _copy(family: Metric, samples: list[Sample]) -> Metric:
    probe = copy.copy(family)
    probe.samples = samples
    return probe


def _text(value: float, texts: dict[float, str]) -> str:
    if not value:
        return _ZEROS[math.copysign(1.0, value) < 0]
    text = texts[value] = go_float(value) + "\n"
    return text


_lock = threading.Lock()
_formats: dict[Hashable, _Format] = {}


def _format(encoder: Encoder) -> _Format:
    if isinstance(encoder, partial):
        key: Hashable = (encoder.func, encoder.args, tuple(sorted(encoder.keywords.items())))
    else:
        key = encoder
    found = _formats.get(key)
    if found is None:
        if len(_formats) >= _MOST_FORMATS:
            del _formats[next(iter(_formats))]
        found = _formats[key] = _Format(encoder)
    return found
