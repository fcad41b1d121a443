"""Searching: layers to keep float when accuracy fails (fallback), and ranking sweep candidates."""

from quantstage.quant.search.fallback import FallbackConfig, FallbackResult, Trial, search_fallback
from quantstage.quant.search.ranking import CandidateScore, Ranking, rank

__all__ = ["CandidateScore", "FallbackConfig", "FallbackResult", "Ranking", "Trial", "rank", "search_fallback"]
