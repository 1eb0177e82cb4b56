"""Print pyproject's dependency floors as pins (``name==floor``), for ``.ci/matrix oldest``."""

import re
from pathlib import Path

import tomllib

project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra in project["optional-dependencies"].values():
    requirements += [r for r in extra if not r.startswith("vlcoattn")]
for requirement in requirements:
    match = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", requirement)
    if match:
        print(f"{match[1]}=={match[2]}")
