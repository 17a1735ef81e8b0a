"""Speed 29: the model goes to the background export's child as torch.save's own bytes, a message beside the pickled
job rather than inside it (verify/pipeline/overlap.py `BackgroundExport.send`): ~100 MB fewer copied on each side of
a ResNet-50's hand-off, which both processes wait on. What the child reads back is the model this process built."""

from __future__ import annotations

import io
import os
import pickle
from multiprocessing.connection import Connection

import pytest

from exporter.export import ExportOptions
from exporter.formats import FORMATS as FORMAT_REGISTRY
from exporter.formats import get_format
from verify.pipeline import overlap

FORMATS = tuple(name for name in FORMAT_REGISTRY.names() if get_format(name).rides_along) + \
    tuple(name for name in FORMAT_REGISTRY.names() if get_format(name).overlaps)
"""What a background export is sent: the formats that ride along, then those that overlap."""
WRITE_S = 5.0
"""How long the writing thread may take to put the next message in the pipe."""


@pytest.fixture(scope="module")
def context():
    import torch

    from exporter.api import get_backbone
    from exporter.formats import ExportContext
    from exporter.formats.eager import eager_artifact

    built = get_backbone("mobilenet_v3_small", norm="frozen", view="body")
    shape = (1, 3, 32, 32)
    return ExportContext(built, torch.zeros(shape), eager_artifact(built, shape).meta, dynamic=True)


def sent(context) -> list[bytes]:
    """What `send` writes to the child's pipe, message by message."""
    reads, writes = os.pipe()
    receive, send = Connection(reads, writable=False), Connection(writes, readable=False)
    export = object.__new__(overlap.BackgroundExport)  # no child process: only what it would be sent
    export._send, export._write_error = send, None
    try:
        export.send(context, ExportOptions(), FORMATS)
        messages = []
        while len(messages) < 2 and receive.poll(WRITE_S):
            messages.append(receive.recv_bytes())
        while receive.poll(0.1):  # nothing more follows
            messages.append(receive.recv_bytes())
        assert export._write_error is None
        return messages
    finally:
        receive.close()
        send.close()


def test_the_job_holds_no_model_and_the_model_is_the_one_built(context):
    import torch

    messages = sent(context)
    assert len(messages) == 2, f"{len(messages)} messages, not the job and then the model"
    job, model = messages
    example, meta, dynamic, formats, options, shapes = pickle.loads(job)
    assert (meta, dynamic, formats, options, shapes) == (context.meta, True, FORMATS, ExportOptions(), context.shapes)
    assert example.tobytes() == context.example.numpy().tobytes()
    weights = sum(t.numel() * t.element_size() for t in context.built.model.state_dict().values())
    assert len(job) < weights // 10  # the job is its settings, not the model's weights
    built = torch.load(io.BytesIO(model), weights_only=False)
    ours, theirs = context.built.model.state_dict(), built.model.state_dict()
    assert list(theirs) == list(ours)
    assert all(torch.equal(theirs[name], ours[name]) for name in ours)
    assert built.spec == context.built.spec


# mode auto's idle sample overlaps this process's torch import -------------------------------------------------------
CORES = 2
TICKS = 100
"""Clock ticks each core advances over a fake sample."""


