# JupyterHub configuration for the course in hub_config/course.toml (or the file named by
# AUTOGRADER_HUB_SETTINGS). Settings live in that file, the logic in autograder.hub.
import os
from pathlib import Path

from autograder.hub import configure_hub, load_settings

c = get_config()  # noqa: F821
here = Path(__file__).resolve().parent
settings = load_settings(Path(os.environ.get("AUTOGRADER_HUB_SETTINGS", here / "course.toml")))
configure_hub(c, settings, proxy_command=os.environ.get("AUTOGRADER_PROXY_COMMAND"))
