"""Example Lua plugins shipped with the package (so ``hubruntime demo`` finds them after pip)."""

from pathlib import Path

EXAMPLES = Path(__file__).parent
