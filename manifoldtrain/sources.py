"""Training data as a *source* of batches, under the name it had before the data layer became a
package: everything here is :mod:`manifoldtrain.data.sources` (import from either)."""

from manifoldtrain.data.sources import (MODES, DataSource, DataRequest, InMemorySource, OnTheFlySource,
                                        ShardedCacheSource, SubsetSource, streamed_scales)

__all__ = ["DataSource", "DataRequest", "InMemorySource", "ShardedCacheSource", "OnTheFlySource", "SubsetSource",
           "streamed_scales", "MODES"]
