"""When a shadow bundle has earned promotion: ``--swap-when agreement>=0.97,after=10000``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class SwapRule:
    """Promote the shadow once it has seen ``after`` sentences and agreed on at least
    ``min_agreement`` of them."""

    min_agreement: float
    after: int

    _SHAPE: ClassVar[re.Pattern[str]] = re.compile(r"\s*agreement\s*>=\s*([0-9.]+)\s*,\s*after\s*=\s*([0-9_]+)\s*")

    @classmethod
    def parse(cls, text: str) -> SwapRule:
        """``agreement>=0.97,after=10000``; ValueError (one line) for any other shape."""
        m = cls._SHAPE.fullmatch(text)
        if m is None:
            raise ValueError(f"{text!r}: expected agreement>=RATIO,after=SENTENCES (e.g. agreement>=0.97,after=10000)")
        ratio, after = float(m.group(1)), int(m.group(2))
        if not 0.0 <= ratio <= 1.0 or after < 1:
            raise ValueError(f"{text!r}: the ratio is between 0 and 1 and after is at least 1")
        return cls(ratio, after)

    def met(self, compared: int, agreement: float) -> bool:
        return compared >= self.after and agreement >= self.min_agreement
