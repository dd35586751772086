import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions on a shared, busy CPU: one thread avoids OpenMP oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
