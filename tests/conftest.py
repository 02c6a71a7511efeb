"""Suite-wide test settings."""

from hypothesis import settings

# Property tests draw the same examples every run unless they say otherwise: a new draw that
# fails would fail an unrelated change in CI. Longer random campaigns: `zhenwu fuzz`.
settings.register_profile("zhenwu", derandomize=True)
settings.load_profile("zhenwu")
