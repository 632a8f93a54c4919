"""Handing DALI's GPU batches to torch without a host wait per batch.

DALI 2.4's DALIGenericIterator takes each batch with ``Pipeline.share_outputs()``, whose ``cuda_stream=None`` means
"synchronised with the host": the Python thread blocks until DALI's decode and crop kernels for that batch are done.
On a GPU those kernels queue behind the training step's, so the host waits for the step before it can queue the next
one, and loading and training take turns. ``share_outputs(cuda_stream=s)`` instead binds the outputs to stream s
(DALI makes s wait on its own work with an event, no host wait), and the iterator's dlpack hand-off
(``torch.from_dlpack``, default execution model) passes torch's current stream to ``__dlpack__``, which orders the
batch on it the same way. StreamOrderedIterator passes torch's current stream of the pipeline's device, so the batch
is ready for whatever torch queues next on it; CPU pipelines are unchanged.
"""
import torch
from nvidia.dali import types
from nvidia.dali.plugin.pytorch import DALIGenericIterator


class StreamOrderedIterator(DALIGenericIterator):
    """DALIGenericIterator whose GPU outputs are ordered on torch's current stream instead of waited for on the host.

    Overrides the one base-class method that fetches outputs (nvidia/dali/plugin/base_iterator.py, _get_outputs,
    DALI 2.4); the rest (reset, epochs, padding, the dlpack hand-off) is DALI's own."""

    def _get_outputs(self):
        if not self._ever_scheduled:
            self._schedule_runs(False)
        if self._size > 0 and self._counter >= self._size:
            self._end_iteration()
        outputs = []
        try:
            for p in self._pipes:
                with p._check_api_type_scope(types.PipelineAPIType.ITERATOR):
                    outputs.append(p.share_outputs(cuda_stream=consumer_stream(p)))
        except StopIteration:
            if self._size < 0 and self._auto_reset == "yes":
                self.reset()
            raise
        self._check_batch_size(outputs)
        return outputs


def consumer_stream(pipe):
    """torch's current stream on the pipeline's GPU (the stream the batch will be used on), or None (host sync) for
    a CPU-only pipeline. Pipelines with a device_id but only CPU operators still accept a stream."""
    if pipe.device_id is None or pipe.device_id == types.CPU_ONLY_DEVICE_ID or not torch.cuda.is_available():
        return None
    return torch.cuda.current_stream(pipe.device_id)
