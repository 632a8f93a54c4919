"""Ray's own messages that read as failures and are not, dropped at their source, each for a stated reason.

- "Token authentication is enabled for this Ray cluster" (WARNING): Ray 2.60 says it whenever ray.init starts a local
  cluster with RAY_AUTH_MODE unset, and turns token authentication on, which is what this project wants (docs/
  DEPLOY.md, Security). The line is dropped by a filter on that one logger and message; any other warning of the
  logger, such as authentication being off, still shows. (Setting RAY_AUTH_MODE=token ourselves would not do: Ray
  reads it into its configuration when it is imported.)
- "Actor with class name: 'PreemptionWatcher' ... has constructor arguments in the object store and max_restarts > 0"
  (an error-level line from Train's controller at every start): Ray Train V2's preemption watcher tells workers that
  a node is being drained, through ray.train.get_preemption_info, which this project's loop never reads; a lost
  node is handled by --max-failures from the latest checkpoint either way. It is switched off.
- "PlacementGroupCleaner ... ConnectionError: Found multiple active Ray instances" (a traceback, when another Ray
  instance runs on the same machine): Train's placement-group cleaner asks the state API whether the controller is
  alive without an address, so Ray guesses one among the machine's instances and fails, or could pick another
  cluster. Our processes are given this cluster's address (RAY_ADDRESS, which Train passes on to its controller and
  the actors it starts).

Everything else Ray prints is left as it is: a real Ray error still reaches the user.
"""
import logging
import os

TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_ON = "Token authentication is enabled for this Ray cluster"
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
ADDRESS = "RAY_ADDRESS"
_saved = {}  # the variables as they were before this run, for restore()


def _set(name, value, *, keep_users=True):
    if keep_users and name in os.environ:
        return
    _saved.setdefault(name, os.environ.get(name))
    os.environ[name] = value


def _propagated():
    """Train V2's set of variables it passes from the driver to its controller and workers (None: not this Ray)."""
    try:
        from ray.train.v2._internal import constants
        return constants.ENV_VARS_TO_PROPAGATE
    except (ImportError, AttributeError):  # another Ray version: only the address guess stays as it was
        return None


class _DropTokenOn(logging.Filter):
    def filter(self, record):
        return not record.getMessage().startswith(TOKEN_ON)


_TOKEN_FILTER = _DropTokenOn()


def before_init(local_cluster):
    """Settings to make before ray.init. local_cluster: ray.init starts a new cluster of this run's own."""
    _set(PREEMPTION_WATCHER, "0")
    if local_cluster:
        logging.getLogger(TOKEN_LOGGER).addFilter(_TOKEN_FILTER)


def after_init(ray, address):
    """Give the processes Train starts this cluster's address (see the module docstring). address: --address; a Ray
    Client address (ray://) is left alone, its driver's processes are not the cluster's."""
    if address and address.startswith("ray://"):
        return
    gcs_address = getattr(ray.get_runtime_context(), "gcs_address", None)
    if not gcs_address:
        return
    _set(ADDRESS, gcs_address, keep_users=False)
    names = _propagated()
    if names is not None and ADDRESS not in names:
        names.add(ADDRESS)
        _saved["propagated"] = True


def restore():
    """The environment as it was before before_init (a launcher called again in this process starts afresh)."""
    if _saved.pop("propagated", False) and _propagated() is not None:
        _propagated().discard(ADDRESS)
    for name, value in _saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved.clear()
    logging.getLogger(TOKEN_LOGGER).removeFilter(_TOKEN_FILTER)
