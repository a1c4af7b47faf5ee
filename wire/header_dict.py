"""The preset zlib dictionary of format version 2's header (RFC 1950 ``FDICT``).

A header is a few hundred bytes of JSON that repeat across payloads but hardly within one, so
plain zlib saves only half of it; deflate with a preset dictionary (``zlib.compressobj(zdict=)``)
copies whole runs of it from text both sides already hold. This text is the header's skeleton:
the keys, every stage's name and usual params, and common tensor names (PyTorch ``Sequential``
indices, ``weight``/``bias``) with their dtype entries; the most frequent strings come last
(zlib reaches them with the shortest distances). It is part of the wire format: changing a byte
of it needs a new format version (decoders keep the old one for the old version).
"""

from __future__ import annotations

HEADER_ZDICT_V2 = (
    b'{"name":"sign","params":{"chunk":16777216}}'
    b'{"name":"topk","params":{"k":'
    b',"segments":[[1,'
    b'["indices",'
    b'{"name":"quantize","params":{"bits":4,"chunk":1024,"rounding":"nearest"}}'
    b'{"name":"quantize","params":{"bits":8,"chunk":1024,"rounding":"stochastic"}}'
    b'{"name":"eden","params":{"bits":2,"chunk":1024,"scale":"unbiased"}}'
    b'{"name":"eden","params":{"bits":1,"chunk":128,"scale":"mse"}}'
    b'{"name":"rotate","params":{"block":1024,"rounds":2,"seed":'
    b'{"name":"float32","params":{}}'
    b'"conv1.weight","conv2.weight","fc1.weight","fc2.weight","fc3.weight"'
    b'{"dtype":"float32","name":"weight","shape":[10,60]},{"dtype":"float32","name":"bias",'
    b'{"dtype":"float32","name":"1.weight","shape":[16,8,3,3]},'
    b'{"dtype":"float32","name":"1.bias","shape":[10]}'
    b'"stages":[{"name":"select","params":{"count":1024,"mask":""}},'
    b'{"format":2,"round":1,"sections":[["values",4096]],["scales",40],["codes",1280]],'
    b'"tensors":[{"dtype":"float32","name":"0.weight","shape":[128,64]},'
    b'{"dtype":"float32","name":"0.bias","shape":[128]},'
    b'{"dtype":"float32","name":"2.weight","shape":[10,128]},'
    b'{"dtype":"float32","name":"2.bias","shape":[10]}]}'
)
