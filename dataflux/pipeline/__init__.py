"""One partition through the pipeline, as phases: prepare -> analyse -> ask -> filter -> write.

`partition.process_partition` is the orchestrator; each phase is one module with one entry
function, given what the phase above returned.
"""

from dataflux.pipeline.filter import keep_measured
from dataflux.pipeline.partition import PartitionResult, process_partition, use_object_store
from dataflux.pipeline.prepare import MAX_OPTION_CHARS, metadata_vocabulary, source_leaves, source_tasks
from dataflux.pipeline.write import code_version
from dataflux.records import partition_key

__all__ = ["MAX_OPTION_CHARS", "PartitionResult", "code_version", "keep_measured", "metadata_vocabulary",
           "partition_key", "process_partition", "source_leaves", "source_tasks", "use_object_store"]
