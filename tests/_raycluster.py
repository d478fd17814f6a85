"""A local Ray cluster for one test module (`ray.init(num_cpus=2)`), whose own classes travel
to the workers by value (they cannot import a test module)."""

from __future__ import annotations

import sys
from collections.abc import Iterator


def local_cluster(module: str) -> Iterator[None]:
    """Start the cluster, register test module `module` (its __name__) to be pickled by
    value, yield, shut the cluster down: the body of a module-scoped fixture."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[module])
    yield
    ray.shutdown()
