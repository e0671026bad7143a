"""Server-side batching: pure merge/split of tensors and the asyncio queues that
group concurrent requests, with TF Serving's batching parameters."""
