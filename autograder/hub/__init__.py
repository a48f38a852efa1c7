"""Running the course on JupyterHub: the hub's configuration and launcher (``launch``), the
formgrader's server (``server``), the exchange's collect step (``exchange``), the root
grading service (``grading_service``) and the hub's supervisor (``supervise``).

``configure_hub`` and ``load_settings`` are importable from here: hub configurations
already written (``hub_config/jupyterhub_config.py``) use these names.
"""

from autograder.hub.launch import configure_hub, load_settings

__all__ = ["configure_hub", "load_settings"]
