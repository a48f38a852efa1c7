"""Running the course on JupyterHub: the course's hub settings (``settings``), the hub's
configuration (``config``), the course prepared for it (``prepare``) with its OS accounts
(``accounts``), the launcher (``launch``), the formgrader's server (``server``), the
exchange's collect step (``exchange``), the root grading service (``grading_service``) and
the hub's supervisor (``supervise``).

``configure_hub`` and ``load_settings`` are importable from here: hub configurations
already written (``hub_config/jupyterhub_config.py``) use these names.
"""

from autograder.hub.config import configure_hub
from autograder.hub.settings import load_settings

__all__ = ["configure_hub", "load_settings"]
