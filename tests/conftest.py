import sys
from pathlib import Path

# Tests import the in-repo packages even when run without an editable install.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
