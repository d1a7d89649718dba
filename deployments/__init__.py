"""desra's Prefect deployment file, ``prefect.yaml``, shipped with the installed package as
``desra.deployments`` (the link ``desra/deployments -> ../deployments``) so that ``desra deploy`` finds it
from any working folder."""
